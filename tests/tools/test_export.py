"""``mpiswarm export``: every exported line or record against the HDF5 rows of real runs."""
from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys

import pytest
from openai.types import BatchError, Completion
from openai.types.chat import ChatCompletion

import mpiswarm.export as export_module
from mpiswarm.cli import main
from mpiswarm.export import export
from mpiswarm.store import is_unanswered, iter_rows, read_results

from ..conftest import subprocess_env
from .conftest import read_jsonl

FILES = ("plain", "n2", "chat", "incomplete")


def export_cli(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpiswarm", "export", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env())


def row_values(data, i):
    n = data["completion"].shape[1] if data["completion"].ndim == 2 else 1
    completion = data["completion"][i].tolist() if n > 1 else data["completion"][i]
    finish = data["finish_reason"][i].tolist() if n > 1 else data["finish_reason"][i]
    return n, completion, finish


@pytest.mark.parametrize("name", FILES)
def test_jsonl_one_line_per_row_equal_to_the_file(results, tmp_path, name):
    run = results[name]
    out = tmp_path / "rows.jsonl"
    res = export_cli(run.path, "--format", "jsonl", "-o", out)
    assert res.returncode == 0, res.stderr
    text = out.read_text(encoding="utf-8")
    assert len(text.splitlines()) == len(run.rows)  # no raw U+2028/U+0085 splitting a line
    lines = read_jsonl(text)
    data = read_results(run.path)
    assert [x["custom_id"] for x in lines] == [r["custom_id"] for r in run.rows]
    for i, x in enumerate(lines):
        n, completion, finish = row_values(data, i)
        assert x["prompt"] == run.rows[i]["prompt"] == data["prompt"][i]
        assert (x["completion"], x["finish_reason"]) == (completion, finish)
        assert (x["ok"], x["error"], x["rank"]) == (bool(data["ok"][i]), data["error"][i], int(data["rank"][i]))
        for key in ("prompt_tokens", "completion_tokens"):
            assert x[key] == (None if data[key][i] < 0 else int(data[key][i]))
        latency = data["latency_s"][i]
        assert x["latency_s"] == (None if math.isnan(latency) else float(latency))
        assert isinstance(x["completion"], list) == (n > 1)
    assert f"{len(run.rows):,} rows to" in res.stderr


@pytest.mark.parametrize("name", FILES)
def test_openai_batch_output_lines(results, tmp_path, name):
    run = results[name]
    out = tmp_path / "batch.jsonl"
    assert export_cli(run.path, "--format", "openai-batch", "-o", out).returncode == 0
    lines = read_jsonl(out.read_text(encoding="utf-8"))
    data = read_results(run.path)
    chat = data["attrs"]["params"]["api"] == "chat"
    assert [x["custom_id"] for x in lines] == [r["custom_id"] for r in run.rows]
    assert len({x["id"] for x in lines}) == len(lines)
    for i, x in enumerate(lines):
        assert set(x) == {"id", "custom_id", "response", "error"}
        assert x["id"].startswith("batch_req_") and len(x["id"]) == len("batch_req_") + 24
        n, completion, finish = row_values(data, i)
        texts, reasons = (completion, finish) if n > 1 else ([completion], [finish])
        if data["ok"][i]:
            assert x["error"] is None
            response = x["response"]
            assert response["status_code"] == 200 and len(response["request_id"]) == 32
            body = response["body"]
            assert body["model"] == "sim-model" and isinstance(body["created"], int)
            if chat:  # the SDK's own types accept the body
                assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
                parsed = ChatCompletion.model_validate(body)
                assert [c.message.content for c in parsed.choices] == texts
                assert [c.message.role for c in parsed.choices] == ["assistant"] * n
            else:
                assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
                parsed = Completion.model_validate(body)
                assert [c.text for c in parsed.choices] == texts
            assert [c["index"] for c in body["choices"]] == list(range(n))
            assert [c["finish_reason"] for c in body["choices"]] == reasons
            assert all(c["logprobs"] is None for c in body["choices"])
            if data["prompt_tokens"][i] >= 0:  # one prompt a call (chat): usage is the row's own
                p, c = int(data["prompt_tokens"][i]), int(data["completion_tokens"][i])
                assert body["usage"] == {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
            else:  # a list call's usage is a sum over its prompts: unknown per prompt
                assert body["usage"] is None
        else:
            error = data["error"][i]
            BatchError.model_validate(x["error"])
            if error.startswith("HTTP 400"):
                assert x["response"]["status_code"] == 400 and len(x["response"]["request_id"]) == 32
                assert x["response"]["body"]["error"]["message"] == error.removeprefix("HTTP 400: ")
                assert x["response"]["body"]["error"]["type"] == "invalid_request_error"
                assert x["error"] == {"code": "context_length_exceeded", "message": error.removeprefix("HTTP 400: ")}
            else:
                assert is_unanswered(data["error_kind"][i])
                assert x["response"] is None
                assert x["error"] == {"code": "batch_expired", "message": error}
    assert (name == "plain") == any(x["response"] and x["response"]["status_code"] == 400 for x in lines)
    assert (name == "incomplete") == any(x["response"] is None for x in lines)


def test_openai_batch_is_deterministic_and_splits_like_openai(results, tmp_path):
    path = results["plain"].path
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    export(path, "openai-batch", str(a))
    export(path, "openai-batch", str(b), chunk_rows=3)
    assert a.read_bytes() == b.read_bytes()
    ok, failed = tmp_path / "ok.jsonl", tmp_path / "failed.jsonl"
    assert export(path, "openai-batch", str(ok), rows="ok") == 119
    assert export(path, "openai-batch", str(failed), rows="failed") == 1
    everything = a.read_text(encoding="utf-8").splitlines()
    assert sorted(ok.read_text(encoding="utf-8").splitlines() + failed.read_text(encoding="utf-8").splitlines()) \
        == sorted(everything)
    assert json.loads(failed.read_text(encoding="utf-8"))["custom_id"] == "id-0037"


@pytest.mark.parametrize("name", FILES)
def test_csv_round_trips_through_the_csv_module(results, tmp_path, name):
    run = results[name]
    out = tmp_path / "rows.csv"
    assert export_cli(run.path, "--format", "csv", "-o", out).returncode == 0
    with open(out, newline="", encoding="utf-8") as fh:
        records = list(csv.reader(fh))
    data = read_results(run.path)
    n = data["completion"].shape[1] if data["completion"].ndim == 2 else 1
    head = records[0]
    if n == 1:
        assert head == ["custom_id", "prompt", "completion", "finish_reason", "ok", "error", "error_kind", "http_status", "chat",
                        "rank", "prompt_tokens", "completion_tokens", "latency_s"]
    else:
        assert head == ["custom_id", "prompt", "completion_0", "completion_1", "finish_reason_0", "finish_reason_1",
                        "ok", "error", "error_kind", "http_status", "chat", "rank", "prompt_tokens", "completion_tokens",
                        "latency_s"]
    body = records[1:]
    assert len(body) == len(run.rows)
    for i, rec in enumerate(body):
        row = dict(zip(head, rec))
        assert row["custom_id"] == run.rows[i]["custom_id"] and row["prompt"] == run.rows[i]["prompt"]
        texts = data["completion"][i].tolist() if n > 1 else [data["completion"][i]]
        reasons = data["finish_reason"][i].tolist() if n > 1 else [data["finish_reason"][i]]
        if n == 1:
            assert [row["completion"]] == texts and [row["finish_reason"]] == reasons
        else:
            assert [row[f"completion_{j}"] for j in range(n)] == texts
            assert [row[f"finish_reason_{j}"] for j in range(n)] == reasons
        assert row["ok"] == ("true" if data["ok"][i] else "false") and row["error"] == data["error"][i]
        assert int(row["rank"]) == data["rank"][i]
        for key in ("prompt_tokens", "completion_tokens"):
            assert row[key] == ("" if data[key][i] < 0 else str(data[key][i]))
        latency = data["latency_s"][i]
        assert (row["latency_s"] == "") if math.isnan(latency) else (float(row["latency_s"]) == latency)
    assert any("\n" in r["prompt"] for r in run.rows) and any('"' in r["prompt"] for r in run.rows)


def test_stdout_and_blocks(results, tmp_path):
    path = results["n2"].path
    res = export_cli(path, "--format", "jsonl", "-o", "-")
    assert res.returncode == 0 and res.stderr == ""
    file_out = tmp_path / "rows.jsonl"
    export(path, "jsonl", str(file_out), chunk_rows=1)
    assert res.stdout == file_out.read_text(encoding="utf-8")
    sizes = [len(block["ok"]) for _, block in iter_rows(path, chunk_rows=7)]
    assert max(sizes) == 7 and sum(sizes) == 40
    starts = [start for start, _ in iter_rows(path, chunk_rows=7)]
    assert starts == list(range(0, 40, 7))


def test_export_reads_one_block_at_a_time(results, tmp_path, monkeypatch):
    """No more than ``chunk_rows`` rows are held at once: the exporter sees blocks only."""
    seen = []
    real = export_module.iter_rows

    def spy(path, columns=None, chunk_rows=None):
        for start, block in real(path, chunk_rows=chunk_rows):
            seen.append(len(block["prompt"]))
            yield start, block

    monkeypatch.setattr(export_module, "iter_rows", spy)
    export(results["plain"].path, "csv", str(tmp_path / "x.csv"), chunk_rows=16)
    assert max(seen) == 16 and sum(seen) == 120


def test_failed_export_leaves_nothing_and_keeps_the_old_file(results, tmp_path, monkeypatch):
    out = tmp_path / "rows.jsonl"
    out.write_text("old\n")

    def broken(block, positions, n):
        yield "first line\n"
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "jsonl_lines", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export(results["plain"].path, "jsonl", str(out))
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_export_errors_exit_2(results, tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "x.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == f"mpiswarm: error: {tmp_path / 'missing.h5'}: no such file"
    assert main(["export", str(results["plain"].path), "-o", str(tmp_path / "no" / "x.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    path = str(results["plain"].path)
    assert main(["export", path, "-o", path]) == 2
    assert "the export would overwrite the result file" in capsys.readouterr().err
    assert read_results(path)["attrs"]["n_prompts"] == 120


def test_line_breaking_characters_stay_escaped(results):
    rows = results["plain"].rows
    assert any("\u2028" in r["prompt"] for r in rows) and any("\x85" in r["prompt"] for r in rows)
    text = io.StringIO()
    for _, block in iter_rows(results["plain"].path):
        text.writelines(export_module.jsonl_lines(block, range(len(block["ok"])), 1))
    assert "\u2028" not in text.getvalue() and "\x85" not in text.getvalue()
    assert len(text.getvalue().splitlines()) == 120


@pytest.mark.parametrize("message", [
    # older vLLM
    "This model's maximum context length is 512 tokens. However, you requested 610 tokens (600 in the messages, "
    "10 in the completion). Please reduce the length of the messages or completion.",
    # vLLM 0.32 (vllm/renderers/params.py, serve/utils/api_utils.py, v1/engine/input_processor.py)
    "This model's maximum context length is 512 tokens. However, your prompt contains at least 513 input tokens, "
    "which exceeds this limit even without any output tokens. Please reduce the length of the input prompt. "
    "(parameter=input_tokens, value=513)",
    "This model's maximum context length is 512 tokens. However, your prompt contains 2100 characters (more than "
    "2048 characters, which is the upper bound for 512 input tokens). Please reduce the length of the input prompt. "
    "(parameter=input_text, value=2100)",
    "Input length (600) exceeds model's maximum context length (512).",
    "The decoder prompt (length 512) plus the number of requested output tokens (at least 1) is longer than the "
    "maximum model length of 512. Make sure that `max_model_len` is no smaller than the number of text tokens.",
])
def test_context_length_errors_of_every_vllm_wording(message):
    from mpiswarm.errors import StatusError, kind_of
    from mpiswarm.export import error_object

    kind, status = kind_of(StatusError(400, message))  # where the row's error kind is set
    status, batch_error, body = error_object(f"HTTP 400: {message}", kind.label, status)
    assert status == 400 and batch_error["code"] == body["error"]["code"] == "context_length_exceeded"
