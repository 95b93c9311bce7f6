"""Prompt templates (pure): ``{name}`` placeholders filled from a mapping.

Only ``{identifier}`` is a placeholder; every other brace is kept as it is, so a template may
hold JSON or code (``{"a": 1}`` stays). ``{{`` and ``}}`` are literal braces. Used by map
templates (``--template``, fields of a JSONL row), the chat format (``--prompt-format``,
``{prompt}``) and the tree reduction's supervisor prompt (``{responses}``, ``{level}``,
``{group}``).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(template: str) -> list[str]:
    """The placeholder names of ``template``, in order of first use."""
    return list(dict.fromkeys(m.group(1) for m in _TOKEN.finditer(template) if m.group(1)))


def render(template: str, values: Mapping[str, object]) -> str:
    """``template`` with each ``{name}`` replaced by ``str(values[name])``.

    Raises ``KeyError(name)`` for the first placeholder ``values`` lacks."""

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]  # '{{' -> '{', '}}' -> '}'
        value = values[name]
        return value if isinstance(value, str) else str(value)

    return _TOKEN.sub(fill, template)


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
