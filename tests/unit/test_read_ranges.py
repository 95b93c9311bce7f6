"""Line-aligned byte ranges, parsing a file in parts and the blocked digest (tier 1: no MPI).

Parsing a file range by range and merging the parts must give exactly what ``read_prompts``
gives — the same prompt set, or the same first error with the same message.
"""
import hashlib
import json
import struct

import pytest

from mpiswarm import inputs
from mpiswarm.inputs import (InputError, _filler, blocked_sha256, line_aligned_ranges, merge_parts, parse_range,
                             read_prompts)


def jsonl(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


TEXTS = {
    "empty": b"",
    "one_line_no_newline": b'{"prompt": "a"}',
    "no_trailing_newline": b'{"prompt": "a"}\n{"prompt": "b"}',
    "crlf": b'{"prompt": "a"}\r\n{"prompt": "b"}\r\n\r\n{"prompt": "c"}\r\n',
    "blank_lines": b'\n\n{"prompt": "a"}\n  \n\n{"prompt": "b"}\n\n',
    "only_newlines": b"\n\n\n",
    "one_long_line": b'{"prompt": "' + b"x" * 500 + b'"}\n{"prompt": "y"}\n',
    "unicode": jsonl([{"prompt": "é☃🧬" * (i + 1)} for i in range(20)]).encode(),
}


def check_ranges(data: bytes, n_parts: int):
    ranges = line_aligned_ranges(data, n_parts)
    assert len(ranges) == n_parts
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    for (a, b), (c, _) in zip(ranges, ranges[1:]):
        assert a <= b == c  # consecutive, in order, covering the file exactly
    for a, _ in ranges:
        assert a == 0 or a == len(data) or data[a - 1:a] == b"\n"  # never inside a line
    assert b"".join(data[a:b] for a, b in ranges) == data
    return ranges


@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize("n_parts", [1, 2, 3, 4, 7, 64])
def test_ranges_cover_the_file_and_never_cut_a_line(name, n_parts):
    check_ranges(TEXTS[name], n_parts)


def test_more_parts_than_lines_and_parts_without_a_line():
    data = b'{"prompt": "' + b"x" * 1000 + b'"}\n{"prompt": "y"}\n'
    ranges = check_ranges(data, 8)
    empty = [r for r in ranges if r[0] == r[1]]
    assert empty  # the long first line swallows the shares of several parts
    assert ranges[0] == (0, data.index(b"\n") + 1) or ranges[0][1] == len(data)
    assert [r for r in check_ranges(b"a\n", 5) if r[0] != r[1]] == [(0, 2)]  # one line, five parts: one gets it
    assert check_ranges(b"", 3) == [(0, 0)] * 3


def test_ranges_of_a_file_equal_those_of_its_bytes(tmp_path):
    data = TEXTS["unicode"] * 50
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    for n in (1, 3, 10):
        assert line_aligned_ranges(path, n) == line_aligned_ranges(data, n)


def test_probe_past_a_line_longer_than_one_read(monkeypatch):
    monkeypatch.setattr(inputs, "_PROBE_BYTES", 7)
    data = b"a" * 100 + b"\n" + b"b" * 50 + b"\nc\n"
    assert [a for a, _ in check_ranges(data, 4)] == [0, 101, 101, 152]


def parse_in_parts(path, data: bytes, n_parts: int, suffix=".jsonl", template=None, prompt_format=None):
    """What the collective reader does, in one process."""
    fill = _filler(template)
    parts, lineno = [], 1
    for a, b in line_aligned_ranges(data, n_parts):
        parts.append(parse_range(str(path), data[a:b], lineno, suffix, fill, prompt_format=prompt_format, offset=a))
        lineno += data.count(b"\n", a, b)
    return merge_parts(str(path), parts)


def outcome(f):
    try:
        ps = f()
    except InputError as exc:
        return ("error", str(exc))
    return (ps.prompts, ps.custom_ids, ps.overrides, ps.fields)


GOOD = {
    "plain": jsonl([{"prompt": f"p{i}"} for i in range(30)]),
    "ids_and_overrides": jsonl([{"prompt": f"p{i}", "custom_id": f"c{i}", "max_tokens": i + 1} if i % 3
                                else {"prompt": f"p{i}"} for i in range(30)]),
    "fields_late": jsonl([{"prompt": f"p{i}"} for i in range(20)] + [{"prompt": "x", "gene": "G"}]),
    "batch": jsonl([{"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                     "body": {"prompt": f"b{i}", "temperature": 0}} for i in range(12)]),
    "unicode_blank_crlf": ("\r\n\n".join(json.dumps({"prompt": "☃é" * i}) for i in range(25)) + "\r\n"),
    "numeric_ids_no_clash": jsonl([{"prompt": "a", "custom_id": 7}, {"prompt": "b"}, {"prompt": "c", "custom_id": "01"}]),
}

BAD = {
    "bad_json_late": GOOD["plain"] + '{"prompt": \n',
    "duplicate_far_apart": jsonl([{"prompt": "a", "custom_id": "k"}] + [{"prompt": "x"}] * 40
                                 + [{"prompt": "b", "custom_id": "k"}]),
    "duplicate_before_bad_json": jsonl([{"prompt": "a", "custom_id": "k"}, {"prompt": "b", "custom_id": "k"}]
                                       + [{"prompt": "x"}] * 30) + "{nope\n",
    "bad_json_before_duplicate": "{nope\n" + jsonl([{"prompt": "x"}] * 30 + [{"prompt": "a", "custom_id": "k"},
                                                                             {"prompt": "b", "custom_id": "k"}]),
    "default_id_clash": jsonl([{"prompt": "x"}] * 30 + [{"prompt": "a", "custom_id": "3"}]),
    "surrogate_late": GOOD["plain"] + '{"prompt": "\\ud800"}\n',
    "surrogate_and_clash": jsonl([{"prompt": "\ud800"}] * 0 + [{"prompt": "x"}] * 10
                                 + [{"prompt": "a", "custom_id": "4"}]) + '{"prompt": "\\udc00"}\n',
    "not_object": GOOD["plain"] + "[1]\n",
    "missing_prompt": GOOD["plain"] + '{"text": 1}\n',
    "bad_override": GOOD["plain"] + '{"prompt": "a", "top_p": 3}\n',
    "bad_custom_id": GOOD["plain"] + '{"prompt": "a", "custom_id": [1]}\n',
}

BAD_BYTES = {
    "utf8_after_bad_json": b'{"prompt": "a"}\n' * 10 + b"{bad\n" + b'{"prompt": "a"}\n' * 10 + b'{"prompt": "\xff"}\n',
    "utf8_before_bad_json": b'{"prompt": "a"}\n' * 10 + b'{"prompt": "\xe2\x82"}\n' + b"{bad\n" * 10,
    "utf8_after_duplicate": (jsonl([{"prompt": "a", "custom_id": "k"}] * 2 + [{"prompt": "x"}] * 20).encode()
                             + b'{"prompt": "\xff"}\n'),
}


@pytest.mark.parametrize("name", sorted(GOOD) + sorted(BAD) + sorted(BAD_BYTES))
@pytest.mark.parametrize("n_parts", [1, 2, 3, 5, 16])
def test_parts_merged_equal_read_prompts(tmp_path, name, n_parts):
    data = BAD_BYTES[name] if name in BAD_BYTES else (GOOD.get(name) or BAD[name]).encode("utf-8", "surrogatepass")
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    serial = outcome(lambda: read_prompts(path))
    assert outcome(lambda: parse_in_parts(path, data, n_parts)) == serial
    assert (serial[0] == "error") == (name not in GOOD)


@pytest.mark.parametrize("kwargs", [{"template": "{gene} in {organism}"}, {"prompt_format": "<u>{prompt}</u>"},
                                    {"template": "[{custom_id}] {gene}", "prompt_format": "<{prompt}>"}])
@pytest.mark.parametrize("n_parts", [1, 4, 9])
def test_templates_and_formats_in_parts(tmp_path, kwargs, n_parts):
    rows = [{"gene": f"g{i}", "organism": "ü", "custom_id": f"c{i}", "prompt": "p"} for i in range(20)]
    rows[13] = {"gene": "late", "prompt": "p"}  # no organism, no custom_id
    data = jsonl(rows).encode()
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    serial = outcome(lambda: read_prompts(path, **kwargs))
    assert outcome(lambda: parse_in_parts(path, data, n_parts, **kwargs)) == serial


@pytest.mark.parametrize("text", ["one\n\ntwo\r\nthree", "", "\n\n", "é\n" * 40, "a\nb\n" * 10])
@pytest.mark.parametrize("template", [None, "Q: {prompt}", "{gene}"])
@pytest.mark.parametrize("n_parts", [1, 2, 6])
def test_txt_in_parts(tmp_path, text, template, n_parts):
    path = tmp_path / "in.txt"
    path.write_text(text, encoding="utf-8")
    serial = outcome(lambda: read_prompts(path, template=template))
    assert outcome(lambda: parse_in_parts(path, text.encode(), n_parts, ".txt", template)) == serial


def test_invalid_utf8_names_the_byte_of_the_file(tmp_path):
    data = b"ok\n" * 50 + b"bad \xff\n" + b"ok\n"
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    message = f"{path}:51: not valid UTF-8 (invalid start byte at byte {150 + 4})"
    assert outcome(lambda: read_prompts(path)) == ("error", message)
    for n in (2, 7):
        assert outcome(lambda: parse_in_parts(path, data, n, ".txt")) == ("error", message)


def test_first_problem_in_file_order_wins_over_invalid_utf8(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{bad\n{"prompt": "\xff"}\n')
    with pytest.raises(InputError, match=r"in.jsonl:2: not valid JSON"):
        read_prompts(path)


def test_blocked_digest(monkeypatch):
    monkeypatch.setattr(inputs, "DIGEST_BLOCK_BYTES", 10)
    data = bytes(range(256)) * 3 + b"tail"
    blocks = [data[i:i + 10] for i in range(0, len(data), 10)]
    expected = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blocks)
                              + struct.pack("<Q", len(data))).hexdigest()
    assert blocked_sha256(data) == expected
    assert blocked_sha256(b"") == hashlib.sha256(struct.pack("<Q", 0)).hexdigest()
    # ranges that do not end on block boundaries: each digests the blocks that begin in it
    for cuts in ([0, 3, 25, 26, 400, len(data)], [0, 10, 20, len(data)], [0, len(data)]):
        digests = []
        for a, b in zip(cuts, cuts[1:]):
            digests += inputs.block_digests(data[a:b], a, b, len(data), lambda at, n: data[at:at + n])
        assert inputs.combine_digests(digests, len(data)) == expected


def test_read_prompts_sets_the_blocked_digest(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(GOOD["plain"])
    assert read_prompts(path).sha256 == blocked_sha256(path.read_bytes())
    assert read_prompts(path).sha256 != hashlib.sha256(path.read_bytes()).hexdigest()
