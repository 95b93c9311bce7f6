"""``mpiswarm preflight``: every problem it looks for is found and named on one line, and a
clean setup passes (tier 1: no MPI is initialised; the mpi4py look happens in a child Python)."""
import json
import os
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest

from mpiswarm import preflight
from mpiswarm.cli import main
from mpiswarm.launch import find_mpiexec

MODEL = "org/tiny-model"


def write_model(hf_home, *, config=None, files=("config.json", "tokenizer.json", "index", "shards")):
    """A Hugging Face cache entry as ALCF's /flare/datasets/model-weights/hub holds them:
    hub/models--org--tiny-model/{refs/main, snapshots/REV/...}."""
    repo = hf_home / "hub" / ("models--" + MODEL.replace("/", "--"))
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    if "config.json" in files:
        (snap / "config.json").write_text(json.dumps(config or {"max_position_embeddings": 4096}))
    if "tokenizer.json" in files:
        (snap / "tokenizer.json").write_text("{}")
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    if "index" in files:
        (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}))
    if "shards" in files:
        for s in shards:
            (snap / s).write_bytes(b"\0" * 16)
    return snap


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A clean job: valid input, an output directory outside $HOME, the weights, a walltime."""
    home = tmp_path / "home"
    home.mkdir()
    project = tmp_path / "project"
    project.mkdir()
    (project / "in.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(20)))
    hf = tmp_path / "model-weights"
    write_model(hf)
    monkeypatch.setenv("HOME", str(home))
    for name in ("PBS_WALLTIME", "HF_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    argv = ["preflight", str(project / "in.jsonl"), "-o", str(project / "out.h5"), "--model", MODEL,
            "--max-tokens", "64", "--time-limit", "3000", "--walltime", "01:00:00", "--load-time", "300",
            "--hf-home", str(hf), "--offline", "--max-model-len", "2048", "--mpiexec", find_mpiexec()]
    return {"argv": argv, "project": project, "hf": hf, "home": home, "tmp": tmp_path}


def run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr().out
    return code, out


def replace(argv, option, value):
    argv = list(argv)
    argv[argv.index(option) + 1] = value
    return argv


def problem_lines(out, kind="error"):
    return [line for line in out.splitlines() if line.startswith(f"mpiswarm preflight: {kind}: ")]


def test_a_clean_setup_passes(setup, capsys):
    code, out = run(capsys, setup["argv"])
    assert code == 0, out
    assert problem_lines(out) == [] and problem_lines(out, "warning") == []
    assert "input " in out and "20 prompts, valid" in out
    assert "config, tokenizer and weights in" in out
    assert "--max-model-len 2048 within the model's 4096 (max_position_embeddings)" in out
    assert "--time-limit 3000 s below the walltime 3600 s (from --walltime)" in out
    assert "mpi4py (MPICH" in out and f"matches {find_mpiexec()}" in out
    assert out.rstrip().endswith("nothing found that would doom the job")


def test_preflight_never_imports_mpi(setup):
    """MPI-free: the process running preflight never loads mpi4py.MPI (a child Python looks)."""
    code = ("import sys; from mpiswarm.cli import main; rc = main(sys.argv[1:]); "
            "assert 'mpi4py.MPI' not in sys.modules, 'mpi4py.MPI imported'; sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, *setup["argv"]], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_invalid_input_is_named_with_its_line(setup, capsys):
    bad = setup["project"] / "in.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 7}\n')
    code, out = run(capsys, setup["argv"])
    assert code == 2
    [line] = problem_lines(out)
    assert line.startswith(f"mpiswarm preflight: error: input: {bad}:2:") and "prompt" in line


def test_a_bad_run_option_is_one_line(setup, capsys):
    code, out = run(capsys, setup["argv"] + ["--max-tokens-cap", "5"])
    assert code == 2
    assert problem_lines(out) == ["mpiswarm preflight: error: command line: --max-tokens-cap needs --max-tokens auto"]


def test_output_directory_missing_or_under_home(setup, capsys):
    code, out = run(capsys, replace(setup["argv"], "-o", str(setup["tmp"] / "nowhere" / "out.h5")))
    assert code == 2
    assert problem_lines(out) == [f"mpiswarm preflight: error: output {setup['tmp']}/nowhere/out.h5: directory "
                                  f"{setup['tmp']}/nowhere does not exist"]
    code, out = run(capsys, replace(setup["argv"], "-o", str(setup["home"] / "out.h5")))
    assert code == 0  # a warning: the job can run, but the home quota is small
    [line] = problem_lines(out, "warning")
    assert f"output {setup['home']}/out.h5: under $HOME ({setup['home']})" in line and "50 GB" in line


def test_log_directory_under_home_is_a_warning(setup, capsys):
    code, out = run(capsys, setup["argv"] + ["--log-dir", str(setup["home"] / "mpiswarm-logs")])
    assert code == 0
    [line] = problem_lines(out, "warning")
    assert line.startswith(f"mpiswarm preflight: warning: log directory {setup['home']}/mpiswarm-logs: under $HOME")


def test_output_directory_read_only(setup, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    ro = setup["tmp"] / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    code, out = run(capsys, replace(setup["argv"], "-o", str(ro / "out.h5")))
    assert code == 2 and f"output {ro}/out.h5: cannot write in {ro}" in out


def test_no_room_for_the_expected_file(setup, capsys, monkeypatch):
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    code, out = run(capsys, setup["argv"])
    assert code == 2
    [line] = problem_lines(out)
    need = preflight.expected_bytes(20, sum(len(f"q{i}") for i in range(20)), 64, 1)
    assert f"0.00 GB free in {setup['project']}, the run may need about {need / 1e9:.2f} GB" in line


def test_hf_home_pointing_at_the_hub_directory(setup, capsys):
    code, out = run(capsys, replace(setup["argv"], "--hf-home", str(setup["hf"] / "hub")))
    assert code == 2
    [line] = problem_lines(out)
    assert f"HF_HOME={setup['hf']}/hub is itself a hub directory" in line
    assert f"set HF_HOME to {setup['hf']}" in line and "HF_HUB_OFFLINE=1" in line


@pytest.mark.parametrize("files, missing", [
    (("config.json", "index", "shards"), "tokenizer (tokenizer.json or tokenizer.model)"),
    (("tokenizer.json", "index", "shards"), "config.json"),
    (("config.json", "tokenizer.json", "shards"), "model.safetensors.index.json (or model.safetensors)"),
    (("config.json", "tokenizer.json", "index"), "model-00001-of-00002.safetensors, model-00002-of-00002.safetensors"),
])
def test_missing_weights_offline_is_an_error_online_a_warning(setup, capsys, files, missing):
    hf = setup["tmp"] / "partial"
    snap = write_model(hf, files=files)
    argv = replace(setup["argv"], "--hf-home", str(hf))
    code, out = run(capsys, argv)
    assert code == 2
    assert problem_lines(out) == [f"mpiswarm preflight: error: model {MODEL}: missing {missing} in {snap} "
                                  "(HF_HUB_OFFLINE=1: the servers cannot download it)"]
    argv.remove("--offline")
    code, out = run(capsys, argv)
    assert code == 0 and f"missing {missing}" in problem_lines(out, "warning")[0]


def test_model_not_in_the_cache(setup, capsys):
    code, out = run(capsys, replace(setup["argv"], "--model", "org/absent"))
    assert code == 2
    assert f"model org/absent: no {setup['hf']}/hub/models--org--absent (model org/absent is not in the Hugging " \
        f"Face cache of HF_HOME={setup['hf']})" in problem_lines(out)[0]


def test_max_model_len_and_max_tokens_against_the_config(setup, capsys):
    code, out = run(capsys, replace(setup["argv"], "--max-model-len", "8192"))
    assert code == 2
    [line] = problem_lines(out)
    assert line.startswith("mpiswarm preflight: error: --max-model-len 8192: more than the 4096 tokens")
    code, out = run(capsys, replace(setup["argv"], "--max-tokens", "2048"))
    assert code == 2
    assert problem_lines(out) == ["mpiswarm preflight: error: --max-tokens 2048: not below the servers' "
                                  "max_model_len 2048: every prompt would fail with HTTP 400"]


def test_derived_max_len_follows_rope_scaling():
    assert preflight.derived_max_len({"max_position_embeddings": 4096, "n_positions": 2048}) == (2048, "n_positions")
    assert preflight.derived_max_len({"max_position_embeddings": 4096,
                                      "rope_scaling": {"type": "linear", "factor": 2.0}})[0] == 8192
    assert preflight.derived_max_len({"max_position_embeddings": 131072,
                                      "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})[0] == 131072
    assert preflight.derived_max_len({"text_config": {"max_position_embeddings": 1024}})[0] == 1024
    assert preflight.derived_max_len({}) == (None, "")


def test_time_limit_against_the_walltime(setup, capsys, monkeypatch, tmp_path):
    script = tmp_path / "job.pbs"
    script.write_text("#!/bin/bash -l\n#PBS -l select=2\n#PBS -l walltime=00:30:00\n")
    argv = [a for a in setup["argv"]]
    i = argv.index("--walltime")
    del argv[i:i + 2]
    code, out = run(capsys, argv + ["--job-script", str(script)])
    assert code == 2
    assert problem_lines(out) == [f"mpiswarm preflight: error: --time-limit 3000 s: not below the walltime 1800 s "
                                  f"(from {script} (#PBS -l walltime)): PBS kills the job before mpiswarm stops "
                                  "and writes its partial file"]
    monkeypatch.setenv("PBS_WALLTIME", "3300")  # before the script's line
    code, out = run(capsys, argv + ["--job-script", str(script)])
    assert code == 0
    assert "may end after the walltime 3300 s (from PBS_WALLTIME)" in problem_lines(out, "warning")[0]
    monkeypatch.setenv("PBS_WALLTIME", "1:xx")
    code, out = run(capsys, argv)
    assert code == 2 and problem_lines(out) == [
        "mpiswarm preflight: error: walltime: PBS_WALLTIME: not a duration: '1:xx' (expected SECONDS or HH:MM:SS)"]
    monkeypatch.delenv("PBS_WALLTIME")
    i = argv.index("--time-limit")
    code, out = run(capsys, argv[:i] + argv[i + 2:] + ["--walltime", "3600"])
    assert code == 0 and "--time-limit: not set" in problem_lines(out, "warning")[0]


def test_parse_duration():
    assert preflight.parse_duration("01:00:00") == 3600 == preflight.parse_duration("60:00")
    assert preflight.parse_duration("90") == 90
    with pytest.raises(ValueError):
        preflight.parse_duration("1h")


def fake_launcher(tmp_path, text):
    """A stand-in mpiexec outside this Python environment that says what it is."""
    path = tmp_path / "bin" / "mpiexec"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{text}'\n")
    path.chmod(0o755)
    return str(path)


def test_mpi4py_from_the_wheel_under_the_system_launcher_is_refused(setup, capsys, tmp_path):
    """The classic silent hang: pip's mpich wheel in the venv, Cray PALS's mpiexec on PATH."""
    pals = fake_launcher(tmp_path, "mpiexec (PALS) --cpu-bind list")
    code, out = run(capsys, replace(setup["argv"], "--mpiexec", pals))
    assert code == 2
    [line] = problem_lines(out)
    assert line.startswith("mpiswarm preflight: error: mpi4py/mpiexec: mpi4py loads ")
    assert f"(from the Python environment {os.path.realpath(sys.prefix)}) but {pals} comes from the system" in line
    assert "singleton of size 1" in line


def test_mpi_families_must_agree():
    assert "Open MPI's launcher" in preflight.mpi_mismatch("MPICH Version: 4.1", [], "/usr/bin/mpiexec",
                                                           "mpiexec (OpenRTE) 4.1.5")
    assert preflight.mpi_mismatch("Open MPI v5.0", [], "/x/mpiexec", "HYDRA build details") == \
        "mpi4py uses Open MPI but /x/mpiexec is MPICH's launcher"
    assert preflight.mpi_mismatch("MPICH Version: 4.1", ["/opt/aurora/mpich/lib/libmpi.so.12"],
                                  "/opt/cray/pals/bin/mpiexec", "PALS") is None


def test_no_mpiexec(setup, capsys):
    code, out = run(capsys, replace(setup["argv"], "--mpiexec", "no-such-mpiexec-here"))
    assert code == 2
    assert problem_lines(out) == ["mpiswarm preflight: error: mpiexec: no no-such-mpiexec-here on PATH "
                                  "(load the frameworks module, or give --mpiexec)"]
