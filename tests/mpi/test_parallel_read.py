"""The parallel reader: every rank parses a byte range, rank 0 gets what ``read_prompts`` gives
(tier 2: pytest-mpi, run at 2 and 4 ranks by tests/e2e/test_mpi_tier.py).

``min_bytes=0`` forces the parallel path on these small files; an error must be the serial
reader's, with the same message, raised on every rank.
"""
import json

import pytest

from mpiswarm import _mpi
from mpiswarm.inputs import InputError, line_aligned_ranges, read_prompts
from mpiswarm.read import read_prompts_parallel

pytestmark = pytest.mark.mpi(min_size=2)
WORDS = ["gene", "протеин", "細胞", "🧬", "cell", "α-helix"]


def comm_info():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return comm, comm.Get_rank(), comm.Get_size()


def jsonl(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def outcome(f):
    try:
        ps = f()
    except InputError as exc:
        return ("error", str(exc))
    if ps is None:
        return None
    return (ps.prompts, ps.custom_ids, ps.overrides, ps.fields, ps.sha256)


def check(tmp_path, name, data, **kwargs):
    """Every rank reads ``data`` in parallel; rank 0 compares with the serial reader. Returns
    the serial outcome (on every rank)."""
    comm, rank, size = comm_info()
    path = tmp_path / name
    if rank == 0:
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    _mpi.barrier(comm)
    got = outcome(lambda: read_prompts_parallel(path, comm, min_bytes=0, **kwargs))
    serial = _mpi.bcast(outcome(lambda: read_prompts(path, **kwargs)) if rank == 0 else None, comm)
    if serial[0] == "error":
        assert got == serial  # on every rank
    elif rank == 0:
        assert got == serial
    else:
        assert got is None
    _mpi.barrier(comm)
    return serial


def rows(n, **extra):
    return [{"prompt": f"Q{i}: {WORDS[i % 6]} {' '.join(WORDS[: i % 4])}", **extra} for i in range(n)]


GOOD = {
    "plain": jsonl(rows(200)),
    "ids": jsonl([dict(r, custom_id=f"id-{i}") for i, r in enumerate(rows(150))]),
    "some_ids_and_overrides": jsonl([dict(r, custom_id=f"c{i}", max_tokens=i % 5 + 1, stop=["\n"]) if i % 7 == 3
                                     else r for i, r in enumerate(rows(160))]),
    "batch": jsonl([{"custom_id": f"b{i}", "method": "POST", "url": "/v1/completions",
                     "body": {"model": "m", "prompt": f"batch {WORDS[i % 6]} {i}", "temperature": i % 2}}
                    for i in range(120)]),
    "fields_in_the_last_part_only": jsonl(rows(150) + [{"prompt": "x", "gene": "BRCA1", "n": 2}]),
    "blank_lines_crlf": "\r\n\n  \n".join(json.dumps({"prompt": f"p{i} ☃"}) for i in range(100)) + "\n\n\n",
    "no_trailing_newline": jsonl(rows(99)) + json.dumps({"prompt": "last"}),
    "empty": "",
    "nul_inside_strings": jsonl([dict(r, custom_id=f"n\u0000{i}") if i % 3 else dict(r, prompt="a\u0000b")
                                 for i, r in enumerate(rows(90))] + [{"prompt": "x", "max_tokens": 2}]),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_parallel_equals_serial(mpi_tmp_path, name):
    serial = check(mpi_tmp_path, name + ".jsonl", GOOD[name])
    assert serial[0] != "error"


def test_map_templates_with_fields_and_prompt_formats(mpi_tmp_path):
    genes = [{"gene": f"G{i}", "organism": WORDS[i % 6], "custom_id": f"g{i}", "max_tokens": 3} for i in range(150)]
    genes[77] = {"custom_id": "b77", "method": "POST", "url": "/v1/completions",
                 "body": {"gene": "B", "organism": "fly", "temperature": 0}}
    data = jsonl(genes)
    for kwargs in ({"template": "Analyze {gene} in {organism}."},
                   {"template": "[{custom_id}] {gene}", "prompt_format": "<|user|>\\n{prompt}<|end|>"},
                   {"prompt_format": "<s>{prompt}</s>"}):
        check(mpi_tmp_path, "genes.jsonl", data, **kwargs)
    genes[140] = {"gene": "no organism"}  # late: in the last rank's range
    serial = check(mpi_tmp_path, "genes.jsonl", jsonl(genes), template="{gene} {organism}")
    assert serial == ("error", f"{mpi_tmp_path / 'genes.jsonl'}:141: this row has no field {{organism}} for the template")


@pytest.mark.parametrize("template", [None, "Q: {prompt}", "{gene}"])
def test_txt(mpi_tmp_path, template):
    text = "\n".join(f"line {i} {WORDS[i % 6]}" if i % 9 else "" for i in range(300)) + "\r\n"
    check(mpi_tmp_path, "in.txt", text, template=template, prompt_format="[{prompt}]")


def test_unicode_across_the_split_points(mpi_tmp_path):
    comm, rank, size = comm_info()
    data = (jsonl(rows(5)) + json.dumps({"prompt": "🧬é" * 4000}, ensure_ascii=False) + "\n"
            + jsonl([{"prompt": "☃" * (i % 50 + 1)} for i in range(200)])).encode()
    nominal = [len(data) * k // size for k in range(1, size)]
    assert any(0x80 <= data[p] < 0xC0 for p in nominal)  # a naive cut would split a character
    assert check(mpi_tmp_path, "u.jsonl", data)[0] != "error"


def bad_late(line: str, n=150):
    """A file whose last line — in the last rank's range — is ``line``."""
    return jsonl(rows(n)) + line + "\n"


BAD = {
    "bad_json": (bad_late('{"prompt": "a",'), ":151: not valid JSON"),
    "not_an_object": (bad_late('["a"]'), ":151: expected a JSON object, got list"),
    "missing_prompt": (bad_late('{"question": "b"}'), ":151: no 'prompt' field"),
    "non_string_prompt": (bad_late('{"prompt": ["a"]}'), ":151: 'prompt' must be a string, got list"),
    "bad_override": (bad_late('{"prompt": "a", "max_tokens": 0}'), ":151: 'max_tokens' must be an integer >= 1"),
    "bad_custom_id": (bad_late('{"prompt": "a", "custom_id": 1.5}'), ":151: 'custom_id' must be a string"),
    "duplicate_custom_id": (jsonl([{"prompt": "first", "custom_id": "k"}] + rows(150)
                                  + [{"prompt": "again", "custom_id": "k"}]),
                            ":152: duplicate custom_id 'k' (first on line 1)"),
    "duplicate_before_a_later_error": (jsonl([{"prompt": "a", "custom_id": "k"}] + rows(80)
                                             + [{"prompt": "b", "custom_id": "k"}] + rows(80)) + "{bad\n",
                                       ":82: duplicate custom_id 'k' (first on line 1)"),
    "error_before_a_later_duplicate": (jsonl([{"prompt": "a", "custom_id": "k"}] + rows(40)) + "{bad\n"
                                       + jsonl(rows(100) + [{"prompt": "b", "custom_id": "k"}]),
                                       ":42: not valid JSON"),
    "two_errors_first_wins": (jsonl(rows(60)) + "[1]\n" + jsonl(rows(100)) + "{bad\n", ":61: expected a JSON object"),
    "default_id_collision": (jsonl(rows(150) + [{"prompt": "x", "custom_id": "2"}]),
                             ": prompt 2 has no custom_id and its default id '2' repeats the custom_id on line 151"),
    "lone_surrogate": (bad_late('{"prompt": "\\udc80 x", "custom_id": "s"}'),
                       ": prompt 150 (custom_id 's') holds a lone surrogate escape and is not valid Unicode"),
    "invalid_utf8": (jsonl(rows(150)).encode() + b'{"prompt": "\xc3("}\n', ":151: not valid UTF-8 (invalid continuation"),
    "invalid_utf8_after_an_error": (jsonl(rows(20)).encode() + b"{bad\n" + jsonl(rows(130)).encode() + b"\xff\n",
                                    ":21: not valid JSON"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_errors_are_the_serial_reader_s(mpi_tmp_path, name):
    data, words = BAD[name]
    serial = check(mpi_tmp_path, "in.jsonl", data)
    assert serial[0] == "error" and serial[1].startswith(str(mpi_tmp_path / "in.jsonl") + words)


def test_the_error_spans_ranks(mpi_tmp_path):
    """The cross-range cases above really cross ranges: first and second occurrence of the
    duplicate, and the colliding default id and its explicit id, are in different ranks' parts."""
    comm, rank, size = comm_info()
    for name, a, b in (("duplicate_custom_id", 0, -1), ("default_id_collision", 2, -1)):
        data = BAD[name][0]
        data = data.encode() if isinstance(data, str) else data
        ranges = line_aligned_ranges(data, size)
        starts = [data.count(b"\n", 0, s) for s, _ in ranges]  # lines before each range
        lines = data.count(b"\n")
        owner = lambda line: max(r for r, s in enumerate(starts) if s <= line and ranges[r][0] < ranges[r][1])
        assert owner(a) != owner(lines - 1 if b == -1 else b)


def test_missing_file_and_default_threshold(mpi_tmp_path):
    comm, rank, size = comm_info()
    missing = mpi_tmp_path / "missing.jsonl"
    assert outcome(lambda: read_prompts_parallel(missing, comm)) == ("error", f"{missing}: no such file")
    assert outcome(lambda: read_prompts_parallel(mpi_tmp_path / "x.csv", comm))[1].endswith("unsupported input "
                                                                                           "format '.csv' (expected "
                                                                                           ".jsonl or .txt)")
    path = mpi_tmp_path / "small.jsonl"
    if rank == 0:
        path.write_text(GOOD["ids"])
    _mpi.barrier(comm)
    got = outcome(lambda: read_prompts_parallel(path, comm))  # below the threshold: rank 0 alone
    if rank == 0:
        assert got == outcome(lambda: read_prompts(path))
    else:
        assert got is None


def test_a_rank_that_cannot_open_the_file_leaves_it_to_rank_0(mpi_tmp_path, monkeypatch):
    """A file that only rank 0's node sees (node-local storage): rank 0 reads it alone."""
    comm, rank, size = comm_info()
    path = mpi_tmp_path / "local.jsonl"
    if rank == 0:
        path.write_text(GOOD["ids"])
    _mpi.barrier(comm)
    if rank == size - 1:
        def cannot(name, *args, **kwargs):
            raise FileNotFoundError(2, "No such file or directory", name)

        monkeypatch.setattr("mpiswarm.read.os.open", cannot)
    got = outcome(lambda: read_prompts_parallel(path, comm, min_bytes=0))
    monkeypatch.undo()
    if rank == 0:
        assert got == outcome(lambda: read_prompts(path))
    else:
        assert got is None


@pytest.mark.parametrize("block", [7, 100, 1000, 1 << 24])
def test_blocked_digest_whatever_the_ranges(mpi_tmp_path, monkeypatch, block):
    """Digest blocks that begin in one rank's range and end in another's (small blocks here):
    the parallel digest is the serial one (``check`` compares ``sha256``)."""
    monkeypatch.setattr("mpiswarm.inputs.DIGEST_BLOCK_BYTES", block)
    check(mpi_tmp_path, "d.jsonl", GOOD["some_ids_and_overrides"])


def test_gather_in_rounds(mpi_tmp_path, monkeypatch):
    """Messages larger than a round (MPI counts are C ints: at most 1 GiB a round) arrive whole."""
    comm, rank, size = comm_info()
    payload = bytes([rank]) * (rank * 37 + 5)
    for round_bytes in (1, 10, 64, 1 << 30):
        got = _mpi.gather_bytes_in_rounds(payload, comm, round_bytes)
        assert got == ([bytes([r]) * (r * 37 + 5) for r in range(size)] if rank == 0 else None)
    monkeypatch.setattr("mpiswarm._mpi.GATHER_ROUND_BYTES", 100)  # the reader's messages in many rounds
    check(mpi_tmp_path, "r.jsonl", GOOD["some_ids_and_overrides"])


@pytest.mark.parametrize("name, data", [("bom.jsonl", "\ufeff" + GOOD["ids"]), ("bom.txt", "\ufeffline 1\nline 2\n"),
                                        ("bom_only.jsonl", "\ufeff")])
def test_byte_order_mark_at_the_start(mpi_tmp_path, name, data):
    """Issue 16, item 3: a UTF-8 BOM at the start is accepted, and not part of the first prompt."""
    serial = check(mpi_tmp_path, name, data)
    assert serial[0] != "error" and all(not p.startswith("\ufeff") for p in serial[0])
