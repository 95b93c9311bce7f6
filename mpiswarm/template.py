"""Prompt templates (pure): ``{name}`` placeholders filled from a mapping.

Only ``{identifier}`` is a placeholder; every other brace is kept as it is, so a template may
hold JSON or code (``{"a": 1}`` stays). ``{{`` and ``}}`` are literal braces. Used by map
templates (``--template``, fields of a JSONL row), the chat format (``--prompt-format``,
``{prompt}``) and the tree reduction's supervisor prompt (``{responses}``, ``{level}``,
``{group}``).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(template: str) -> list[str]:
    """The placeholder names of ``template``, in order of first use."""
    return list(dict.fromkeys(m.group(1) for m in _TOKEN.finditer(template) if m.group(1)))


def render(template: str, values: Mapping[str, object]) -> str:
    """``template`` with each ``{name}`` replaced by ``str(values[name])``.

    Raises ``KeyError(name)`` for the first placeholder ``values`` lacks."""
    return compile_template(template)(values)


def _pieces(template: str) -> tuple[list[str], list[str]]:
    """``template`` cut at its placeholders: ``len(names) + 1`` literal texts (escapes
    resolved) around the placeholder ``names``, in order."""
    literals, names, text, at = [], [], [], 0
    for m in _TOKEN.finditer(template):
        text.append(template[at : m.start()])
        at = m.end()
        if m.group(1) is None:
            text.append(m.group(0)[0])  # '{{' -> '{', '}}' -> '}'
        else:
            literals.append("".join(text))
            names.append(m.group(1))
            text = []
    text.append(template[at:])
    literals.append("".join(text))
    return literals, names


def compile_template(template: str, convert: Callable[[object], str] = str) -> Callable[[Mapping], str]:
    """A function filling ``template`` from a mapping, as :func:`render` does, with the
    template parsed once (for filling it row after row). Values that are not strings go
    through ``convert``; a missing placeholder raises ``KeyError(name)``."""
    literals, names = _pieces(template)
    if not names:
        text = literals[0]
        return lambda values: text
    pairs = list(zip(names, literals[1:]))
    first = literals[0]

    def fill(values: Mapping) -> str:
        out = [first]
        for name, after in pairs:
            value = values[name]
            out.append(value if type(value) is str else convert(value))
            out.append(after)
        return "".join(out)

    return fill


def check(template: str, allowed: tuple[str, ...], what: str, required: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` (one line naming ``what``) if ``template`` uses a placeholder not in
    ``allowed`` or lacks one of ``required``."""
    names = placeholders(template)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"{what}: unknown placeholder {{{unknown[0]}}} (allowed: "
                         + ", ".join(f"{{{a}}}" for a in allowed) + ")")
    missing = [n for n in required if n not in names]
    if missing:
        raise ValueError(f"{what}: must contain {{{missing[0]}}}")


_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}
_ESCAPE = re.compile(r"\\[nt\\]")


def unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` typed on a command line, as the characters they name (a
    shell passes ``'a\\nb'`` as backslash-n); every other character is kept."""
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], text)


def check_prompt_format(fmt: str) -> None:
    """Raise ``ValueError`` unless ``fmt`` is a prompt format: ``{prompt}`` and nothing else."""
    check(fmt, ("prompt",), "--prompt-format", required=("prompt",))


def format_prompts(fmt: str | None, prompts: list[str]) -> list[str]:
    """Every prompt put into the chat format ``fmt`` (``{prompt}`` stands for the prompt);
    ``fmt`` None returns ``prompts`` itself. Raises ``ValueError`` for a bad format."""
    if fmt is None:
        return prompts
    check_prompt_format(fmt)
    literals, _ = _pieces(fmt)
    if len(literals) == 2:
        before, after = literals
        return [before + p + after for p in prompts]
    return [p.join(literals) for p in prompts]


def format_prompt(fmt: str | None, prompt: str) -> str:
    """One prompt put into the chat format ``fmt`` (e.g. ``'<|user|>\\n{prompt}\\n<|assistant|>\\n'``),
    as the client sends it; ``fmt`` None returns ``prompt``. Raises ``ValueError`` for a bad
    format. The tree reduction formats its supervisor prompts with it."""
    return format_prompts(fmt, [prompt])[0]
