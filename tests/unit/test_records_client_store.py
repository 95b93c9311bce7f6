"""Placing answers by choice.index, records, and the HDF5 schema (tier 1: no MPI)."""
import json
import random

import numpy as np
import pytest

from mpiswarm.client import ClientOptions, describe_error, place_chat, place_completions, server_root
from mpiswarm.errors import CallTimeout, ConnectionFailed, StatusError, status_message
from mpiswarm.records import RankStats, ResultColumns
from mpiswarm.store import create_result_file, read_results, write_results


def choices(texts, n=1, shuffle=False):
    out = [{"index": i * n + j, "text": f"{t}/{j}", "finish_reason": "stop"}
           for i, t in enumerate(texts) for j in range(n)]
    if shuffle:
        random.Random(1).shuffle(out)
    return {"choices": out, "usage": {"prompt_tokens": 10, "completion_tokens": 20}}


def test_place_by_index_not_position():
    res = ResultColumns.pending(np.arange(10, 15), n=1, rank=3)
    answered = place_completions(choices(list("abcde"), shuffle=True), range(0, 5), 1, res, 0.5)
    assert answered == 5
    assert res.completion == ["a/0", "b/0", "c/0", "d/0", "e/0"]
    assert res.ok.all() and res.error == [""] * 5
    assert (res.latency_s == 0.5).all()
    assert (res.prompt_tokens == -1).all()  # a list's usage is a sum: unknown per prompt


def test_place_n2_into_rows_of_a_group():
    res = ResultColumns.pending(np.arange(4), n=2, rank=0)
    place_completions(choices(["x", "y"], n=2, shuffle=True), [1, 3], 2, res, 1.0)
    assert res.completion == ["", "", "x/0", "x/1", "", "", "y/0", "y/1"]
    assert res.ok.tolist() == [False, True, False, True]


def test_missing_choice_fails_only_that_row_and_single_prompt_usage():
    res = ResultColumns.pending(np.arange(3), n=1, rank=0)
    data = choices(["a", "b", "c"])
    del data["choices"][1]
    assert place_completions(data, range(3), 1, res, 0.1) == 2
    assert res.ok.tolist() == [True, False, True]
    assert "no choice" in res.error[1]
    one = ResultColumns.pending(np.arange(1), n=1, rank=0)
    place_completions(choices(["a"]), range(1), 1, one, 0.1)
    assert one.prompt_tokens[0] == 10 and one.completion_tokens[0] == 20


def test_bad_index_raises():
    res = ResultColumns.pending(np.arange(2), n=1, rank=0)
    data = choices(["a", "b"])
    data["choices"][1]["index"] = 0
    with pytest.raises(ValueError):
        place_completions(data, range(2), 1, res, 0.1)


def test_place_chat():
    res = ResultColumns.pending(np.arange(2), n=2, rank=0)
    data = {"choices": [{"index": 1, "message": {"content": "B"}, "finish_reason": "length"},
                        {"index": 0, "message": {"content": "A"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    assert place_chat(data, 1, 2, res, 0.2) == 1
    assert res.completion == ["", "", "A", "B"] and res.finish_reason[2:] == ["stop", "length"]
    assert res.prompt_tokens[1] == 3


def test_in_index_order_and_fail():
    res = ResultColumns.pending(np.array([2, 0, 1]), n=2, rank=0)
    res.completion[:] = ["c0", "c1", "a0", "a1", "b0", "b1"]
    res.error[:] = ["ec", "ea", "eb"]
    ordered = res.in_index_order()
    assert ordered.index.tolist() == [0, 1, 2]
    assert ordered.completion == ["a0", "a1", "b0", "b1", "c0", "c1"]
    assert ordered.error == ["ea", "eb", "ec"]
    ordered.fail([1], "boom")
    assert ordered.completion[2:4] == ["", ""] and ordered.error[1] == "boom"


def test_helpers():
    assert server_root("http://h:8000/v1") == "http://h:8000"
    assert server_root("http://h:8000/v1/") == "http://h:8000"
    assert ClientOptions(model="m").timeout_for(2000) > ClientOptions(model="m").timeout_for(20)
    assert ClientOptions(model="m", api="chat").calls_in_flight() == 128
    flat = json.dumps({"object": "error", "message": "too long", "code": 400}).encode()
    nested = json.dumps({"error": {"message": "too long", "type": "BadRequestError", "code": 400}}).encode()
    assert status_message(400, flat) == status_message(400, nested) == "too long"
    assert status_message(422, b'{"detail": "bad field"}') == "bad field"
    assert status_message(502, b"Bad Gateway\n") == "Bad Gateway" and status_message(503, b"") == "status 503"
    assert describe_error(StatusError(400, status_message(400, nested))) == "HTTP 400: too long"
    assert describe_error(CallTimeout("read"), 12) == "timeout after 12 s"
    try:
        raise ConnectionFailed("x") from ConnectionRefusedError("refused")
    except ConnectionFailed as exc:
        assert describe_error(exc) == "connection error: ConnectionRefusedError refused"


def sample_results(n_rows, n=1):
    res = ResultColumns.pending(np.arange(n_rows), n=n, rank=1)
    for i in range(n_rows):
        for j in range(n):
            res.completion[i * n + j] = f"answer ü {i}.{j}"
            res.finish_reason[i * n + j] = "stop"
        res.ok[i] = i % 3 != 0
        res.error[i] = "" if res.ok[i] else "HTTP 400: nope"
    return res


@pytest.mark.parametrize("n", [1, 2])
def test_write_and_read_back_schema(tmp_path, n):
    path = tmp_path / "out.h5"
    prompts = [f"p{i} ☃" for i in range(7)]
    ids = [f"id{i}" for i in range(7)]
    stats = [RankStats(rank=r, host="h", endpoint=f"http://e{r}/v1", n_prompts=3) for r in range(2)]
    write_results(path, prompts=prompts, custom_ids=ids, results=sample_results(7, n), rank_stats=stats,
                  attrs={"model": "m", "n_ranks": 2, "complete": True, "params": {"n": n}})
    data = read_results(path)
    assert data["prompt"].tolist() == prompts and data["custom_id"].tolist() == ids
    assert data["completion"].shape == ((7,) if n == 1 else (7, n))
    assert data["finish_reason"].shape == data["completion"].shape
    assert data["completion"].ravel().tolist()[-1] == f"answer ü 6.{n - 1}"
    assert data["ok"].dtype == bool and data["ok"].sum() == 4
    assert data["rank"].dtype == np.int32 and data["latency_s"].dtype == np.float64
    assert data["attrs"]["n_ok"] == 4 and data["attrs"]["n_prompts"] == 7
    assert data["attrs"]["params"] == {"n": n} and data["attrs"]["complete"]
    assert data["ranks"]["endpoint"].tolist() == ["http://e0/v1", "http://e1/v1"]
    assert json.loads(data["ranks"]["extra"][0]) == {}
    assert list(tmp_path.iterdir()) == [path]


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with create_result_file(path, 3) as out:
            out.write_rows(["a", "b", "c"], ["0", "1", "2"], sample_results(3))
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_rows_that_do_not_cover_the_input(tmp_path):
    with pytest.raises(ValueError):
        write_results(tmp_path / "o.h5", prompts=["a", "b"], custom_ids=["0", "1"], results=sample_results(1),
                      rank_stats=[], attrs={})
    assert not (tmp_path / "o.h5").exists()
