"""Every format carries every column of the schema (tier 1: no MPI).

Each column of :data:`mpiswarm.schema.RESULT_COLUMNS` gets values unlike its fill, and every
writer and reader is checked for it: the gather message, the checkpoint records, the result
file in both layouts, its readers, and every export format. A column added to the schema and
forgotten by one of them fails here."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mpiswarm import schema
from mpiswarm.checkpoint import decode_records, encode_record
from mpiswarm.export import export
from mpiswarm.packed import PackedColumns, carried, pack_message, unpack_messages
from mpiswarm.records import ResultColumns
from mpiswarm.store import create_part_file, create_virtual_file, iter_rows, read_results, write_results

ROWS, N = 5, 2


def distinct_results(n: int = N) -> ResultColumns:
    """Rows whose every column holds values unlike its fill (and unlike each other)."""
    columns = {}
    for c in schema.RESULT_COLUMNS:
        k = c.entries(ROWS, n)
        if c.is_string:
            columns[c.name] = [f"{c.name} {i} ☃" for i in range(k)]
        elif c.enum is not None:
            columns[c.name] = np.array([list(c.enum)[(i % (len(c.enum) - 1)) + 1] for i in range(k)], c.np_dtype)
        elif c.dtype == "bool":
            columns[c.name] = np.array([i % 2 == 0 for i in range(k)])
        elif c.name == "index":
            columns[c.name] = np.arange(k, dtype=np.int64)
        else:
            columns[c.name] = (np.arange(k) + 3.5 if c.np_dtype.kind == "f" else np.arange(k) + 3).astype(c.np_dtype)
    return ResultColumns(n, **columns)


def assert_same(got: ResultColumns, want: ResultColumns, columns=schema.RESULT_COLUMNS):
    for c in columns:
        a, b = getattr(got, c.name), getattr(want, c.name)
        assert b is not None and a is not None, c.name
        if c.is_string:
            assert list(a) == list(b), c.name
        else:
            assert np.array_equal(np.asarray(a), np.asarray(b)), c.name


def test_every_column_is_in_the_table_once():
    names = [c.name for c in schema.RESULT_COLUMNS + schema.INPUT_COLUMNS]
    assert len(names) == len(set(names))
    assert set(schema.ROW_DATASETS) | set(schema.OPTIONAL_ROW_DATASETS) == {c.name for c in schema.FILE_COLUMNS}


def test_results_carry_every_column():
    res = distinct_results()
    assert_same(res.take(np.arange(ROWS)), res)
    assert_same(ResultColumns.concat([res.take(np.arange(2)), res.take(np.arange(2, ROWS))]), res)
    pending = ResultColumns.pending(np.arange(3), N, 0)
    for c in schema.RESULT_COLUMNS:
        if not c.optional and c.name not in ("index", "rank"):
            values = getattr(pending, c.name)
            assert all(v == c.fill or (v != v and c.fill != c.fill) for v in values), c.name


def test_the_gather_message_carries_every_column():
    res = distinct_results()
    message = np.frombuffer(pack_message(res, optional=carried(res)), np.uint8)
    got = unpack_messages(message, [0])
    assert set(got.carried) == set(schema.OPTIONAL_COLUMNS)
    assert_same(got.to_results(), res)
    assert_same(PackedColumns.from_results(res).to_results(), res)


def test_checkpoint_records_carry_every_column():
    res = distinct_results()
    (record,) = decode_records(encode_record(res, list(range(ROWS))))
    assert_same(record, res)


def _check_file(path, res: ResultColumns, prompts, ids):
    data = read_results(path)
    for c in schema.FILE_COLUMNS:
        assert c.name in data, c.name
        values = data[c.name]
        if c.name in ("prompt", "custom_id"):
            want = prompts if c.name == "prompt" else ids
        else:
            want = getattr(res, c.name)
            if c.enum is not None:
                want = schema.labels(c, np.asarray(want))
        assert np.asarray(values).ravel().tolist() == list(np.asarray(want).ravel().tolist()), c.name


def test_the_result_file_holds_every_column(tmp_path):
    res = distinct_results()
    prompts, ids = [f"p{i}" for i in range(ROWS)], [f"id{i}" for i in range(ROWS)]
    write_results(tmp_path / "one.h5", prompts=prompts, custom_ids=ids, results=res, rank_stats=[], attrs={})
    _check_file(tmp_path / "one.h5", res, prompts, ids)

    (tmp_path / "v.h5.parts").mkdir()
    parts = []
    for k, (a, b) in enumerate(((0, 2), (2, ROWS))):
        name = f"v.h5.parts/p{k}.h5"
        with create_part_file(tmp_path / name, a, b - a, N, carried(res)) as part:
            part.write_rows(prompts[a:b], ids[a:b], res.take(np.arange(a, b)), base=a)
        parts.append((name, a, b - a))
    with create_virtual_file(tmp_path / "v.h5", ROWS, N, parts, carried(res)):
        pass
    _check_file(tmp_path / "v.h5", res, prompts, ids)
    for _, block in iter_rows(tmp_path / "v.h5"):
        assert set(block) == {c.name for c in schema.FILE_COLUMNS}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "openai-batch"])
def test_every_export_format_carries_every_column(tmp_path, fmt):
    res = distinct_results()
    res.ok[:] = True  # (openai-batch: answered rows carry their texts)
    prompts, ids = [f"p{i}" for i in range(ROWS)], [f"id{i}" for i in range(ROWS)]
    write_results(tmp_path / "r.h5", prompts=prompts, custom_ids=ids, results=res, rank_stats=[],
                  attrs={"model": "m"})
    out = tmp_path / f"r.{fmt}"
    assert export(tmp_path / "r.h5", fmt, str(out)) == ROWS
    if fmt == "jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        for c in schema.FILE_COLUMNS:
            assert all(c.name in row for row in rows), c.name
        assert [row["reasoning"] for row in rows] == [res.reasoning[i * N:i * N + N] for i in range(ROWS)]
    elif fmt == "csv":
        with open(out, newline="") as fh:
            head, *records = list(csv.reader(fh))
        assert all(len(record) == len(head) for record in records)
        rows = [dict(zip(head, record)) for record in records]
        for c in schema.FILE_COLUMNS:
            want = [f"{c.name}_{j}" for j in range(N)] if c.per == schema.CHOICE else [c.name]
            assert all(name in head for name in want), c.name
            if not c.is_string and c.enum is None and c.dtype != "bool":
                values = getattr(res, c.name)
                assert [float(row[c.name]) for row in rows] == [float(v) for v in values], c.name
    else:  # the columns the OpenAI Batch format has a place for
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["custom_id"] for r in rows] == ids
        choices = rows[1]["response"]["body"]["choices"]
        assert [ch["text"] for ch in choices] == res.completion[N:2 * N]
        assert [ch["finish_reason"] for ch in choices] == res.finish_reason[N:2 * N]


def test_answered_rows_carry_no_error_kind_on_every_placement_path():
    """The producers of error_kind: a row answered by any path is NONE with no status."""
    from mpiswarm.client import place_chat, place_completions
    from mpiswarm.errors import ErrorKind

    reply = {"choices": [{"index": i, "text": f"t{i}", "finish_reason": "stop"} for i in range(4)]}
    for rows, n in ((range(4), 1), ([3, 2, 1, 0], 1)):  # the contiguous fast path and the general one
        res = ResultColumns.pending(np.arange(4), n, 0)
        place_completions(reply, rows, n, res, 0.1)
        assert res.ok.all() and (res.error_kind == ErrorKind.NONE).all() and (res.http_status == -1).all()
    res = ResultColumns.pending(np.arange(1), 1, 0)
    place_chat({"choices": [{"index": 0, "message": {"content": "c"}, "finish_reason": "stop"}]}, 0, 1, res, 0.1)
    assert res.ok[0] and res.error_kind[0] == ErrorKind.NONE
    res.fail([0], "HTTP 503: busy", kind=ErrorKind.HTTP_SERVER, status=503)
    assert (res.error_kind[0], res.http_status[0], res.ok[0]) == (ErrorKind.HTTP_SERVER, 503, False)
