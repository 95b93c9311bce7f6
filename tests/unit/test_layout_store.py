"""The virtual layout's files without MPI: part files, the virtual output over them, the
self-contained copy, and the tallies added up over ranks."""
import h5py
import numpy as np
import pytest

from mpiswarm.packed import PackedColumns, PackedStrings
from mpiswarm.records import ResultColumns
from mpiswarm.store import (ResultFileError, create_part_file, create_result_file, create_virtual_file, part_name,
                            read_results, remove_stale_parts, write_self_contained)
from mpiswarm.summary import Tally


def results(index, n=1, reasoning=False):
    res = ResultColumns.pending(np.asarray(index), n, 7)
    for i, row in enumerate(index):
        res.completion[i * n:(i + 1) * n] = [f"answer {row}.{j} ✓" for j in range(n)]
        res.ok[i], res.done[i] = row != 3, True
        res.error[i] = "" if row != 3 else "HTTP 400: too long"
        res.latency_s[i] = row / 10
        if reasoning:
            res.set_reasoning(i * n, f"because {row}")
    return res


@pytest.mark.parametrize("n", [1, 2])
def test_parts_under_a_virtual_file_read_like_one_file(tmp_path, n):
    prompts = [f"prompt {i} é" for i in range(10)]
    ids = [f"id{i}" for i in range(10)]
    blocks = [(0, 4), (4, 4), (8, 0), (8, 2)]  # (first row, rows); one rank with none
    parts = []
    (tmp_path / "out.h5.parts").mkdir()
    for rank, (first, count) in enumerate(blocks):
        if not count:
            parts.append((f"out.h5.parts/{part_name('tok', rank)}", first, 0))
            continue
        with create_part_file(tmp_path / "out.h5.parts" / part_name("tok", rank), first, count, n, ("reasoning",)) as part:
            half = first + count // 2  # two windows, the texts of each as packed strings
            for a, b in ((first, half), (half, first + count)):
                part.write_rows(PackedStrings.pack(prompts[a:b]), PackedStrings.pack(ids[a:b]),
                                PackedColumns.from_results(results(list(range(a, b)), n, reasoning=a == 0)), base=a)
        parts.append((f"out.h5.parts/{part_name('tok', rank)}", first, count))
    with create_virtual_file(tmp_path / "out.h5", 10, n, parts, optional=("reasoning",)) as out:
        out.n_ok = 9
    with create_result_file(tmp_path / "single.h5", 10, n) as out:
        out.write_rows(prompts, ids, results(list(range(10)), n, reasoning=True))
    virtual, single = read_results(tmp_path / "out.h5"), read_results(tmp_path / "single.h5")
    assert virtual["attrs"]["layout"] == "virtual" and virtual["attrs"]["n_ok"] == single["attrs"]["n_ok"] == 9
    for name in ("prompt", "custom_id", "completion", "finish_reason", "ok", "error", "rank", "latency_s"):
        assert np.array_equal(virtual[name], single[name]), name
    assert virtual["reasoning"].tolist()[:1] == (["because 0"] if n == 1 else [["because 0", ""]])
    assert virtual["reasoning"].ravel().tolist()[2 * n:] == [""] * (8 * n)  # rows without reasoning

    write_self_contained(tmp_path / "out.h5", tmp_path / "copy.h5")
    copy = read_results(tmp_path / "copy.h5")
    with h5py.File(tmp_path / "copy.h5") as f:
        assert not f["prompt"].is_virtual and "parts" not in f.attrs and f.attrs["layout"] == "single"
    assert np.array_equal(copy["completion"], single["completion"])

    (tmp_path / "out.h5.parts" / "old-r000000.h5").write_bytes(b"")
    remove_stale_parts(tmp_path / "out.h5", keep=[p for p, _, k in parts if k])
    assert sorted(p.name for p in (tmp_path / "out.h5.parts").iterdir()) == sorted(
        part_name("tok", r) for r in (0, 1, 3))
    (tmp_path / "out.h5.parts" / part_name("tok", 1)).unlink()
    with pytest.raises(ResultFileError, match=r"out.h5: part file out.h5.parts/tok-r000001.h5 is missing"):
        read_results(tmp_path / "out.h5")
    remove_stale_parts(tmp_path / "out.h5", keep=[])
    assert not (tmp_path / "out.h5.parts").exists()


def test_part_bounds_give_rows_to_the_writers_only():
    from mpiswarm.layout import part_bounds

    assert part_bounds(10, [True] * 4).tolist() == [0, 3, 6, 8, 10]
    assert part_bounds(10, [True, False, False, True, False]).tolist() == [0, 5, 5, 5, 10, 10]
    assert part_bounds(0, [True, True]).tolist() == [0, 0, 0]


def test_tallies_add_up():
    a, b = Tally(), Tally()
    a.add(PackedColumns.from_results(results([0, 1, 2, 3])))
    b.add(PackedColumns.from_results(results([3, 4])))
    total = Tally.merge([a, b])
    assert (total.rows, total.ok, total.open) == (6, 4, 0)
    assert total.errors == {"HTTP 400: too long": 2}
