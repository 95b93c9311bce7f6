"""Reading and validating a prompt set (pure: no MPI, no network).

Two formats, chosen by the file's suffix:

* ``.jsonl`` — one JSON object a line. Either a plain row ``{"prompt": "...",
  "custom_id": "...", <sampling overrides>, <any other fields>}`` or an OpenAI Batch
  row ``{"custom_id": ..., "method": "POST", "url": "/v1/completions", "body":
  {"prompt": ..., <sampling overrides>}}``.
* ``.txt`` — one prompt a line.

Blank lines are skipped in both formats, so row *i* of the output is the *i*-th prompt.
Everything is validated before anything is sent: the first problem raises
:class:`InputError` whose message names the file and the line.

A map template (``template='Analyze gene {gene} in {organism}'``) builds each row's prompt from
the row's own fields (Aurora-Swarm's ``map_gather``); a row then needs no ``prompt`` (``{prompt}``
is one field among the others), and a placeholder the row lacks is an error naming its line.
A prompt format (``prompt_format='<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n'``) then wraps
every prompt in a chat template on the client side. ``PromptSet.prompts`` are the prompts as sent.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

from .template import check_prompt_format, compile_template, format_prompts

#: Keys a row may set for itself; they override the command line's sampling options.
SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "seed", "stop", "n")


class InputError(ValueError):
    """A problem with the input (or another user-supplied file): the message is one line."""


@dataclass
class PromptSet:
    """The validated prompt set, one entry per row, in input order."""

    path: str
    prompts: list[str]
    custom_ids: list[str]
    #: canonical JSON of the row's sampling overrides, '' when the row has none
    overrides: list[str]
    #: extra fields of plain JSONL rows (kept for map templates), None when no row has any
    fields: list[dict] | None = field(default=None, repr=False)
    #: SHA-256 of the file's bytes (a resume must see the same input)
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.prompts)


def _check_int(value, key, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"'{key}' must be an integer >= {minimum}, got {value!r}")


def _check_number(value, key, low, high):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise ValueError(f"'{key}' must be a number in [{low}, {high}], got {value!r}")


def validate_sampling(params: dict) -> dict:
    """Check sampling values (from a row or the command line); return them, ``stop`` as a list.

    Raises ValueError with a short message naming the key.
    """
    out = {}
    for key, value in params.items():
        if value is None:
            continue
        if key in ("max_tokens", "n"):
            _check_int(value, key, 1)
        elif key == "seed":
            _check_int(value, key, -(2**63))
        elif key == "temperature":
            _check_number(value, key, 0.0, 100.0)
        elif key == "top_p":
            _check_number(value, key, 0.0, 1.0)
        elif key == "stop":
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
                raise ValueError("'stop' must be a non-empty string or a list of them")
        else:
            raise ValueError(f"unknown sampling option '{key}'")
        out[key] = value
    return out


_SAMPLING_SET = frozenset(SAMPLING_KEYS)
_RESERVED = frozenset(("prompt", "custom_id"))


def _row_overrides(source: dict) -> str:
    found = {k: source[k] for k in source.keys() & _SAMPLING_SET}
    if not found:
        return ""
    return json.dumps(validate_sampling(found), sort_keys=True, separators=(",", ":"))


def _decode(path: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = raw.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{path}:{lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _parse_batch_row(obj: dict, need_prompt: bool = True) -> tuple[object, dict]:
    """An OpenAI Batch line: returns (prompt, body); prompt None if it has none and need not."""
    method = obj.get("method", "POST")
    url = obj.get("url", "/v1/completions")
    if method != "POST":
        raise ValueError(f"batch row 'method' must be POST, got {method!r}")
    if not isinstance(url, str) or url.rstrip("/").split("/")[-1] != "completions" or "chat" in url:
        raise ValueError(f"batch row 'url' must be /v1/completions, got {url!r}")
    body = obj["body"]
    if not isinstance(body, dict):
        raise ValueError("batch row 'body' must be a JSON object")
    if "prompt" not in body and need_prompt:
        raise ValueError("batch row 'body' has no 'prompt'")
    return body.get("prompt"), body


def _template_value(value) -> str:
    """A field that is not a string, as a map template shows it: its JSON text."""
    return json.dumps(value, ensure_ascii=False)


def _filler(template: str | None):
    """The map template as a function of a row's fields (None without a template)."""
    if template is None:
        return None
    fill = compile_template(template, convert=_template_value)

    def apply(values: dict) -> str:
        try:
            return fill(values)
        except KeyError as exc:
            raise ValueError(f"this row has no field {{{exc.args[0]}}} for the template") from None

    return apply


def _templated_row(obj: dict, cid, fill) -> tuple[str, dict]:
    """(prompt built by ``fill``, where the sampling overrides are) of a row under a map
    template: a plain row's fields, or a batch row's body and its ``custom_id``."""
    if "body" in obj:
        _, source = _parse_batch_row(obj, need_prompt=False)
        values = source if cid is None else {**source, "custom_id": cid}
        return fill(values), source
    return fill(obj), obj


def _parse_jsonl(path: str, raw: bytes, fill=None) -> PromptSet:
    prompts: list[str] = []
    overrides: list[str] = []
    explicit_ids: dict[str, int] = {}  # custom_id -> line
    id_rows: list[tuple[int, str]] = []  # (row, custom_id) of rows that set one
    fields: list[dict] | None = None
    loads = json.loads
    for lineno, line in enumerate(_decode(path, raw).split("\n"), 1):
        if not line or line.isspace():
            continue
        try:
            obj = loads(line)
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: not valid JSON ({exc})") from None
        if type(obj) is not dict:
            raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        row = len(prompts)
        prompt = obj.get("prompt")
        over = ""
        n_keys = len(obj)
        cid = obj.get("custom_id")
        plain = prompt is not None and (n_keys == 1 or (n_keys == 2 and cid is not None)) and fill is None
        if not plain:  # batch rows, sampling overrides, extra fields, a map template, or an error
            try:
                if fill is not None:
                    prompt, source = _templated_row(obj, cid, fill)
                elif "body" in obj:
                    prompt, source = _parse_batch_row(obj)
                elif prompt is None:
                    raise ValueError("no 'prompt' field" if "prompt" not in obj else "'prompt' must be a string, got null")
                else:
                    source = obj
                over = _row_overrides(source)
            except ValueError as exc:
                raise InputError(f"{path}:{lineno}: {exc}") from None
            if source is obj and n_keys > ("prompt" in obj) + (cid is not None):
                if fields is None:
                    fields = [{} for _ in range(row)]
                fields.append({k: v for k, v in obj.items() if k not in _RESERVED})
            elif fields is not None:
                fields.append({})
        elif fields is not None:
            fields.append({})
        if type(prompt) is not str:
            raise InputError(f"{path}:{lineno}: 'prompt' must be a string, got {type(prompt).__name__}")
        if cid is not None:
            if type(cid) is int:
                cid = str(cid)
            elif type(cid) is not str:
                raise InputError(f"{path}:{lineno}: 'custom_id' must be a string")
            first = explicit_ids.setdefault(cid, lineno)
            if first != lineno:
                raise InputError(f"{path}:{lineno}: duplicate custom_id {cid!r} (first on line {first})")
            id_rows.append((row, cid))
        prompts.append(prompt)
        overrides.append(over)
    return PromptSet(path, prompts, _custom_ids(path, len(prompts), id_rows, explicit_ids), overrides, fields)


def _custom_ids(path: str, n_rows: int, id_rows: list[tuple[int, str]], explicit: dict[str, int]) -> list[str]:
    """Explicit ids where rows set one, else the row number — which must not repeat an explicit id."""
    if len(id_rows) == n_rows:
        return [cid for _, cid in id_rows]
    ids = [str(row) for row in range(n_rows)]
    for row, cid in id_rows:
        ids[row] = cid
    if id_rows:
        given = {row for row, _ in id_rows}
        for row in range(n_rows):
            if row not in given and ids[row] in explicit:
                raise InputError(
                    f"{path}: prompt {row} has no custom_id and its default id {ids[row]!r} repeats the "
                    f"custom_id on line {explicit[ids[row]]}"
                )
    return ids


def _parse_txt(path: str, raw: bytes, fill=None) -> PromptSet:
    lines = _decode(path, raw).split("\n")
    prompts = [line.rstrip("\r") for line in lines if line and not line.isspace()]
    if fill is not None:  # a line's one field is {prompt}
        try:
            prompts = [fill({"prompt": p}) for p in prompts]
        except ValueError as exc:
            lineno = next(i for i, line in enumerate(lines, 1) if line and not line.isspace())
            raise InputError(f"{path}:{lineno}: {exc}") from None
    ids = [str(i) for i in range(len(prompts))]
    return PromptSet(path, prompts, ids, [""] * len(prompts))


def _check_encodable(ps: PromptSet) -> None:
    """Lone surrogates (legal in JSON escapes) cannot be sent or stored as UTF-8."""
    try:
        "".join(ps.prompts).encode("utf-8")
    except UnicodeEncodeError:
        for row, prompt in enumerate(ps.prompts):
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(
                    f"{ps.path}: prompt {row} (custom_id {ps.custom_ids[row]!r}) holds a lone "
                    "surrogate escape and is not valid Unicode"
                ) from None


def read_prompts(path: str | os.PathLike, *, template: str | None = None,
                 prompt_format: str | None = None) -> PromptSet:
    """Read and validate the prompt file at ``path`` (``.jsonl`` or ``.txt``), building each
    prompt from its row's fields with the map ``template`` if given, then putting it into the
    chat ``prompt_format`` if given (see the module docstring).

    Raises :class:`InputError` naming the file and line of the first problem (or the option).
    """
    check_prompt_options(template, prompt_format)
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".jsonl", ".txt"):
        raise InputError(f"{path}: unsupported input format '{suffix}' (expected .jsonl or .txt)")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    fill = _filler(template)
    ps = _parse_jsonl(path, raw, fill) if suffix == ".jsonl" else _parse_txt(path, raw, fill)
    ps.prompts = format_prompts(prompt_format, ps.prompts)
    _check_encodable(ps)
    ps.sha256 = hashlib.sha256(raw).hexdigest()
    return ps


def check_prompt_options(template: str | None, prompt_format: str | None) -> None:
    """Raise :class:`InputError` (one line naming the option) for a map template or a prompt
    format that cannot be used: not valid Unicode, or a format without ``{prompt}`` or with
    another placeholder."""
    for option, text in (("--template", template), ("--prompt-format", prompt_format)):
        if text is None:
            continue
        if not isinstance(text, str):
            raise InputError(f"{option}: must be a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{option}: not valid UTF-8") from None
    if prompt_format is not None:
        try:
            check_prompt_format(prompt_format)
        except ValueError as exc:
            raise InputError(str(exc)) from None
