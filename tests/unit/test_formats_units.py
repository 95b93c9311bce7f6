"""The pure parts of map templates, prompt formats, reasoning columns and ``--max-tokens auto``
(tier 1: no MPI)."""
import json

import h5py
import numpy as np
import pytest

from mpiswarm.balance import Chunk
from mpiswarm.budget import NO_ROOM, TokenBudget, estimate_tokens, quantize_budget
from mpiswarm.checkpoint import ShardWriter, decode_records, encode_record, load_finished, shard_path
from mpiswarm.cli import build_parser, config_from_args
from mpiswarm.client import place_chat
from mpiswarm.control import WorkSource
from mpiswarm.inputs import InputError, read_prompts
from mpiswarm.records import ResultColumns
from mpiswarm.sim import SimConfig, split_reasoning
from mpiswarm.store import create_result_file, iter_rows, read_info, read_results
from mpiswarm.template import compile_template, format_prompt, format_prompts, render, unescape


# --------------------------------------------------------------------------- templates


def test_compile_template_fills_like_render():
    template = 'Gene {gene} ({count}) in {organism}: {{"json": {gene}}} {not a placeholder}'
    values = {"gene": "BRCA1", "organism": "human", "count": 3}
    fill = compile_template(template)
    assert fill(values) == render(template, values) == \
        'Gene BRCA1 (3) in human: {"json": BRCA1} {not a placeholder}'
    assert compile_template("{a}{b}{a}", convert=json.dumps)({"a": [1], "b": None}) == "[1]null[1]"
    assert compile_template("no placeholders {{}}")({}) == "no placeholders {}"
    with pytest.raises(KeyError, match="organism"):
        fill({"gene": "x", "count": 1})


def test_unescape_reads_what_a_shell_passes_literally():
    assert unescape(r"<|user|>\n{prompt}\t\\n") == "<|user|>\n{prompt}\t\\n"
    assert unescape(r"C:\path \alpha") == r"C:\path \alpha"  # other backslashes stay
    assert unescape("real\nnewline") == "real\nnewline"


def test_format_prompts():
    fmt = "<|user|>\n{prompt}<|end|>\n<|assistant|>\n"
    assert format_prompts(fmt, ["a", "{b}"]) == ["<|user|>\na<|end|>\n<|assistant|>\n",
                                                 "<|user|>\n{b}<|end|>\n<|assistant|>\n"]
    assert format_prompt("{prompt} / {prompt} {{x}}", "q") == "q / q {x}"
    assert format_prompts(None, ["a"]) == ["a"]
    with pytest.raises(ValueError, match=r"--prompt-format: must contain \{prompt\}"):
        format_prompt("<|user|>", "q")
    with pytest.raises(ValueError, match=r"unknown placeholder \{user\}"):
        format_prompt("{user}{prompt}", "q")


# --------------------------------------------------------------------------- inputs


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_map_template_rows_need_no_prompt(tmp_path):
    path = write(tmp_path, "in.jsonl", "\n".join([
        json.dumps({"gene": "BRCA1", "organism": "human"}),
        "",
        json.dumps({"gene": "TP53", "organism": "mouse", "custom_id": "tp", "max_tokens": 5, "prompt": "p"}),
        json.dumps({"gene": 7, "organism": {"genus": "Mus"}, "n": 2}),
        json.dumps({"custom_id": "b1", "method": "POST", "url": "/v1/completions",
                    "body": {"gene": "G", "organism": "fly", "temperature": 0}}),
    ]) + "\n")
    ps = read_prompts(path, template="{gene} in {organism}")
    assert ps.prompts == ["BRCA1 in human", "TP53 in mouse", '7 in {"genus": "Mus"}', "G in fly"]
    assert ps.custom_ids == ["0", "tp", "2", "b1"]
    assert [json.loads(o) if o else {} for o in ps.overrides] == [{}, {"max_tokens": 5}, {"n": 2},
                                                                  {"temperature": 0}]
    assert ps.fields[0] == {"gene": "BRCA1", "organism": "human"}
    # {prompt} and {custom_id} are fields like the others
    with pytest.raises(InputError, match=r"in.jsonl:1: this row has no field \{custom_id\}"):
        read_prompts(path, template="[{custom_id}] {gene}")
    with pytest.raises(InputError, match=r"in.jsonl:1: this row has no field \{prompt\}"):
        read_prompts(path, template="{prompt}")


def test_template_then_format_and_txt_input(tmp_path):
    path = write(tmp_path, "in.txt", "\n\nfirst\nsecond ☃\n")
    ps = read_prompts(path, template="Q: {prompt}", prompt_format="<|user|>{prompt}<|end|>")
    assert ps.prompts == ["<|user|>Q: first<|end|>", "<|user|>Q: second ☃<|end|>"]
    with pytest.raises(InputError, match=r"in.txt:3: this row has no field \{gene\}"):
        read_prompts(path, template="{gene}")


def test_missing_field_names_the_line_after_blank_lines(tmp_path):
    rows = [{"gene": "a", "organism": "b"}] * 3 + [{"gene": "c"}]
    path = write(tmp_path, "in.jsonl", "\n\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(InputError) as info:
        read_prompts(path, template="{gene} {organism}")
    assert str(info.value) == f"{path}:7: this row has no field {{organism}} for the template"


def test_without_template_a_prompt_is_still_required(tmp_path):
    path = write(tmp_path, "in.jsonl", '{"gene": "a"}\n')
    with pytest.raises(InputError, match="in.jsonl:1: no 'prompt' field"):
        read_prompts(path)


@pytest.mark.parametrize("kwargs, words", [
    ({"prompt_format": "no placeholder"}, "--prompt-format: must contain {prompt}"),
    ({"prompt_format": "{prompt}{x}"}, "--prompt-format: unknown placeholder {x}"),
    ({"template": "bad \udcff"}, "--template: not valid UTF-8"),
])
def test_bad_prompt_options(tmp_path, kwargs, words):
    path = write(tmp_path, "in.jsonl", '{"prompt": "a"}\n')
    with pytest.raises(InputError) as info:
        read_prompts(path, **kwargs)
    assert words in str(info.value)


def test_formatted_prompts_are_what_is_stored(tmp_path):
    path = write(tmp_path, "in.jsonl", '{"prompt": "a"}\n{"prompt": "b", "custom_id": "x"}\n')
    ps = read_prompts(path, prompt_format="[INST] {prompt} [/INST]")
    assert ps.prompts == ["[INST] a [/INST]", "[INST] b [/INST]"] and ps.custom_ids == ["0", "x"]


# --------------------------------------------------------------------------- command line


def parse(*extra):
    return config_from_args(build_parser().parse_args(["run", "in.jsonl", "-o", "o.h5", "--model", "m", *extra]))


def test_command_line_options_reach_run_config():
    config = parse("--template", r"Gene {gene}\n", "--prompt-format", r"<|user|>\n{prompt}\n",
                   "--max-tokens", "auto", "--max-tokens-cap", "512")
    p = config.prompts
    assert p.template == "Gene {gene}\n" and p.prompt_format == "<|user|>\n{prompt}\n"
    assert p.max_tokens_auto and p.max_tokens_cap == 512 and "max_tokens" not in p.sampling
    options = config.answer_options()
    assert options["template"] == p.template and options["max_tokens_auto"]
    assert config.params()["prompt_format"] == p.prompt_format
    plain = parse().prompts
    assert plain.sampling["max_tokens"] == 256 and not plain.max_tokens_auto and plain.template is None
    assert parse("--template", "x").answer_options() != parse().answer_options()  # a resume must match it


def test_command_line_refusals():
    with pytest.raises(InputError, match="--max-tokens-cap needs --max-tokens auto"):
        parse("--max-tokens-cap", "5")
    with pytest.raises(InputError, match="--prompt-format: must contain"):
        parse("--prompt-format", "<|user|>")
    with pytest.raises(SystemExit):
        parse("--max-tokens", "lots")


# --------------------------------------------------------------------------- budgets


def test_quantize_budget():
    assert [quantize_budget(t) for t in (-3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 100, 1000)] == \
        [0, 0, 1, 2, 3, 4, 4, 6, 6, 8, 8, 12, 96, 768]
    for t in range(1, 5000):
        q = quantize_budget(t)
        assert q <= t and q > t * 2 / 3 - 1e-9


def test_token_budget_per_prompt():
    budget = TokenBudget(max_model_len=100, margin=10)
    assert estimate_tokens("x" * 30) == 10
    assert budget.for_prompt("x" * 30) == 64  # room 80 -> 64
    assert budget.for_prompt("x" * 3) == 64  # room 89 -> 64 (1.5 * 64 = 96 is too much)
    assert budget.for_prompt("x" * 120) == 48  # room 50 -> 48
    assert budget.for_prompt("x" * 270) == 0 == NO_ROOM  # room 0
    assert budget.for_prompt("x" * 300) == NO_ROOM
    capped = TokenBudget(max_model_len=100, cap=50, margin=10)
    assert capped.for_prompt("x" * 3) == 50 and capped.for_prompt("x" * 30) == 50
    assert capped.for_prompt("x" * 150) == 32  # room 40 < cap -> 32
    assert "about 100 tokens" in budget.no_room("x" * 300) and "max_model_len 100" in budget.no_room("x" * 300)


def test_budget_overrides_merge_and_row_settings_win():
    budget = TokenBudget(max_model_len=100, margin=10)
    prompts = ["x" * 3, "x" * 3, "x" * 120, "x" * 120, "x" * 300, "x" * 3]
    overrides = ["", '{"seed":1}', "", '{"max_tokens":7}', "", '{"max_completion_tokens":5}']
    out = budget.overrides(prompts, overrides)
    assert [json.loads(o) for o in out] == [{"max_tokens": 64}, {"max_tokens": 64, "seed": 1}, {"max_tokens": 48},
                                            {"max_tokens": 7}, {"max_tokens": 0}, {"max_completion_tokens": 5}]
    assert out[0] == '{"max_tokens":64}' and out[1] == '{"max_tokens":64,"seed":1}'  # canonical JSON


def test_work_source_plans_rows_of_one_budget_into_one_call():
    budget = TokenBudget(max_model_len=100, margin=10)
    prompts = ["x" * 3, "x" * 120, "x" * 3, "x" * 120, "x" * 3]
    source = WorkSource(batch_size=None, concurrency=2, cap=None, prepare=budget.apply)
    source.add(Chunk.new(np.arange(5), prompts, [""] * 5, 1, 0))
    plans = [source.queue.take(100) for _ in range(2)]
    assert [(list(p.rows), json.loads(p.overrides)) for _, p in plans] == [
        ([0, 2, 4], {"max_tokens": 64}), ([1, 3], {"max_tokens": 48})]
    assert source.queue.take(1) is None


# --------------------------------------------------------------------------- reasoning


def chat_reply(messages):
    return {"choices": [{"index": j, "message": m, "finish_reason": "stop"} for j, m in enumerate(messages)],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4}}


def test_place_chat_reasoning_keys():
    res = ResultColumns.pending(np.arange(3), n=2, rank=0)
    place_chat(chat_reply([{"content": "a"}, {"content": "b"}]), 0, 2, res, 0.1)
    assert res.reasoning is None  # no reasoning: no column
    place_chat(chat_reply([{"content": None, "reasoning_content": "think"},
                           {"content": "x", "reasoning": "new key", "reasoning_content": "new key"}]), 1, 2, res, 0.1)
    place_chat(chat_reply([{"content": "", "reasoning": None}, {"content": "y"}]), 2, 2, res, 0.1)
    assert res.ok.all() and res.error == [""] * 3
    assert res.completion == ["a", "b", "", "x", "", "y"]
    assert res.reasoning == ["", "", "think", "new key", "", ""]
    res.fail([1], "gone")
    assert res.reasoning[2:4] == ["", ""] and res.completion[2:4] == ["", ""]


def test_reasoning_column_through_concat_take_and_order():
    plain = ResultColumns.pending(np.array([4, 1]), 1, 0)
    plain.completion[:] = ["p4", "p1"]
    thinking = ResultColumns.pending(np.array([3, 0]), 1, 1)
    thinking.set_reasoning(0, "r3")
    both = ResultColumns.concat([plain, thinking])
    assert both.reasoning == ["", "", "r3", ""]
    ordered = both.in_index_order()
    assert ordered.index.tolist() == [0, 1, 3, 4] and ordered.reasoning == ["", "", "r3", ""]
    assert ResultColumns.concat([plain, plain]).reasoning is None
    assert plain.take(np.array([1])).reasoning is None


def test_checkpoint_records_with_and_without_reasoning(tmp_path):
    res = ResultColumns.pending(np.array([5, 2, 8]), 2, rank=1)
    res.completion[:] = ["a", "b", "", "d", "e", "f"]
    res.answered([0, 1, 2])
    plain = encode_record(res, [0])  # before any reasoning: no reasoning block
    res.set_reasoning(2, "why ☃")
    with_reasoning = encode_record(res, [1, 2])
    assert len(with_reasoning) > len(encode_record(ResultColumns.pending(np.array([2, 8]), 2, 1), [0, 1]))
    records = decode_records(plain + with_reasoning)
    assert records[0].reasoning is None and records[1].reasoning == ["why ☃", "", "", ""]
    writer = ShardWriter(shard_path(str(tmp_path), 0, 0))
    writer.append(res, [0])
    writer.close()
    writer = ShardWriter(shard_path(str(tmp_path), 1, 0))
    writer.append(res, [1, 2])
    writer.close()
    loaded = load_finished(str(tmp_path), 2)
    assert loaded.index.tolist() == [2, 5, 8]
    assert loaded.reasoning == ["why ☃", "", "", "", "", ""]


def test_store_writes_reasoning_only_when_some_row_has_it(tmp_path):
    plain = ResultColumns.pending(np.arange(2), 1, 0)
    plain.answered([0, 1])
    with create_result_file(tmp_path / "plain.h5", 2) as out:
        out.write_rows(["p0", "p1"], ["0", "1"], plain)
    assert "reasoning" not in read_results(tmp_path / "plain.h5")
    first = ResultColumns.pending(np.arange(2), 2, 0)
    second = ResultColumns.pending(np.arange(2, 4), 2, 0)
    second.set_reasoning(3, "r3/1")
    with create_result_file(tmp_path / "r.h5", 4, 2) as out:  # a round without, then one with
        out.write_rows(["p"] * 4, list("0123"), first)
        out.write_rows(["p"] * 4, list("0123"), second)
    data = read_results(tmp_path / "r.h5")
    assert data["reasoning"].shape == (4, 2) and data["reasoning"].tolist() == [["", ""], ["", ""], ["", ""], ["", "r3/1"]]
    assert "reasoning" in read_info(tmp_path / "r.h5").columns
    assert [b["reasoning"].shape for _, b in iter_rows(tmp_path / "r.h5", chunk_rows=3)] == [(3, 2), (1, 2)]
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["reasoning"].dtype == f["completion"].dtype


def test_simulator_reasoning_split():
    assert split_reasoning("a b c d e", "split") == ("a b c", "d e")
    assert split_reasoning("one", "split") == ("one", None)
    assert split_reasoning("a b", "only") == ("a b", None)
    assert split_reasoning("a b", "none") == (None, "a b")
    with pytest.raises(ValueError, match="reasoning must be one of"):
        SimConfig(reasoning="maybe")
    with pytest.raises(ValueError, match="reasoning_field"):
        SimConfig(reasoning_field="thoughts")
