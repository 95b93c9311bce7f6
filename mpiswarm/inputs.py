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
import os
import struct
from dataclasses import dataclass, field
from itertools import accumulate, chain

import numpy as np

from .chat import CHAT_KEY, check_conversation, fill_contents, is_chat
from .chat import encode as encode_conversation
from .codec import encodable, first_unencodable
from .options import CHAT, COMPLETIONS, OPTIONS, option_name  # noqa: F401 (option_name re-exported: cli)
from .options import quoted as _quoted
from .options import validate as validate_options
from .rows import RequestRows
from .template import check_prompt_format, compile_template, format_prompts, placeholders

#: Keys a row may set for itself; they override the command line's sampling options.
SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "seed", "stop", "n")
_SAMPLING_SET = frozenset(SAMPLING_KEYS)


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
    #: the file's blocked SHA-256 (:func:`blocked_sha256`: over the SHA-256 of every 16 MiB
    #: block and the size, so parallel readers compute it too); a resume must see the same input
    sha256: str = ""
    #: keys of plain rows that are neither options nor fields the --template uses: rows that carry each
    unused: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.prompts)

    def rows(self, index: np.ndarray) -> RequestRows:
        """The request rows at ``index`` (global row numbers)."""
        positions = np.asarray(index, dtype=np.int64).tolist()
        return RequestRows(index, [self.prompts[i] for i in positions], [self.overrides[i] for i in positions])


def validate_sampling(params: dict, name=_quoted) -> dict:
    """Check the sampling values of :data:`SAMPLING_KEYS` (from a row or the command line) as
    vLLM checks them (:func:`mpiswarm.options.validate`, whose table holds vLLM's rules); return
    them, ``stop`` as a list. ``name(key)`` names an option in a message (``'top_p'`` for a
    row, :func:`option_name` for the command line).

    Raises ValueError with a short message naming the key.
    """
    for key, value in params.items():
        if value is not None and key not in _SAMPLING_SET:
            raise ValueError(f"unknown sampling option '{key}'")
    return validate_options({k: v for k, v in params.items() if k in _SAMPLING_SET}, COMPLETIONS, name)


def check_row_sampling(prompt_set: "PromptSet", base: dict, api: str = COMPLETIONS) -> None:
    """Every row's options as they will be sent — the command line's ``base``, overridden by
    the row's own — on the route each row takes (a chat row, or any row under ``--api chat``:
    chat), as vLLM would take them (:func:`mpiswarm.options.validate` and ``conflict``; each
    row's own values were checked as it was read, for its own kind). Raises
    :class:`InputError` naming the file, the line and the keys."""
    for key in dict.fromkeys(prompt_set.overrides):  # distinct overrides: few, whatever the rows
        own = json.loads(key) if key else {}
        route = CHAT if own.pop(CHAT_KEY, False) or api == CHAT else COMPLETIONS

        def name(k: str) -> str:
            return _quoted(k) if k in own else f"{option_name(k)} (command line)"

        try:
            validate_options({**base, **own}, route, name)
            why = None
        except ValueError as exc:
            why = str(exc)
        if why:
            row = prompt_set.overrides.index(key)
            raise InputError(f"{prompt_set.path}:{line_of_row(prompt_set.path, row)}: {why}")


def line_of_row(path: str, row: int) -> int:
    """The line of a ``.jsonl`` file that holds row ``row`` (blank lines hold none), for
    messages about a row found after reading (read again: an error path only)."""
    with open(path, "rb") as fh:  # split as the parser splits: at "\n" only
        lines = fh.read().decode("utf-8", "surrogateescape").split("\n")
    seen = -1
    for lineno, line in enumerate(lines, 1):
        if line and not line.isspace():
            seen += 1
            if seen == row:
                return lineno
    raise ValueError(f"{path} has no row {row}")


_SAMPLING_SET = frozenset(SAMPLING_KEYS)
_RESERVED = frozenset(("prompt", "custom_id", "messages", "model"))
#: what an OpenAI Batch body holds beside its options: the request itself
_BODY_REQUEST = frozenset(("prompt", "messages"))
#: the routes an OpenAI Batch row may name, and whether each is chat
BATCH_URLS = {"/v1/completions": False, "/v1/chat/completions": True}


def _row_overrides(source: dict, chat: bool = False, body: bool = False, template_fields=()) -> str:
    """A row's own request options as canonical JSON ('' for none): every key of
    :data:`mpiswarm.options.OPTIONS` it sets (sampling, structured outputs, logprobs, its
    ``model`` — a served name or a LoRA adapter, over --model —, ``extra_body``), checked as
    vLLM checks them for the row's route, and the chat marker. In an OpenAI Batch ``body``
    (``body``) every key is a request field: one that is neither an option nor a field the
    --template uses (``template_fields``) is refused."""
    route = CHAT if chat else COMPLETIONS
    if body:
        found = {k: v for k, v in source.items() if k not in _BODY_REQUEST
                 and (k in OPTIONS or k not in template_fields)}
    else:
        found = {k: source[k] for k in source.keys() & OPTIONS.keys()}
    found = validate_options(found, route) if found else {}
    if chat:
        found[CHAT_KEY] = True
    return json.dumps(found, sort_keys=True, separators=(",", ":")) if found else ""


def unused_keys(obj: dict, template_fields) -> list[str]:
    """The keys of a plain row that are neither request options, its prompt or conversation,
    nor fields the --template uses: what would go nowhere (a misspelt option)."""
    return [k for k in obj if k not in OPTIONS and k not in _RESERVED and k not in template_fields]


def row_model(overrides: str) -> str | None:
    """The model a row names of its own (``model`` in its overrides' canonical JSON), else None."""
    return json.loads(overrides).get("model") if '"model":' in overrides else None


def row_models(overrides: list[str]) -> list[str]:
    """The models rows name of their own (``model``), each once, in first-use order."""
    models = dict.fromkeys(row_model(key) for key in dict.fromkeys(overrides))
    return [m for m in models if m]


def _parse_batch_row(obj: dict) -> tuple[dict, bool]:
    """An OpenAI Batch line: returns (body, whether it is a chat request)."""
    method = obj.get("method", "POST")
    url = obj.get("url", "/v1/completions")
    if method != "POST":
        raise ValueError(f"batch row 'method' must be POST, got {method!r}")
    if not isinstance(url, str) or url.rstrip("/") not in BATCH_URLS:
        raise ValueError(f"batch row 'url' must be one of {', '.join(BATCH_URLS)}, got {url!r}")
    body = obj["body"]
    if not isinstance(body, dict):
        raise ValueError("batch row 'body' must be a JSON object")
    return body, BATCH_URLS[url.rstrip("/")]


def _row_request(obj: dict, cid, fill) -> tuple[str, dict, bool]:
    """(prompt as sent, where its options are, whether it is a chat row) of a row that is not
    a bare prompt: a batch row's body, a chat row's conversation (its prompt: the
    conversation as JSON), a map template's fill. ValueError naming what is wrong."""
    if "body" in obj:
        source, chat = _parse_batch_row(obj)
        values = source if cid is None else {**source, "custom_id": cid}
        where = "batch row 'body'"
    else:
        source = values = obj
        chat, where = "messages" in obj, "row"
    if chat:
        if "prompt" in source:
            raise ValueError(f"a {where} has 'messages' or 'prompt', not both" if "messages" in source
                             else "a /v1/chat/completions body takes 'messages', not 'prompt'")
        messages = check_conversation(source.get("messages"))
        if fill is not None:  # each message's text is a template over the row's fields
            messages = fill_contents(messages, lambda text: _render(text, values))
        return encode_conversation(messages), source, True
    if fill is not None:
        return fill(values), source, False
    prompt = source.get("prompt")
    if prompt is None:
        if "body" in obj:
            raise ValueError("batch row 'body' has no 'prompt' (or 'messages', for /v1/chat/completions)")
        raise ValueError("no 'prompt' field" if "prompt" not in obj else "'prompt' must be a string, got null")
    return prompt, source, False


def _render(text: str, values: dict) -> str:
    """``text`` as a map template over a row's fields (a chat row's message under --template)."""
    try:
        return compile_template(text, convert=_template_value)(values)
    except KeyError as exc:
        raise ValueError(f"this row has no field {{{exc.args[0]}}} for its message's template") from None


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

    apply.fields = frozenset(placeholders(template))  # the row fields it uses (others go nowhere)
    return apply


# --- Byte ranges: where a file is cut so that every part holds whole lines ----------------------
#: The input's digest is taken over blocks of this many bytes, so any number of readers agree.
DIGEST_BLOCK_BYTES = 16 << 20
_PROBE_BYTES = 1 << 16


def file_reader(fd: int):
    """``read_at(offset, n)`` for an open file descriptor: up to ``n`` bytes from ``offset``
    (fewer only at the end of the file)."""

    def read_at(offset: int, n: int) -> bytes:
        chunks = []
        while n > 0:
            chunk = os.pread(fd, n, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    return read_at


def line_start(read_at, size: int, point: int) -> int:
    """The first line start at or after byte ``point`` of a file of ``size`` bytes read with
    ``read_at(offset, n)``: ``point`` itself if a line starts there, else the byte after the
    next newline (``size`` if there is none). Reads from ``point - 1`` until a newline."""
    if point <= 0:
        return 0
    at = point - 1
    while at < size:
        chunk = read_at(at, _PROBE_BYTES)
        if not chunk:
            break
        found = chunk.find(b"\n")
        if found >= 0:
            return at + found + 1
        at += len(chunk)
    return size


def split_point(read_at, size: int, n_parts: int, part: int) -> int:
    """Where part ``part`` of ``n_parts`` begins: its even share of the bytes, moved to the
    next line start (part 0 begins at 0). Part k is ``[split_point(k), split_point(k + 1))``,
    ``split_point(n_parts) == size``; a line longer than a share leaves some parts empty."""
    return size if part >= n_parts else line_start(read_at, size, size * part // n_parts)


def line_aligned_ranges(source: bytes | str | os.PathLike, n_parts: int) -> list[tuple[int, int]]:
    """``n_parts`` byte ranges ``(start, end)`` that cover ``source`` (the bytes themselves,
    or a file's path) in order, each cut just after a newline so that no line is split."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        read_at, size, fd = (lambda offset, n: bytes(view[offset:offset + n])), len(view), None
    else:
        fd = os.open(source, os.O_RDONLY)
        read_at, size = file_reader(fd), os.fstat(fd).st_size
    try:
        points = [split_point(read_at, size, n_parts, k) for k in range(n_parts + 1)]
    finally:
        if fd is not None:
            os.close(fd)
    return list(zip(points[:-1], points[1:]))


def block_digests(data, start: int, end: int, size: int, read_at=None) -> list[bytes]:
    """SHA-256 digests of the file's :data:`DIGEST_BLOCK_BYTES` blocks that begin in
    ``[start, end)``; ``data`` holds the file's bytes ``[start, end)``, and the rest of a
    block that runs past ``end`` is read with ``read_at`` (one block at most)."""
    view = memoryview(data)
    digests = []
    first = -(-start // DIGEST_BLOCK_BYTES) * DIGEST_BLOCK_BYTES
    for block in range(first, end, DIGEST_BLOCK_BYTES):
        stop = min(block + DIGEST_BLOCK_BYTES, size)
        digest = hashlib.sha256(view[block - start:min(stop, end) - start])
        if stop > end:
            digest.update(read_at(end, stop - end))
        digests.append(digest.digest())
    return digests


def combine_digests(digests: list[bytes], size: int) -> str:
    """The input's digest: SHA-256 over its blocks' digests and its size (hex)."""
    return hashlib.sha256(b"".join(digests) + struct.pack("<Q", size)).hexdigest()


def blocked_sha256(raw: bytes) -> str:
    """:attr:`PromptSet.sha256` of a file whose bytes are ``raw``."""
    return combine_digests(block_digests(raw, 0, len(raw), len(raw)), len(raw))


# --- Parsing a range of lines -------------------------------------------------------------------
@dataclass
class Part:
    """What one byte range of the input holds, in file order. Rows are numbered from 0 in the
    range; line numbers are the file's. ``error`` is the range's first problem ``(line,
    message)`` — parsing stopped there; a duplicate ``custom_id`` is found only when parts
    are merged (:func:`merge_parts`), as are the checks that need global row numbers."""

    prompts: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    id_rows: list[int] = field(default_factory=list)  # rows that set a custom_id (or an int64 array) ...
    ids: list[str] = field(default_factory=list)  # ... the ids ...
    id_lines: list[int] = field(default_factory=list)  # ... and their lines (or an int64 array)
    fields: list[dict] | None = None  # as PromptSet.fields, for the range's rows
    error: tuple[int, str] | None = None
    bad_unicode: int = -1  # the first row whose prompt holds a lone surrogate, -1 if none
    encoded: bytes = b""  # the prompts' UTF-8, NUL between them (lone surrogates passed)
    #: keys of plain rows that go nowhere (neither options nor fields the template uses): rows that carry each
    unused: dict = field(default_factory=dict)


def _parse_jsonl(path: str, text: str, first_lineno: int, fill, part: Part) -> None:
    prompts, overrides = part.prompts, part.overrides
    fields = part.fields
    loads = json.loads
    lineno = first_lineno
    try:
        for lineno, line in enumerate(text.split("\n"), first_lineno):
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
                    prompt, source, chat = _row_request(obj, cid, fill)
                    over = _row_overrides(source, chat, body=source is not obj,
                                          template_fields=getattr(fill, "fields", ()))
                    if source is obj:
                        for key in unused_keys(obj, getattr(fill, "fields", ())):
                            part.unused[key] = part.unused.get(key, 0) + 1
                except ValueError as exc:
                    raise InputError(f"{path}:{lineno}: {exc}") from None
                if source is obj and n_keys > ("prompt" in obj) + ("messages" in obj) + (cid is not None):
                    if fields is None:
                        fields = part.fields = [{} for _ in range(row)]
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
                part.id_rows.append(row)
                part.ids.append(cid)
                part.id_lines.append(lineno)
            prompts.append(prompt)
            overrides.append(over)
    except InputError as exc:
        part.error = (lineno, str(exc))


def _parse_txt(path: str, text: str, first_lineno: int, fill, part: Part) -> None:
    lines = text.split("\n")
    prompts = [line.rstrip("\r") for line in lines if line and not line.isspace()]
    if fill is not None:  # a line's one field is {prompt}
        try:
            prompts = [fill({"prompt": p}) for p in prompts]
        except ValueError as exc:
            lineno = next(i for i, line in enumerate(lines, first_lineno) if line and not line.isspace())
            part.error = (lineno, f"{path}:{lineno}: {exc}")
            return
    part.prompts += prompts
    part.overrides += [""] * len(prompts)


#: the UTF-8 byte-order mark, accepted (and dropped) at the start of an input file
UTF8_BOM = b"\xef\xbb\xbf"


def parse_range(path: str, raw: bytes, first_lineno: int = 1, suffix: str = ".jsonl", fill=None, *,
                prompt_format: str | None = None, offset: int = 0) -> Part:
    """Parse the lines in ``raw`` — bytes ``offset`` … of the file ``path`` (for messages),
    whose first line is line ``first_lineno`` — as ``suffix`` (``.jsonl`` or ``.txt``) with the
    map template ``fill`` (:func:`_filler`), then put the prompts into ``prompt_format``.

    Never raises for bad input: the first problem in the range, in file order, is
    ``Part.error`` (invalid UTF-8 on line L counts as a problem on line L). A UTF-8 byte-order
    mark at the start of the file (what many Windows tools write) is skipped, not read as part
    of the first line.
    """
    parse = _parse_jsonl if suffix == ".jsonl" else _parse_txt
    part = Part()
    if offset == 0 and raw.startswith(UTF8_BOM):
        raw, offset = raw[len(UTF8_BOM):], len(UTF8_BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        cut = raw.rfind(b"\n", 0, exc.start) + 1  # the lines before the bad one are fine
        parse(path, raw[:cut].decode("utf-8"), first_lineno, fill, part)
        if part.error is None:
            lineno = first_lineno + raw.count(b"\n", 0, exc.start)
            part.error = (lineno, f"{path}:{lineno}: not valid UTF-8 ({exc.reason} at byte {offset + exc.start})")
        return part
    parse(path, text, first_lineno, fill, part)
    if part.error is None:
        if prompt_format is not None and any(map(is_chat, part.overrides)):  # a conversation has no one prompt
            part.prompts = [p if is_chat(o) else format_prompts(prompt_format, [p])[0]
                            for p, o in zip(part.prompts, part.overrides)]
        else:
            part.prompts = format_prompts(prompt_format, part.prompts)
        part.encoded, part.bad_unicode = first_unencodable(part.prompts)
    return part


def _check_duplicates(path: str, ids: list[str], lines, before: int | None) -> set[str]:
    """The set of explicit ids; raises for the first line (before line ``before``, if given)
    whose ``custom_id`` an earlier line already has (``lines()``: the ids' lines)."""
    unique = set(ids)
    if len(unique) < len(ids):
        first: dict[str, int] = {}
        for cid, lineno in zip(ids, lines()):
            if before is not None and lineno >= before:
                break
            seen = first.setdefault(cid, lineno)
            if seen != lineno:
                raise InputError(f"{path}:{lineno}: duplicate custom_id {cid!r} (first on line {seen})")
    return unique


def _custom_ids(path: str, n_rows: int, id_rows, ids: list[str], lines, unique: set[str]) -> list[str]:
    """Explicit ids where rows set one, else the row number — which must not repeat an explicit
    id. ``id_rows()`` (the rows that set one) and ``lines()`` (their lines) are only called when
    some rows set one and some do not."""
    if len(ids) == n_rows:
        return ids
    custom = list(map(str, range(n_rows)))
    if not ids:
        return custom
    id_rows = id_rows()
    for row, cid in zip(id_rows, ids):
        custom[row] = cid
    given = set(id_rows)
    # an explicit id that reads as the number of a row without one
    clashes = [int(c) for c in unique if c.isascii() and c.isdigit() and str(int(c)) == c]
    clashes = [row for row in clashes if row < n_rows and row not in given]
    if clashes:
        row = min(clashes)
        raise InputError(f"{path}: prompt {row} has no custom_id and its default id {custom[row]!r} repeats the "
                         f"custom_id on line {lines()[ids.index(custom[row])]}")
    return custom


def _concat(columns: list[list]) -> list:
    return columns[0] if len(columns) == 1 else list(chain.from_iterable(columns))


def _numbers(parts: list[Part], name: str, shifts: list[int] | None = None) -> list[int]:
    """A column of row or line numbers over the parts (lists, or int64 arrays from a message),
    each part's shifted by ``shifts``."""
    columns = [np.asarray(getattr(p, name), np.int64) + (shifts[k] if shifts else 0) for k, p in enumerate(parts)]
    return np.concatenate(columns).tolist() if columns else []


def merge_parts(path: str, parts: list[Part]) -> PromptSet:
    """The prompt set of a file parsed in ``parts`` (consecutive ranges, in file order), or
    :class:`InputError` for its first problem — the same one, with the same message, whatever
    the number of parts: the first line with a problem (a duplicate ``custom_id`` included),
    then a default id that repeats an explicit one, then a prompt holding a lone surrogate."""
    error = min((p.error for p in parts if p.error is not None), default=None)
    ids = _concat([p.ids for p in parts])
    lines = lambda: _numbers(parts, "id_lines")  # noqa: E731 - needed only for an error
    unique = _check_duplicates(path, ids, lines, error[0] if error else None)
    if error:
        raise InputError(error[1])
    starts = list(accumulate((len(p.prompts) for p in parts), initial=0))
    n_rows = starts[-1]
    custom_ids = _custom_ids(path, n_rows, lambda: _numbers(parts, "id_rows", starts), ids, lines, unique)
    for p, s in zip(parts, starts):
        if p.bad_unicode >= 0:
            row = s + p.bad_unicode
            raise InputError(f"{path}: prompt {row} (custom_id {custom_ids[row]!r}) holds a lone surrogate "
                             "escape and is not valid Unicode")
    fields = None
    if any(p.fields is not None for p in parts):
        fields = _concat([p.fields if p.fields is not None else [{}] * len(p.prompts) for p in parts])
    unused: dict = {}
    for p in parts:
        for key, count in p.unused.items():
            unused[key] = unused.get(key, 0) + count
    return PromptSet(path, _concat([p.prompts for p in parts]), custom_ids,
                     _concat([p.overrides for p in parts]), fields, unused=unused)


def input_suffix(path: str) -> str:
    """The input's format, ``.jsonl`` or ``.txt``; raises :class:`InputError` for another."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".jsonl", ".txt"):
        raise InputError(f"{path}: unsupported input format '{suffix}' (expected .jsonl or .txt)")
    return suffix


def cannot_open(path: str, exc: OSError) -> InputError:
    """The input error for a file that cannot be opened or read."""
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{path}: no such file")
    return InputError(f"{path}: cannot read ({exc.strerror})")


def read_prompts(path: str | os.PathLike, *, template: str | None = None,
                 prompt_format: str | None = None) -> PromptSet:
    """Read and validate the prompt file at ``path`` (``.jsonl`` or ``.txt``), building each
    prompt from its row's fields with the map ``template`` if given, then putting it into the
    chat ``prompt_format`` if given (see the module docstring). One process reads it all;
    :func:`mpiswarm.read.read_prompts_parallel` is the same with every rank reading a part.

    Raises :class:`InputError` naming the file and line of the first problem (or the option).
    """
    check_prompt_options(template, prompt_format)
    path = os.fspath(path)
    suffix = input_suffix(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise cannot_open(path, exc) from None
    part = parse_range(path, raw, 1, suffix, _filler(template), prompt_format=prompt_format)
    ps = merge_parts(path, [part])
    ps.sha256 = blocked_sha256(raw)
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
        if not encodable(text):
            raise InputError(f"{option}: not valid UTF-8")
    if prompt_format is not None:
        try:
            check_prompt_format(prompt_format)
        except ValueError as exc:
            raise InputError(str(exc)) from None
