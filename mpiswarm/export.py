"""``mpiswarm export OUT.h5 --format jsonl|openai-batch|csv|h5 -o FILE``: the rows as text
(or, ``h5``, the whole file as one self-contained HDF5 file: a virtual layout's part files
copied in).

* ``jsonl`` — one object a row, in row order, a key a column of the file
  (:data:`mpiswarm.schema.FILE_COLUMNS`): ``custom_id``, ``prompt``, ``completion`` (a list
  when the file holds several completions a prompt), ``finish_reason`` (likewise), ``ok``,
  ``error``, ``error_kind`` (its label, '' if ok), ``http_status``, ``rank``,
  ``prompt_tokens``, ``completion_tokens`` (null where unknown), ``latency_s`` (null where the
  row was never sent); ``reasoning`` (shaped like ``completion``) when the file has that dataset.
* ``openai-batch`` — OpenAI Batch API *output* lines (the ``BatchRequestOutput`` objects of
  an output/error file): ``{"id": "batch_req_…", "custom_id", "response": {"status_code":
  200, "request_id", "body": <a completion object>}, "error": null}`` for answered rows.
  The body is a ``text_completion`` (``chat.completion`` for ``--api chat`` runs) for that
  one prompt, its ``usage`` null where the per-prompt counts are unknown (list calls). A row
  that failed with an HTTP status gets ``response`` with that status and OpenAI's error body
  ``{"error": {"message", "type", "param", "code"}}`` and ``error: {"code", "message"}``; a
  row that failed without one (timeout, connection) or was never answered (a stopped job:
  code ``batch_expired``) gets ``response: null`` and ``error: {"code", "message"}`` — all
  from the row's ``error_kind`` and ``http_status``, never from its message.
  Ids are derived from the file and the row, so exporting twice gives the same bytes.
* ``csv`` — a header, then one record a row (RFC 4180 quoting: commas, quotes and newlines
  in prompts and completions survive ``csv.reader``), the same columns as ``jsonl``;
  ``completion_0``, ``completion_1``, … when the file holds several completions a prompt;
  empty cells where unknown.

* ``h5`` — the result file with every dataset in it: a ``--layout virtual`` file's rows copied
  from its part files (:func:`mpiswarm.store.write_self_contained`), so it can travel alone.

Rows stream a block at a time (:func:`mpiswarm.store.iter_rows`), never the whole file. The
output is written under a temporary name beside ``FILE`` and renamed when complete; ``-o -``
writes to standard output.
"""
from __future__ import annotations

import calendar
import csv
import hashlib
import json
import os
import sys
import time

from .inputs import InputError
from .errors import ErrorKind, http_line
from .schema import CHOICE, FILE_COLUMNS, ROW_DATASETS, plain
from .store import DEFAULT_CHUNK_ROWS, is_unanswered, iter_rows, read_info, write_self_contained
from .textout import atomic_text, check_directory, quiet_broken_pipe

FORMATS = ("jsonl", "openai-batch", "csv", "h5")
ROW_SELECTIONS = ("all", "ok", "failed")

# JSON allows these raw inside strings, but str.splitlines() (and some JSONL readers) break on them.
_LINE_BREAKERS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def _json_line(obj) -> str:
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    for char, escaped in _LINE_BREAKERS.items():
        if char in text:
            text = text.replace(char, escaped)
    return text + "\n"


def _selected(block: dict, rows: str):
    """Positions in ``block`` of the rows chosen by ``rows``."""
    ok = block["ok"]
    if rows == "ok":
        return ok.nonzero()[0].tolist()
    if rows == "failed":
        return (~ok).nonzero()[0].tolist()
    return range(len(ok))


def _columns(block: dict) -> list:
    """The schema's columns ``block`` holds, in file order (optional ones only where present)."""
    return [c for c in FILE_COLUMNS if c.name in block]


# --- jsonl --------------------------------------------------------------------------------

def jsonl_lines(block: dict, positions, n: int):
    """One JSON object a row: every column of the file (:data:`mpiswarm.schema.FILE_COLUMNS`),
    a choice column as a list when n > 1, unknown values null."""
    columns = _columns(block)
    for i in positions:
        yield _json_line({c.name: _value(c, block[c.name][i], n) for c in columns})


def _value(column, entry, n: int):
    if column.per == CHOICE and n > 1:
        return [plain(column, v) for v in entry.tolist()]
    return plain(column, entry)


# --- openai-batch -------------------------------------------------------------------------

def _created(attrs: dict, path: str) -> int:
    """The file's ``created`` attribute as a Unix time (the file's mtime if absent)."""
    text = attrs.get("created")
    if isinstance(text, str):
        for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"):
            try:
                parsed = time.strptime(text, fmt)
            except ValueError:
                continue
            offset = parsed.tm_gmtoff or 0 if fmt.endswith("%z") else 0
            return int(calendar.timegm(parsed)) - offset
    return int(os.path.getmtime(path))


def error_object(message: str, kind: str, status: int) -> tuple[int | None, dict, dict | None]:
    """``(http_status, batch_error, response_error_body)`` for a failed row: its ``error``
    message, ``error_kind`` label and ``http_status`` (-1 or None: no status)."""
    if status is not None and status >= 0:
        if kind == ErrorKind.RATE_LIMITED.label:
            api_type = "rate_limit_error"
        elif status >= 500:
            api_type = "server_error"
        elif status in (401, 403):
            api_type = "authentication_error"
        else:
            api_type = "invalid_request_error"
        text = message.removeprefix(http_line(status, ""))  # the server's own words
        code = "context_length_exceeded" if kind == ErrorKind.CONTEXT_LENGTH.label else None
        body = {"error": {"message": text, "type": api_type, "param": None, "code": code}}
        return status, {"code": code or api_type, "message": text}, body
    if is_unanswered(kind):
        return None, {"code": "batch_expired", "message": message}, None
    if kind == ErrorKind.TIMEOUT.label:
        return None, {"code": "timeout", "message": message}, None
    if kind == ErrorKind.CONNECTION.label:
        return None, {"code": "connection_error", "message": message}, None
    return None, {"code": "server_error", "message": message or "failed"}, None


class BatchLines:
    """OpenAI Batch output lines for the rows of one result file."""

    def __init__(self, info):
        a = info.attrs
        self.model = a.get("model", "")
        self.chat = (a.get("params") or {}).get("api") == "chat"  # files without the chat column
        self.created = _created(a, info.path)
        key = f"{a.get('created')}|{self.model}|{info.n_rows}|{(a.get('params') or {}).get('input')}"
        self.key = hashlib.blake2b(key.encode(), digest_size=16).digest()
        self.n = info.n

    def ids(self, row: int, chat: bool) -> tuple[str, str, str]:
        h = hashlib.blake2b(row.to_bytes(8, "little"), key=self.key, digest_size=44).hexdigest()
        return f"batch_req_{h[:24]}", h[24:56], ("chatcmpl-" if chat else "cmpl-") + h[56:88]

    def body(self, completion_id: str, texts, finishes, prompt_tokens: int, completion_tokens: int,
             logprobs=None, chat: bool = False) -> dict:
        logprobs = logprobs or [None] * len(texts)
        if chat:
            choices = [{"index": j, "message": {"role": "assistant", "content": t}, "logprobs": lp,
                        "finish_reason": f} for j, (t, f, lp) in enumerate(zip(texts, finishes, logprobs))]
        else:
            choices = [{"index": j, "text": t, "logprobs": lp, "finish_reason": f}
                       for j, (t, f, lp) in enumerate(zip(texts, finishes, logprobs))]
        usage = None
        if prompt_tokens >= 0 and completion_tokens >= 0:
            usage = {"prompt_tokens": int(prompt_tokens), "completion_tokens": int(completion_tokens),
                     "total_tokens": int(prompt_tokens + completion_tokens)}
        return {"id": completion_id, "object": "chat.completion" if chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, "usage": usage}

    def lines(self, start: int, block: dict, positions):
        c = block
        n = self.n
        for i in positions:
            chat = bool(c["chat"][i]) if "chat" in c else self.chat
            batch_id, request_id, completion_id = self.ids(start + i, chat)
            if c["ok"][i]:
                texts = c["completion"][i].tolist() if n > 1 else [c["completion"][i]]
                finishes = c["finish_reason"][i].tolist() if n > 1 else [c["finish_reason"][i]]
                logprobs = None
                if "logprobs" in c:  # as the API returns them
                    raw = c["logprobs"][i].tolist() if n > 1 else [c["logprobs"][i]]
                    logprobs = [json.loads(t) if t else None for t in raw]
                body = self.body(completion_id, texts, finishes, c["prompt_tokens"][i], c["completion_tokens"][i],
                                 logprobs, chat)
                response, error = {"status_code": 200, "request_id": request_id, "body": body}, None
            else:
                status, error, error_body = error_object(c["error"][i], c["error_kind"][i], int(c["http_status"][i]))
                response = None if status is None else {"status_code": status, "request_id": request_id,
                                                         "body": error_body}
            yield _json_line({"id": batch_id, "custom_id": c["custom_id"][i], "response": response, "error": error})


# --- csv ----------------------------------------------------------------------------------

def csv_header(n: int, present=ROW_DATASETS) -> list[str]:
    """The CSV header of a file with ``n`` completions a row and the row datasets ``present``:
    one cell a column of :data:`~mpiswarm.schema.FILE_COLUMNS`, a choice column's as
    ``name_0`` … ``name_{n-1}`` when n > 1."""
    return [name for c in FILE_COLUMNS if c.name in present for name in _csv_names(c, n)]


def _csv_names(column, n: int) -> list[str]:
    return [f"{column.name}_{j}" for j in range(n)] if column.per == CHOICE and n > 1 else [column.name]


def _clean(text: str) -> str:
    # Python < 3.11's csv module cannot write NUL characters.
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _cell(column, value):
    if column.json:  # the JSON text itself
        return _clean(value) if sys.version_info < (3, 11) else value
    value = plain(column, value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return _clean(value) if isinstance(value, str) and sys.version_info < (3, 11) else value


def csv_records(block: dict, positions, n: int):
    """One record a row, the cells in :func:`csv_header`'s order."""
    columns = _columns(block)
    for i in positions:
        record = []
        for c in columns:
            entry = block[c.name][i]
            record += [_cell(c, v) for v in entry.tolist()] if c.per == CHOICE and n > 1 else [_cell(c, entry)]
        yield record


# --- writing ------------------------------------------------------------------------------

def export(path, fmt: str, output: str, rows: str = "all", chunk_rows: int = DEFAULT_CHUNK_ROWS) -> int:
    """Write the rows of the result file at ``path`` to ``output`` in ``fmt``; returns the
    number of rows written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    info = read_info(path)
    problem = check_directory(output)
    if problem:
        raise InputError(problem)
    if output != "-" and os.path.exists(output) and os.path.samefile(path, output):
        raise InputError(f"{output}: the export would overwrite the result file")
    if fmt == "h5":
        if output == "-" or rows != "all":
            raise InputError("--format h5: copies every row to a file (-o FILE; no --rows, not standard output)")
        return write_self_contained(path, output)
    n = info.n
    written = 0
    with atomic_text(output) as fh:
        writer = csv.writer(fh, lineterminator="\r\n") if fmt == "csv" else None
        if writer:
            writer.writerow(csv_header(n, info.columns))
        batch = BatchLines(info) if fmt == "openai-batch" else None
        for start, block in iter_rows(path, chunk_rows=chunk_rows):
            positions = _selected(block, rows)
            if writer:
                writer.writerows(csv_records(block, positions, n))
            elif batch:
                fh.writelines(batch.lines(start, block, positions))
            else:
                fh.writelines(jsonl_lines(block, positions, n))
            written += len(positions)
    return written


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a result file's rows as JSONL, OpenAI Batch output, CSV or one self-contained HDF5 file",
                       description="Write a result file's rows, in row order, as JSONL, OpenAI Batch "
                       "output lines or CSV. Streams the file a block of rows at a time.")
    p.add_argument("file", help="an mpiswarm result file (.h5)")
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="default jsonl")
    p.add_argument("-o", "--output", required=True, help="the file to write ('-': standard output)")
    p.add_argument("--rows", choices=ROW_SELECTIONS, default="all",
                   help="all rows (default), only answered ones (an OpenAI output file) or only the "
                   "others (an OpenAI error file)")
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, metavar="K",
                   help=f"rows read at once (default {DEFAULT_CHUNK_ROWS})")


@quiet_broken_pipe
def main(args) -> int:
    count = export(args.file, args.format, args.output, rows=args.rows, chunk_rows=max(1, args.chunk_rows))
    if args.output != "-":
        print(f"mpiswarm export: {count:,} rows to {os.path.abspath(args.output)} ({args.format})", file=sys.stderr)
    return 0
