"""Packed result rows (mpiswarm.packed): the message format rank 0 gathers, and the HDF5
writer fed from it (pointers into the packed buffer) — no MPI."""
import numpy as np
import pytest

from mpiswarm.packed import PackedColumns, PackedStrings, pack_message, unpack_messages
from mpiswarm.records import ResultColumns
from mpiswarm.store import create_result_file, read_results

TEXTS = ["", "plain", "ünïcødé ☃ 🚀", "line\nbreak", "x" * 1000, "a\x00b", "\x00"]


def results(index, n, rank, texts=TEXTS):
    res = ResultColumns.pending(np.asarray(index), n=n, rank=rank)
    for i, row in enumerate(res.index.tolist()):
        for j in range(n):
            res.completion[i * n + j] = f"{texts[(row + j) % len(texts)]}|{row}.{j}"
            res.finish_reason[i * n + j] = "length" if j else "stop"
        res.ok[i] = row % 3 != 0
        res.done[i] = True
        res.error[i] = "" if res.ok[i] else f"HTTP 400: bad {row % 2}"
        res.prompt_tokens[i] = row
        res.latency_s[i] = row / 10
    return res


@pytest.mark.parametrize("n", [1, 3])
def test_messages_of_several_ranks_round_trip_in_index_order(n):
    parts = [results([5, 1, 9], n, 0), results([], n, 1), results([0, 2, 3, 4, 6, 7, 8], n, 2)]
    messages = [pack_message(p) for p in parts]
    offsets = np.cumsum([0] + [len(m) for m in messages[:-1]])
    assert all(len(m) % 8 == 0 for m in messages)
    got = unpack_messages(np.frombuffer(b"".join(messages), np.uint8), offsets).in_index_order()
    back = got.to_results()
    expected = results(range(10), n, 0)
    assert back.index.tolist() == list(range(10))
    assert back.completion == expected.completion  # NULs inside strings survive the wire
    assert back.finish_reason == expected.finish_reason and back.error == expected.error
    assert back.rank.tolist() == [2, 0, 2, 2, 2, 0, 2, 2, 2, 0]
    assert back.prompt_tokens.tolist() == list(range(10)) and back.latency_s[9] == 0.9
    assert got.strings["completion"].has_nul and not got.strings["error"].has_nul
    assert sorted(got.failed_errors()) == ["HTTP 400: bad 0", "HTTP 400: bad 0", "HTTP 400: bad 1", "HTTP 400: bad 1"]


def test_a_slice_of_the_rows_packs_alone():
    res = results(range(8), 2, 0)
    got = unpack_messages(np.frombuffer(pack_message(res, 3, 6), np.uint8), [0]).to_results()
    assert got.index.tolist() == [3, 4, 5]
    assert got.completion == res.completion[6:12] and got.error == res.error[3:6]


def test_packed_strings_point_at_nul_terminated_utf8():
    s = PackedStrings.pack(["ab", "", "☃"])
    assert not s.has_nul and s.lengths.tolist() == [2, 0, 3]
    raw = s.data.tobytes()
    assert [raw[a:raw.index(b"\0", a)] for a in s.starts.tolist()] == [b"ab", b"", "☃".encode()]
    assert s.take(np.array([2, 0])).decode() == ["☃", "ab"]
    assert PackedStrings.pack(["\ud800 lone"]).decode() == ["? lone"]  # not storable as UTF-8


@pytest.mark.parametrize("n", [1, 2])
def test_writer_stores_packed_rows_as_utf8_strings(tmp_path, n):
    path = tmp_path / "o.h5"
    prompts = [f"p{i} ☃" for i in range(10)]
    ids = [f"id{i}" for i in range(10)]
    res = results(range(10), n, 1)
    with create_result_file(path, 10, n) as out:
        # two rounds, the second with a gap: rows written as runs of consecutive rows
        out.write_rows(prompts, ids, PackedColumns.from_results(results([0, 1, 2, 5, 6], n, 1, TEXTS[:5])))
        out.write_rows(prompts, ids, PackedColumns.from_results(results([3, 4, 7, 8, 9], n, 1)))
    data = read_results(path)
    assert data["prompt"].tolist() == prompts and data["custom_id"].tolist() == ids
    flat = data["completion"].ravel().tolist()
    want = results([0, 1, 2, 5, 6], n, 1, TEXTS[:5])
    for k, row in enumerate([0, 1, 2, 5, 6]):
        assert flat[row * n:(row + 1) * n] == want.completion[k * n:(k + 1) * n]
    # rows of the second round hold NULs: HDF5 strings cannot, stored as U+FFFD
    assert flat[8 * n] == res.completion[8 * n].replace("\x00", "\ufffd")
    assert data["error"].tolist() == res.error
    assert data["ok"].tolist() == res.ok.tolist() and data["attrs"]["n_ok"] == int(res.ok.sum())
    assert data["finish_reason"].shape == data["completion"].shape


def test_empty_round_is_nothing(tmp_path):
    empty = PackedColumns.empty(1)
    assert len(empty) == 0 and empty.to_results().completion == []
    with create_result_file(tmp_path / "o.h5", 0) as out:
        out.write_rows([], [], empty)
    assert read_results(tmp_path / "o.h5")["prompt"].tolist() == []


@pytest.mark.parametrize("n", [1, 2])
def test_reasoning_travels_only_when_asked_and_reaches_the_file(tmp_path, n):
    thinking = results([1, 3], n, 0)
    for i in range(2 * n):
        thinking.set_reasoning(i, f"why {i} ☃")
    plain = results([0, 2], n, 1)  # a rank without reasoning: '' on the wire
    messages = [pack_message(thinking, optional=("reasoning",)), pack_message(plain, optional=("reasoning",))]
    got = unpack_messages(np.frombuffer(b"".join(messages), np.uint8), [0, len(messages[0])]).in_index_order()
    assert got.has_reasoning
    assert got.reasoning == [""] * n + [f"why {i} ☃" for i in range(n)] + [""] * n + [f"why {i} ☃" for i in range(n, 2 * n)]
    assert got.completion == got.to_results().completion  # string columns read like ResultColumns'
    bare = unpack_messages(np.frombuffer(pack_message(plain), np.uint8), [0])
    assert not bare.has_reasoning and bare.reasoning is None and bare.take(np.array([1, 0])).reasoning is None
    with create_result_file(tmp_path / "o.h5", 4, n) as out:
        out.write_rows([f"p{i}" for i in range(4)], [str(i) for i in range(4)], got)
    assert read_results(tmp_path / "o.h5")["reasoning"].ravel().tolist() == got.reasoning
