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
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

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


def _row_overrides(source: dict) -> str:
    found = {k: source[k] for k in SAMPLING_KEYS if k in source}
    if not found:
        return ""
    return json.dumps(validate_sampling(found), sort_keys=True, separators=(",", ":"))


def _parse_batch_row(obj: dict) -> tuple[object, dict]:
    """An OpenAI Batch line: returns (prompt, body)."""
    method = obj.get("method", "POST")
    url = obj.get("url", "/v1/completions")
    if method != "POST":
        raise ValueError(f"batch row 'method' must be POST, got {method!r}")
    if not isinstance(url, str) or url.rstrip("/").split("/")[-1] != "completions" or "chat" in url:
        raise ValueError(f"batch row 'url' must be /v1/completions, got {url!r}")
    body = obj["body"]
    if not isinstance(body, dict):
        raise ValueError("batch row 'body' must be a JSON object")
    if "prompt" not in body:
        raise ValueError("batch row 'body' has no 'prompt'")
    return body["prompt"], body


def _parse_jsonl(path: str, raw: bytes) -> PromptSet:
    prompts, ids, overrides = [], [], []
    fields: list[dict] | None = None
    seen: dict[str, int] = {}
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:  # includes UnicodeDecodeError
            reason = "not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else "not valid JSON"
            raise InputError(f"{path}:{lineno}: {reason} ({exc})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        try:
            if "body" in obj:
                prompt, source = _parse_batch_row(obj)
            elif "prompt" in obj:
                prompt, source = obj["prompt"], obj
            else:
                raise ValueError("no 'prompt' field")
            if not isinstance(prompt, str):
                raise ValueError(f"'prompt' must be a string, got {type(prompt).__name__}")
            over = _row_overrides(source)
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: {exc}") from None
        row = len(prompts)
        cid = obj.get("custom_id")
        if cid is None:
            cid = str(row)
        elif isinstance(cid, (str, int)) and not isinstance(cid, bool):
            cid = str(cid)
        else:
            raise InputError(f"{path}:{lineno}: 'custom_id' must be a string")
        if cid in seen:
            raise InputError(f"{path}:{lineno}: duplicate custom_id {cid!r} (first on line {seen[cid]})")
        seen[cid] = lineno
        prompts.append(prompt)
        ids.append(cid)
        overrides.append(over)
        extra = None
        if source is obj and len(obj) > 1 + ("custom_id" in obj):
            extra = {k: v for k, v in obj.items() if k not in ("prompt", "custom_id")}
        if extra:
            if fields is None:
                fields = [{} for _ in range(row)]
            fields.append(extra)
        elif fields is not None:
            fields.append({})
    return PromptSet(path, prompts, ids, overrides, fields)


def _parse_txt(path: str, raw: bytes) -> PromptSet:
    prompts = []
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        try:
            prompts.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}:{lineno}: not valid UTF-8 ({exc})") from None
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


def read_prompts(path: str | os.PathLike) -> PromptSet:
    """Read and validate the prompt file at ``path`` (``.jsonl`` or ``.txt``).

    Raises :class:`InputError` naming the file and line of the first problem.
    """
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
    ps = _parse_jsonl(path, raw) if suffix == ".jsonl" else _parse_txt(path, raw)
    _check_encodable(ps)
    return ps
