"""Input parsing and validation (tier 1: no MPI)."""
import json

import pytest

from mpiswarm.inputs import InputError, read_prompts, validate_sampling


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_plain_rows_ids_and_overrides(tmp_path):
    path = write(tmp_path, "in.jsonl", jsonl([
        {"prompt": "a"},
        {"prompt": "b", "custom_id": "x", "max_tokens": 5, "stop": "\n"},
        {"prompt": "ü ☃", "gene": "BRCA1"},
    ]))
    ps = read_prompts(path)
    assert ps.prompts == ["a", "b", "ü ☃"]
    assert ps.custom_ids == ["0", "x", "2"]
    assert ps.overrides[0] == ""
    assert json.loads(ps.overrides[1]) == {"max_tokens": 5, "stop": ["\n"]}
    assert ps.fields == [{}, {"max_tokens": 5, "stop": "\n"}, {"gene": "BRCA1"}]


def test_openai_batch_rows(tmp_path):
    path = write(tmp_path, "in.jsonl", jsonl([
        {"custom_id": "r1", "method": "POST", "url": "/v1/completions",
         "body": {"model": "m", "prompt": "hello", "max_tokens": 7, "temperature": 0}},
        {"custom_id": "r2", "method": "POST", "url": "/v1/completions", "body": {"prompt": "bye"}},
    ]))
    ps = read_prompts(path)
    assert ps.prompts == ["hello", "bye"]
    assert ps.custom_ids == ["r1", "r2"]
    assert json.loads(ps.overrides[0]) == {"max_tokens": 7, "temperature": 0, "model": "m"}  # a row's model is its own
    assert ps.overrides[1] == ""


def test_txt_one_prompt_a_line_blank_lines_skipped(tmp_path):
    ps = read_prompts(write(tmp_path, "in.txt", "one\n\ntwo\r\nthree"))
    assert ps.prompts == ["one", "two", "three"]
    assert ps.custom_ids == ["0", "1", "2"]


def test_blank_jsonl_lines_are_skipped(tmp_path):
    ps = read_prompts(write(tmp_path, "in.jsonl", '{"prompt": "a"}\n\n   \n{"prompt": "b"}\n'))
    assert ps.prompts == ["a", "b"]


@pytest.mark.parametrize("text, line, words", [
    ('{"prompt": "a"}\n{not json\n', 2, "not valid JSON"),
    ('{"prompt": "a"}\n{"text": "b"}\n', 2, "no 'prompt'"),
    ('{"prompt": 3}\n', 1, "must be a string"),
    ('{"prompt": "a", "custom_id": "k"}\n{"prompt": "b", "custom_id": "k"}\n', 2, "duplicate custom_id 'k' (first on line 1)"),
    ('["a"]\n', 1, "expected a JSON object"),
    ('{"prompt": "a", "max_tokens": 0}\n', 1, "'max_tokens' must be an integer >= 1"),
    ('{"prompt": "a", "temperature": "hot"}\n', 1, "'temperature' must be a number"),
    ('{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {"prompt": "a"}}\n', 1, "'url' must be"),
    ('{"custom_id": "x", "body": {"input": "a"}}\n', 1, "has no 'prompt'"),
    ('{"prompt": "\\ud800"}\n', None, "lone surrogate"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, "in.jsonl", text)
    with pytest.raises(InputError) as info:
        read_prompts(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path) + (f":{line}:" if line else ":"))
    assert words in message


def test_default_id_must_not_repeat_an_explicit_one(tmp_path):
    path = write(tmp_path, "in.jsonl", '{"prompt": "a", "custom_id": "1"}\n{"prompt": "b"}\n')
    with pytest.raises(InputError, match="prompt 1 has no custom_id and its default id '1' repeats"):
        read_prompts(path)
    ps = read_prompts(write(tmp_path, "ok.jsonl", '{"prompt": "a", "custom_id": 7}\n{"prompt": "b"}\n'))
    assert ps.custom_ids == ["7", "1"]


def test_invalid_utf8(tmp_path):
    with pytest.raises(InputError, match=r"in.txt:2: not valid UTF-8"):
        read_prompts(write(tmp_path, "in.txt", b"ok\n\xff\xfe\n"))
    with pytest.raises(InputError, match=r"in.jsonl:1: not valid"):
        read_prompts(write(tmp_path, "in.jsonl", b'{"prompt": "\xff"}\n'))


def test_missing_file_and_format(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_prompts(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="unsupported input format '.csv'"):
        read_prompts(write(tmp_path, "in.csv", "a"))


def test_empty_file_is_an_empty_prompt_set(tmp_path):
    assert len(read_prompts(write(tmp_path, "in.jsonl", ""))) == 0


def test_validate_sampling():
    assert validate_sampling({"stop": "x", "seed": None, "n": 2}) == {"stop": ["x"], "n": 2}
    for bad in ({"n": 0}, {"top_p": 1.5}, {"stop": [""]}, {"max_tokens": True}, {"bogus": 1}):
        with pytest.raises(ValueError):
            validate_sampling(bad)


@pytest.mark.parametrize("values, message", [
    # vLLM 0.32.0 vllm/sampling_params.py: _verify_args and _verify_greedy_sampling
    ({"n": 2, "temperature": 0}, "'n' must be 1 when using greedy sampling ('temperature' 0), got 2"),
    ({"top_p": 0}, "'top_p' must be a number in (0, 1]"),
    ({"top_p": 1.01}, "'top_p' must be a number in (0, 1]"),
    ({"temperature": 2.5}, "'temperature' must be a number in [0, 2]"),
    ({"temperature": 100}, "'temperature' must be a number in [0, 2]"),
    ({"temperature": -0.1}, "'temperature' must be a number in [0, 2]"),
    ({"n": 16385}, "'n' must be an integer in [1, 16384]"),
    ({"seed": 2**63}, "'seed' must be an integer in [-9223372036854775808, 9223372036854775807]"),
    ({"max_tokens": 0}, "'max_tokens' must be an integer >= 1"),
    ({"stop": ["a", ""]}, "'stop' must be a non-empty string"),
])
def test_sampling_refused_as_vllm_refuses_it(values, message):
    with pytest.raises(ValueError) as err:
        validate_sampling(values)
    assert message in str(err.value)


def test_sampling_vllm_accepts():
    for values in ({"n": 2, "temperature": 0.001}, {"temperature": 2, "top_p": 1}, {"temperature": 0, "n": 1},
                   {"seed": -(2**63)}, {"seed": -1}, {"n": 16384}):
        assert validate_sampling(values) == values


def test_command_line_sampling_errors_name_the_option():
    from mpiswarm.cli import build_parser, config_from_args

    def refused(*extra):
        with pytest.raises(InputError) as err:
            config_from_args(build_parser().parse_args(["run", "in.jsonl", "-o", "o.h5", "--model", "m", *extra]))
        return str(err.value)

    assert refused("--n", "2", "--temperature", "0") == (
        "command line: --n must be 1 when using greedy sampling (--temperature 0), got 2")
    assert refused("--top-p", "0") == "command line: --top-p must be a number in (0, 1] (vLLM's range), got 0.0"
    assert refused("--temperature", "3") == (
        "command line: --temperature must be a number in [0, 2] (vLLM's range), got 3.0")


def test_rows_refused_with_the_command_lines_sampling(tmp_path):
    """A row's own values combined with the command line's: the line and where each came from."""
    from mpiswarm.inputs import check_row_sampling

    path = write(tmp_path, "in.jsonl", '{"prompt": "a"}\n\n{"prompt": "b", "n": 3}\n{"prompt": "c", "temperature": 0}\n')
    prompt_set = read_prompts(path)
    check_row_sampling(prompt_set, {"n": 1, "temperature": 0.7})
    with pytest.raises(InputError) as err:
        check_row_sampling(prompt_set, {"n": 2, "temperature": 0.7})
    assert str(err.value) == (f"{path}:4: --n (command line) must be 1 when using greedy sampling ('temperature' 0), "
                              "got 2")
    with pytest.raises(InputError) as err:
        check_row_sampling(prompt_set, {"n": 1, "temperature": 0})
    assert str(err.value) == (f"{path}:3: 'n' must be 1 when using greedy sampling (--temperature (command line) 0), "
                              "got 3")
    with pytest.raises(InputError, match=r"in.jsonl:1: 'n' must be 1 when using greedy sampling"):
        read_prompts(write(tmp_path, "in.jsonl", '{"prompt": "a", "n": 2, "temperature": 0}\n'))


@pytest.mark.parametrize("name", ["in.jsonl", "in.txt"])
def test_byte_order_mark_at_the_start_is_not_part_of_the_first_prompt(tmp_path, name):
    """Issue 16, item 3: what many Windows tools write before the first line."""
    body = jsonl([{"prompt": "first"}, {"prompt": "second \ufeff"}]) if name.endswith("jsonl") else "first\nsecond \ufeff\n"
    ps = read_prompts(write(tmp_path, name, b"\xef\xbb\xbf" + body.encode("utf-8")))
    assert ps.prompts == ["first", "second \ufeff"]  # a BOM elsewhere is text like any other
    bad = write(tmp_path, "bad.jsonl", b"\xef\xbb\xbf" + b'{"prompt": "a"}\n{"prompt": \xff}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid UTF-8 \(invalid start byte at byte 30\)"):
        read_prompts(bad)
