"""Partitioning, the string wire format and endpoint resolution (tier 1: no MPI)."""
import numpy as np
import re

import pytest

from mpiswarm.endpoints import HostEntry, check_template, endpoint_from_hostfile, expand_endpoint, parse_hostfile
from mpiswarm.inputs import InputError
from mpiswarm.partition import contiguous_bounds, plan_calls
from mpiswarm.codec import pack_string_slices, pack_strings, unpack_strings


@pytest.mark.parametrize("n, parts", [(0, 1), (0, 4), (3, 4), (10, 3), (1000, 7)])
def test_contiguous_bounds_cover_everything_evenly(n, parts):
    b = contiguous_bounds(n, parts)
    assert len(b) == parts + 1 and b[0] == 0 and b[-1] == n
    sizes = np.diff(b)
    assert sizes.min() >= 0 and sizes.max() - sizes.min() <= 1
    assert list(sizes) == sorted(sizes, reverse=True)


def test_plan_calls_groups_by_overrides_and_batches():
    assert plan_calls([]) == []
    plans = plan_calls([""] * 5)
    assert [list(p.rows) for p in plans] == [[0, 1, 2, 3, 4]]
    plans = plan_calls([""] * 5, batch_size=2)
    assert [list(p.rows) for p in plans] == [[0, 1], [2, 3], [4]]
    plans = plan_calls(["", "a", "", "a", "b"], batch_size=None)
    assert [(list(p.rows), p.overrides) for p in plans] == [([0, 2], ""), ([1, 3], "a"), ([4], "b")]


STRINGS = ["", "plain", "ünïcødé ☃ 🚀", "", "line\nbreak", "\ud800 surrogate", "x" * 1000]


def test_pack_unpack_round_trip():
    buf, lengths = pack_strings(STRINGS)
    assert buf.dtype == np.uint8 and lengths.dtype == np.int64
    assert unpack_strings(buf, lengths) == STRINGS
    assert unpack_strings(*pack_strings([])) == []


def test_pack_string_slices_per_part_byte_counts():
    bounds = contiguous_bounds(len(STRINGS), 3)
    buf, lengths, byte_counts = pack_string_slices(STRINGS, bounds)
    assert byte_counts.sum() == len(buf)
    offsets = np.concatenate([[0], np.cumsum(byte_counts)])
    for r in range(3):
        a, b = bounds[r], bounds[r + 1]
        part = buf[offsets[r]:offsets[r + 1]]
        assert unpack_strings(part, lengths[a:b]) == STRINGS[a:b]


def test_expand_endpoint_placeholders():
    url = expand_endpoint("http://{host}:{port}/v1?r={rank}&l={local_rank}", rank=5, local_rank=1,
                          host="x1000c0s0b0n0", base_port=8000)
    assert url == "http://x1000c0s0b0n0:8001/v1?r=5&l=1"
    check_template("http://127.0.0.1:{port}/v1")
    with pytest.raises(InputError, match=r"unknown placeholder \{node\}"):
        check_template("http://{node}:8000/v1")
    with pytest.raises(InputError, match="--endpoint"):
        check_template("http://{port:8000/v1")
    check_template("https://[::1]:{port}/v1")
    check_template("http://{host}:8000/v1")
    for bad, why in (("http://127.0.0.1:8000/v1,http://127.0.0.1:8001/v1", "one URL, not a list"),
                     ("http://a:8000/v1 http://b:8000/v1", "one URL, not a list"),
                     ("127.0.0.1:8000/v1", "not an http\\(s\\) URL with a host"),
                     ("http:///v1", "not an http\\(s\\) URL with a host"),
                     ("http://127.0.0.1:99999/v1", "not a URL \\(Port out of range")):
        with pytest.raises(InputError, match=f"^--endpoint '{re.escape(bad)}': {why}"):
            check_template(bad)


def test_parse_hostfile(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# agents\nnode1\t8001\trole=worker\n\nnode2:9000\nnode3 # default port\nnode4\tmodel=x\n")
    entries = parse_hostfile(path)
    assert entries == [
        HostEntry("node1", 8001, {"role": "worker"}), HostEntry("node2", 9000),
        HostEntry("node3", 8000), HostEntry("node4", 8000, {"model": "x"}),
    ]
    assert endpoint_from_hostfile(entries, 5) == "http://node2:9000/v1"


@pytest.mark.parametrize("text, words", [
    ("node1\t99999\n", ":1: bad port"), ("node1\t8000\tjunk\n", ":1: expected key=value"),
    ("# nothing\n", "lists no endpoints"),
])
def test_bad_hostfile(tmp_path, text, words):
    path = tmp_path / "hosts"
    path.write_text(text)
    with pytest.raises(InputError, match=words):
        parse_hostfile(path)
