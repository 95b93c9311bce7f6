"""Stand-ins for what Aurora has and this machine does not, for the job-script tests.

* ``module``: records ``module load X``; fails (as Lmod does, exit 1) for a module named in
  ``STANDIN_MODULE_FAIL``.
* ``bcast`` (ALCF GettingStarted ``AI_ML/LLM_Inference/utils/bcast``: ``bcast SRC DEST`` under
  ``mpiexec --ppn 1``, SRC into DEST on every node): copies with ``tar`` and records each rank.
* ``launch_copper.sh`` / ``stop_copper.sh`` (ALCF Copper, ``-d LOGS -v MOUNT``): the mount is a
  symbolic link to ``/``, so ``MOUNT/abs/path`` is ``/abs/path`` as in Copper's view.
* ``mpiexec`` with Cray PALS's ``--cpu-bind list:A:B:…`` (rank *i* of a node on entry *i*,
  ``none``/``numa`` unbound) and ``--help`` naming PALS, over MPICH's Hydra; each rank bound with
  ``taskset``.

Every call is one line in ``STANDIN_LOG``: ``NAME UNIX_TIME HOST RANK ARGS…``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

_LOG = 'printf "%s %s %s %s %s\\n" "$(basename "$0")" "$(date +%s.%N)" "$(hostname)" "${PMI_RANK:-0}" "$*" >>"$STANDIN_LOG"'

STANDINS = {
    "module": f"""#!/bin/bash
{_LOG}
[[ $1 == load ]] || exit 0
shift
for m in "$@"; do
    if [[ " ${{STANDIN_MODULE_FAIL:-}} " == *" $m "* ]]; then
        echo "Lmod has detected the following error: The following module(s) are unknown: \\"$m\\"" >&2
        exit 1
    fi
done
""",
    "bcast": f"""#!/bin/bash
{_LOG}
[[ $1 == --no-root-write ]] && shift
src=${{1%/}} dest=${{2:-/tmp}}
mkdir -p "$dest" && flock "$dest/.standin-bcast.lock" tar -C "$(dirname "$src")" -cf - "$(basename "$src")" |
    tar -xf - -C "$dest"
""",
    "launch_copper.sh": f"""#!/bin/bash
{_LOG}
while getopts d:v: o; do case $o in d) logs=$OPTARG ;; v) mount=$OPTARG ;; *) exit 2 ;; esac; done
mkdir -p "$logs" "$(dirname "$mount")" && ln -sfn / "$mount"
""",
    "stop_copper.sh": f"""#!/bin/bash
{_LOG}
while getopts d:v: o; do case $o in d) ;; v) mount=$OPTARG ;; *) exit 2 ;; esac; done
rm -f "$mount"
""",
    "standin-bind": """#!/bin/bash
# standin-bind LIST CMD...: this rank's entry of a PALS --cpu-bind list, then CMD
list=$1
shift
case $list in
    list:*) IFS=: read -r -a cores <<<"${list#list:}"; exec taskset -c "${cores[${MPI_LOCALRANKID:-0}]}" "$@" ;;
    *) exec "$@" ;;
esac
""",
    "mpiexec": """#!/bin/bash
# A Cray PALS mpiexec over MPICH's Hydra ($STANDIN_HYDRA): -n, --ppn, --hosts, --cpu-bind.
case $1 in
    --help) echo "PALS stand-in: mpiexec [-n N] [--ppn P] [--hosts H] [--cpu-bind list:A:B|none|numa] CMD"; exit 0 ;;
    --version) echo "mpiexec (PALS stand-in over Hydra)"; exit 0 ;;
esac
args=() bind=none
while (($#)); do
    case $1 in
        -n | -np | --ppn | -ppn | --hosts | -hosts) args+=("$1" "$2"); shift 2 ;;
        --cpu-bind) bind=$2; shift 2 ;;
        *) break ;;
    esac
done
printf '%s %s %s %s %s\\n' mpiexec "$(date +%s.%N)" "$(hostname)" - "--cpu-bind $bind ${args[*]} $*" >>"$STANDIN_LOG"
exec "$STANDIN_HYDRA" "${args[@]}" "$(dirname "$0")/standin-bind" "$bind" "$@"
""",
}


def install_standins(directory: Path, env: dict, *, pals: bool = False) -> Path:
    """Write the stand-ins to ``directory/bin``, put it first on ``env['PATH']``; with ``pals``
    the job's ``mpiexec`` is the PALS stand-in. Returns the log file."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, text in STANDINS.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    log = directory / "standins.log"
    log.touch()
    env["STANDIN_LOG"] = str(log)
    env["PATH"] = os.pathsep.join([str(bin_dir), env["PATH"]])
    if pals:
        env["STANDIN_HYDRA"] = env["MPISWARM_MPIEXEC"]
        env["MPISWARM_MPIEXEC"] = str(bin_dir / "mpiexec")
    return log


def standin_calls(log: Path, name: str) -> list[list[str]]:
    """The recorded calls of stand-in ``name``: [time, host, rank, args] each."""
    return [line.split(" ", 4)[1:] for line in log.read_text().splitlines() if line.split(" ", 1)[0] == name]


def write_model(hf_home: Path, model: str, max_position_embeddings: int = 4096) -> Path:
    """A Hugging Face cache entry (hub/models--ORG--NAME/snapshots/REV, refs/main) with what
    preflight and vLLM look for: config.json, tokenizer.json, model.safetensors."""
    repo = hf_home / "hub" / ("models--" + model.replace("/", "--"))
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (snap / "config.json").write_text(json.dumps({"max_position_embeddings": max_position_embeddings}))
    (snap / "tokenizer.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"\0" * 64)
    return snap
