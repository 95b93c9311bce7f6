# shellcheck shell=bash
# mpiswarm job library, sourced by jobs/aurora_batch.pbs and jobs/aurora_scaling.pbs.
#
# A job: mpiswarm_setup (modules, settings, nodes, launcher; `--dry-run` only prints),
# mpiswarm_install_traps, mpiswarm_prepare (mpiswarm preflight, Copper, the vLLM model-info
# cache, weight staging: all before any server), mpiswarm_start_servers (one `mpiexec -n PPN
# --ppn PPN --hosts NODE --cpu-bind LIST` launcher per node, one rank a server, each server with
# the environment of mpiswarm_server_env), mpiswarm_wait_servers (every /health, with a
# deadline), mpiswarm_run OUTPUT N_NODES (mpiswarm on the first N healthy nodes). The EXIT trap
# stops mpiswarm, every server and Copper, whatever the way out.
#
# Each Aurora-specific line follows an ALCF document, named beside it: the Aurora vLLM guide
# (docs.alcf.anl.gov/aurora/data-science/inference/vllm/), Running Jobs on Aurora, Getting
# Started on Aurora, Known Issues, System Updates, Copper
# (docs.alcf.anl.gov/aurora/data-management/copper/copper/), and the job scripts of
# github.com/argonne-lcf/GettingStarted AI_ML/LLM_Inference/ ("GettingStarted" below).
#
# Settings (environment, with defaults; see README "Running on Aurora"):
#   MPISWARM_INPUT MPISWARM_OUTPUT MPISWARM_MODEL MPISWARM_PPN MPISWARM_TP MPISWARM_BASE_PORT
#   MPISWARM_SERVER MPISWARM_MAX_MODEL_LEN MPISWARM_HEALTH_TIMEOUT MPISWARM_LOG_DIR
#   MPISWARM_EXTRA_ARGS MPISWARM_CPU_BIND MPISWARM_SERVER_CPU_BIND MPISWARM_MIN_NODES
#   MPISWARM_STOP_TIMEOUT MPISWARM_SERVER_RESTARTS MPISWARM_LAUNCH_GRACE MPISWARM_CMD MPISWARM_MPIEXEC MPISWARM_MODULES
#   MPISWARM_VENV MPISWARM_HF_HOME MPISWARM_NODE_TMP MPISWARM_STAGE MPISWARM_BCAST
#   MPISWARM_VLLM_CACHE MPISWARM_VLLM_CACHE_BUILD MPISWARM_VLLM_PORT_BASE MPISWARM_COPPER
#   MPISWARM_COPPER_MOUNT MPISWARM_PREFLIGHT MPISWARM_DRY_RUN MPISWARM_DRY_RUN_NODES
#
# Exit codes of the scripts: mpiswarm's own (0, 1, 2, 3, 4, 75) once it ran; before that
# 2 = a bad setting or a preflight problem, 4 = servers not healthy in time, 128+N = killed by
# signal N.

MPISWARM_JOB_EXIT_USAGE=2
MPISWARM_JOB_EXIT_UNHEALTHY=4
MPISWARM_JOB_EXIT_RESUME=75
# 12 engines a node on Aurora, 8 cores each, both sockets: GettingStarted
# AI_ML/LLM_Inference/MPI/sub_mpi_aurora_llama8B.sh (CPU_BIND, given to the engines).
MPISWARM_AURORA_CPU_LIST='list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100'

# Job state (set by the functions below).
MS_NODES=()            # unique hosts of PBS_NODEFILE, in order
MS_LABELS=()           # their short names, for log file names
MS_LAUNCHER_PIDS=()    # the server launcher (mpiexec) of MS_NODES[i]
MS_HEALTHY_NODES=()    # nodes whose every server answered /health, in MS_NODES order
MS_MPIEXEC=()          # the mpiexec command
MS_CMD=()              # the mpiswarm command
MS_EXTRA=()            # MPISWARM_EXTRA_ARGS, split with shell quoting
MS_RUN_OPTS=()         # mpiexec options of the mpiswarm run (--cpu-bind)
MS_LAUNCH_OPTS=()      # mpiexec options of the server launchers (--cpu-bind LIST)
MS_STAGE_OPTS=()       # mpiexec options of the once-a-node steps (--cpu-bind numa)
MS_DRY_RUN=0           # --dry-run: print the commands, start nothing
MS_DRY_RUN_RC=0        # --dry-run's exit code (2: preflight found problems)
MS_STAGE=0             # copy the weights (and the model-info cache) to every node first
MS_COPPER=0            # Python imports through Copper
MS_COPPER_UP=          # Copper was launched (stop it at exit)
MS_SERVER_HF_HOME=     # the servers' HF_HOME (staged: on the node)
MS_CACHE_ROOT=         # the servers' VLLM_CACHE_ROOT
MS_PYTHONPATH_PREFIX=  # the Copper view of this Python's site-packages
MS_RUN_PID=            # the running mpiswarm job's mpiexec
MS_INTERRUPTED=        # the first signal received (TERM, INT, HUP)
MS_SIGNALLED=0         # a signal arrived while waiting for mpiswarm
MS_STARTING=0          # mpiswarm is being started (its pid is not known yet)
MS_KILL_AT=            # SECONDS value at which a signalled mpiswarm is killed
MS_COUNTS=()           # scaling study: the node counts

mpiswarm_log() {
    printf '%s mpiswarm-job: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*" >&2
}

mpiswarm_die() {  # mpiswarm_die CODE MESSAGE...
    local code=$1
    shift
    mpiswarm_log "error: $*"
    exit "$code"
}

# ---------------------------------------------------------------------------------------------
# Node side. These functions run on every node inside the launcher's `bash -c`: they are sent
# there as text (declare -f), so they use nothing else from this file.
# ---------------------------------------------------------------------------------------------

# Sleep in the background and wait for it: a trapped signal then interrupts the nap at once,
# and bash prints no "Terminated" line when PBS or mpiexec signals the whole process group.
mpiswarm_nap() {
    local pid
    sleep "$1" &
    pid=$!
    wait "$pid"
    kill "$pid" 2>/dev/null
    return 0
}

mpiswarm_http_ok() {  # mpiswarm_http_ok URL: 0 when URL answers 2xx within 5 s (proxies bypassed)
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null --noproxy '*' --connect-timeout 2 --max-time 5 "$1" 2>/dev/null
    else
        python3 -c 'import sys, urllib.request as u
u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=5)' "$1" >/dev/null 2>&1
    fi
}

mpiswarm_node_tail() {  # mpiswarm_node_tail LOG PREFIX: the end of a server log, prefixed
    if [[ -r $1 ]]; then
        tail -n 20 "$1" | awk -v p="    $2 " '{ print p $0 }'
    else
        echo "    $2 (no log at $1)"
    fi
}

mpiswarm_node_stop() {  # mpiswarm_node_stop TIMEOUT PID...: TERM, wait up to TIMEOUT s, KILL
    local timeout=$1 pid alive t_end
    shift
    # Each server leads a session of its own (setsid): signal its whole process group, so
    # vLLM's engine and worker processes go too.
    for pid in "$@"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    done
    t_end=$((SECONDS + timeout))
    while :; do
        alive=0
        for pid in "$@"; do
            if kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; then
                alive=1
            fi
        done
        ((alive && SECONDS < t_end)) || break
        mpiswarm_nap 0.5
    done
    for pid in "$@"; do
        if kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null; then
            echo "mpiswarm-server: killed pid $pid (still running ${timeout} s after SIGTERM)"
        fi
        wait "$pid" 2>/dev/null
    done
    return 0
}

# mpiswarm_node_rank: this process's rank within its node under the server launcher (Cray PALS
# sets PALS_LOCAL_RANKID, as ALCF's GettingStarted AI_ML/LLM_Inference/MPI/mpi_llm_inference.py
# reads it; MPICH's Hydra MPI_LOCALRANKID).
mpiswarm_node_rank() {
    printf '%s' "${PALS_LOCAL_RANKID:-${MPI_LOCALRANKID:-${PMI_LOCAL_RANK:-${OMPI_COMM_WORLD_LOCAL_RANK:-0}}}}"
}

# mpiswarm_server_env TILE PPN TP VLLM_PORT_BASE NODE_TMP HF_HOME CACHE_ROOT PYTHONPATH_PREFIX HOST_IP
# The environment of the server of TILE (0..PPN-1), one NAME=VALUE a line ("-NAME": unset it).
# HOST_IP: the node's HSN address for tensor-parallel servers ('' when it has none). Each line
# follows an ALCF document, named beside it.
mpiswarm_server_env() {
    local tile=$1 ppn=$2 tp=$3 vport_base=$4 node_tmp=$5 hf_home=$6 cache_root=$7 pp_prefix=$8 host_ip=$9
    local offset=0 start t mask=
    # Weights from the Hugging Face cache, never from the Hub: ALCF Aurora vLLM guide
    # (docs.alcf.anl.gov/aurora/data-science/inference/vllm/, "Access Model Weights").
    echo "HF_HOME=$hf_home"
    echo "HF_HUB_OFFLINE=1"
    echo "TRANSFORMERS_OFFLINE=1"
    # A TMPDIR of its own under mpiexec: ALCF Aurora Known Issues #7 ("AF_UNIX path too long"),
    # one directory an engine as GettingStarted AI_ML/LLM_Inference/MPI/mpi_llm_inference.py does.
    echo "TMPDIR=$node_tmp/vllm_inst_$tile"
    # Tiles as devices 0..11 and this server's tiles: GettingStarted mpi_llm_inference.py
    # (set_gpu_affinity: FLAT hierarchy, TP consecutive tiles an engine, two engines of TP > 2
    # each on its own socket, i.e. offset 6 - TP) and its EL/Dragon job scripts (FLAT).
    echo "ZE_FLAT_DEVICE_HIERARCHY=FLAT"
    ((tp > 2 && ppn == 2)) && offset=$((6 - tp))
    start=$((tile * (tp + offset)))
    for ((t = start; t < start + tp; t++)); do
        mask+=${mask:+,}$t
    done
    echo "ZE_AFFINITY_MASK=$mask"
    # vLLM's and torch.distributed's internal ports in a range of 200 an engine ("to reduce
    # collisions between concurrent startups"), one engine of WORLD_SIZE = TP on 127.0.0.1:
    # GettingStarted mpi_llm_inference.py (VLLM_PORT, MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE).
    echo "VLLM_PORT=$((vport_base + tile * 200))"
    echo "MASTER_ADDR=127.0.0.1"
    echo "MASTER_PORT=$((vport_base + tile * 200))"
    echo "RANK=0"
    echo "WORLD_SIZE=$tp"
    # The model-info cache built before any server started: ALCF Aurora vLLM guide ("Known
    # Issue on Aurora"), GettingStarted sub_mpi_aurora_llama8B.sh (VLLM_CACHE_ROOT).
    [[ -n $cache_root ]] && echo "VLLM_CACHE_ROOT=$cache_root"
    if ((tp > 1)); then
        # Tensor parallel on one node: VLLM_HOST_IP = the node's HSN address (ALCF Aurora vLLM
        # guide, "Serving Medium Models on Multiple Tiles"); CCL_PROCESS_LAUNCHER=None and no
        # ONEAPI_DEVICE_SELECTOR (ALCF Aurora system updates, frameworks module known issue
        # "vLLM failure to start EngineCore on multiple ranks").
        [[ -n $host_ip ]] && echo "VLLM_HOST_IP=$host_ip"
        echo "CCL_PROCESS_LAUNCHER=None"
        echo "-ONEAPI_DEVICE_SELECTOR"
    fi
    # Python start-up through Copper: ALCF Copper docs (docs.alcf.anl.gov/aurora/data-management/
    # copper/copper/: prepend only the virtual environment's site-packages to PYTHONPATH).
    [[ -n $pp_prefix ]] && echo "PYTHONPATH=$pp_prefix${PYTHONPATH:+:$PYTHONPATH}"
    return 0
}

mpiswarm_hsn_ip() {  # the node's HSN address (ALCF Aurora vLLM guide's getent line), '' if none
    getent hosts "$(hostname).hsn.cm.aurora.alcf.anl.gov" 2>/dev/null | awk '{ print $1 }' | sort | head -n 1
}

# mpiswarm_node_launch LOG PID_FILE CMD ENV_ARG...: start one server, `env ENV_ARG... bash -c CMD`,
# its output appended to LOG, in a session of its own where there is setsid (so that stopping it
# stops its whole group); its pid in MPISWARM_NODE_PID and PID_FILE. The one place a server starts.
mpiswarm_node_launch() {
    local log=$1 pid_file=$2 cmd=$3
    shift 3
    if command -v setsid >/dev/null 2>&1; then
        setsid env "$@" bash -c "$cmd" >>"$log" 2>&1 </dev/null &
    else
        env "$@" bash -c "$cmd" >>"$log" 2>&1 </dev/null &
    fi
    MPISWARM_NODE_PID=$!
    echo "$MPISWARM_NODE_PID" >"$pid_file"
}

# mpiswarm_node_serve NODE LABEL BASE_PORT PPN TP HEALTH_TIMEOUT STOP_TIMEOUT LOG_DIR VLLM_PORT_BASE
#                     NODE_TMP HF_HOME CACHE_ROOT PYTHONPATH_PREFIX TEMPLATE [RESTARTS]
# One rank of a node's server launcher (`mpiexec -n PPN --ppn PPN --cpu-bind …`, so PALS binds it
# and the server it starts to its tile's cores): start the server of this rank's tile (TEMPLATE
# with {port} {tile} {node} replaced) on BASE_PORT+tile with mpiswarm_server_env's environment,
# wait for its /health on 127.0.0.1, report on stdout, keep it until SIGTERM, then stop it. A
# server that exits once it was up is started again (same command and environment, its log
# appended), at most RESTARTS times (default 0), so that it can rejoin: mpiswarm looks at its dead
# endpoints again every --revive-interval seconds. Not while stopping.
# Report lines: "mpiswarm-server: started|up|down|restarted|died NODE PORT ...", then once "ready
# NODE PORT" or "failed NODE PORT ..."; last "stopped NODE PORT".
mpiswarm_node_serve() {
    local node=$1 label=$2 base=$3 ppn=$4 tp=$5 health_timeout=$6 stop_timeout=$7 log_dir=$8 vport_base=$9
    local node_tmp=${10} hf_home=${11} cache_root=${12} pp_prefix=${13} template=${14} max_restarts=${15:-0}
    local tile port cmd log pid rc deadline t0=$SECONDS host_ip='' line n_restarts=0 t_restart='' tail_text spent serving=''
    local -a env_args=() env_lines=()
    tile=$(mpiswarm_node_rank)
    port=$((base + tile))
    log="$log_dir/server-$label-$port.log"
    MPISWARM_NODE_STOP=
    trap 'MPISWARM_NODE_STOP=TERM' TERM
    trap 'MPISWARM_NODE_STOP=INT' INT
    trap 'MPISWARM_NODE_STOP=HUP' HUP
    # The server is not a rank of this launcher's MPI job: do not hand it its PMI settings
    # (oneCCL and torch.distributed inside vLLM would read them).
    unset "${!PMI_@}" "${!PMIX_@}" "${!PALS_@}" "${!HYDI_@}" MPI_LOCALRANKID MPI_LOCALNRANKS
    ((tp > 1)) && host_ip=$(mpiswarm_hsn_ip)
    mapfile -t env_lines < <(mpiswarm_server_env "$tile" "$ppn" "$tp" "$vport_base" "$node_tmp" "$hf_home" \
        "$cache_root" "$pp_prefix" "$host_ip")
    for line in "${env_lines[@]}"; do  # env: the -u options before the assignments
        if [[ $line == -* ]]; then env_args=(-u "${line#-}" "${env_args[@]}"); else env_args+=("$line"); fi
    done
    cmd=${template//\{port\}/"$port"}
    cmd=${cmd//\{tile\}/"$tile"}
    cmd=${cmd//\{node\}/"$node"}
    if ! mkdir -p "$log_dir" "$node_tmp/vllm_inst_$tile"; then
        echo "mpiswarm-server: down $node $port: cannot create $log_dir or $node_tmp/vllm_inst_$tile"
        echo "mpiswarm-server: failed $node $port"
        return 0
    fi
    {
        printf '# mpiswarm: %s on %s (tile %s): %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$node" "$tile" "$cmd"
        printf '# mpiswarm: environment: %s\n' "${env_lines[*]}"
    } >"$log"
    mpiswarm_node_launch "$log" "$log_dir/server-$label-$port.pid" "$cmd" "${env_args[@]}"
    pid=$MPISWARM_NODE_PID
    echo "mpiswarm-server: started $node $port pid $pid tile $tile log $log"

    deadline=$((SECONDS + health_timeout))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid"
            rc=$?
            echo "mpiswarm-server: down $node $port: the server exited with code $rc before /health answered"
            mpiswarm_node_tail "$log" "$node:$port|"
            echo "mpiswarm-server: failed $node $port"
            pid=
            break
        elif mpiswarm_http_ok "http://127.0.0.1:$port/health"; then
            echo "mpiswarm-server: up $node $port after $((SECONDS - t0)) s"
            echo "mpiswarm-server: ready $node $port"
            serving=1
            break
        elif [[ -n $MPISWARM_NODE_STOP ]]; then
            echo "mpiswarm-server: failed $node $port (SIG$MPISWARM_NODE_STOP before the server was up)"
            break
        elif ((SECONDS >= deadline)); then
            echo "mpiswarm-server: down $node $port: /health did not answer within ${health_timeout} s"
            mpiswarm_node_tail "$log" "$node:$port|"
            echo "mpiswarm-server: failed $node $port"
            break
        fi
        mpiswarm_nap 1
    done
    # Stay until SIGTERM (a launcher rank that ended early could end its node's other ranks).
    # A server that was up and exits starts again while restarts are left, never while stopping
    # ("ready" is said once: mpiswarm_wait_servers counts it). One look a second, not a blocking
    # `wait` on the server: the rank watches for two things, the server exiting (`kill -0`) and a
    # restarted one answering /health, and a trapped SIGTERM ends the nap at once.
    while [[ -z $MPISWARM_NODE_STOP ]]; do
        mpiswarm_nap 1
        [[ -n $pid ]] || continue
        if kill -0 "$pid" 2>/dev/null; then
            if [[ -n $t_restart ]] && mpiswarm_http_ok "http://127.0.0.1:$port/health"; then
                echo "mpiswarm-server: up $node $port after $((SECONDS - t_restart)) s (restart $n_restarts of $max_restarts)"
                t_restart=
            fi
            continue
        fi
        wait "$pid"
        rc=$?
        # What is left of it goes too (vLLM's engine and worker processes, in its process group):
        # a new server needs its tiles and its port, and nothing may outlive the job's servers.
        mpiswarm_node_stop "$stop_timeout" "$pid"
        pid=
        t_restart=
        if [[ -n $MPISWARM_NODE_STOP || -z $serving ]] || ((n_restarts >= max_restarts)); then
            spent=
            ((max_restarts)) && spent=" (after $n_restarts restart(s), MPISWARM_SERVER_RESTARTS=$max_restarts)"
            echo "mpiswarm-server: died $node $port: exited with code $rc while serving$spent"
            mpiswarm_node_tail "$log" "$node:$port|"
            continue
        fi
        n_restarts=$((n_restarts + 1))
        tail_text=$(mpiswarm_node_tail "$log" "$node:$port|")
        printf '# mpiswarm: %s restart %s of %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$n_restarts" "$max_restarts" >>"$log"
        mpiswarm_node_launch "$log" "$log_dir/server-$label-$port.pid" "$cmd" "${env_args[@]}"
        pid=$MPISWARM_NODE_PID
        t_restart=$SECONDS
        echo "mpiswarm-server: restarted $node $port pid $pid (restart $n_restarts of $max_restarts):" \
            "it exited with code $rc while serving"
        printf '%s\n' "$tail_text"
    done
    [[ -n $pid ]] && mpiswarm_node_stop "$stop_timeout" "$pid"
    echo "mpiswarm-server: stopped $node $port"
    return 0  # the report lines say how it went (a non-zero code only adds launcher noise)
}

# ---------------------------------------------------------------------------------------------
# Job side (the script, on the job's first node).
# ---------------------------------------------------------------------------------------------

mpiswarm_words() {  # mpiswarm_words ARRAY_NAME TEXT: split TEXT like the shell (quotes), no expansion
    local -n _mpiswarm_out=$1
    _mpiswarm_out=()
    [[ -n ${2//[[:space:]]/} ]] || return 0
    printf '%s' "$2" | xargs printf '' 2>/dev/null ||
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "unbalanced quotes in: $2"
    mapfile -d '' _mpiswarm_out < <(printf '%s' "$2" | xargs printf '%s\0')
}

mpiswarm_require_int() {  # mpiswarm_require_int NAME MIN: the variable NAME holds an integer >= MIN
    local value=${!1}
    if ! [[ $value =~ ^[0-9]+$ ]] || ((10#$value < $2)); then
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "$1 must be an integer >= $2, got '$value'"
    fi
}

mpiswarm_label() {  # a node's name for file names: the host part of a DNS name, an IP as is
    if [[ $1 =~ ^[0-9.]+$ || $1 == *:* ]]; then
        printf '%s' "${1//:/_}"
    else
        printf '%s' "${1%%.*}"
    fi
}

mpiswarm_default_server() {  # the Aurora vLLM command line of one server (its environment: mpiswarm_server_env)
    local cmd
    # ALCF Aurora vLLM guide: `vllm serve MODEL --port P --dtype bfloat16 --enforce-eager`, and
    # --tensor-parallel-size for a model of more than one tile.
    cmd="vllm serve $(printf '%q' "$MPISWARM_MODEL") --port {port} --dtype bfloat16 --enforce-eager"
    ((MPISWARM_TP > 1)) && cmd+=" --tensor-parallel-size $MPISWARM_TP"
    [[ -n $MPISWARM_MAX_MODEL_LEN ]] && cmd+=" --max-model-len $MPISWARM_MAX_MODEL_LEN"
    printf '%s' "$cmd"
}

mpiswarm_default_server_bind() {  # the servers' --cpu-bind: ALCF's lists, where ALCF gives one
    if ((MPISWARM_PPN == 12 && MPISWARM_TP == 1)); then
        printf '%s' "$MPISWARM_AURORA_CPU_LIST"  # GettingStarted sub_mpi_aurora_llama8B.sh (12 engines a node)
    elif ((MPISWARM_PPN == 2)); then
        printf '%s' "list:1-48:53-100"  # GettingStarted sub_mpi_aurora_llama70B.sh (2 engines of TP 4)
    fi
}

mpiswarm_mpiexec_has_cpu_bind() {  # Cray PALS has --cpu-bind; MPICH's Hydra does not
    local text
    text=$("${MS_MPIEXEC[@]}" --help 2>&1; "${MS_MPIEXEC[@]}" --version 2>&1)
    [[ $text == *cpu-bind* || $text == *PALS* ]]
}

mpiswarm_flag() {  # mpiswarm_flag NAME: the variable NAME is 1/yes/true/on (0 for 0/no/false/off/'')
    case ${!1,,} in
        1 | yes | true | on) return 0 ;;
        '' | 0 | no | false | off) return 1 ;;
        *) mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "$1 must be 1 or 0, got '${!1}'" ;;
    esac
}

mpiswarm_show() {  # mpiswarm_show WHAT CMD...: the command, shell-quoted; printed by --dry-run, logged otherwise
    local what=$1 text
    shift
    text="$what: $(printf '%q ' "$@")"
    if ((MS_DRY_RUN)); then
        printf '%s\n' "${text% }"
    else
        mpiswarm_log "${text% }"
    fi
}

mpiswarm_load_modules() {
    : "${MPISWARM_MODULES=frameworks}"
    [[ -n $MPISWARM_MODULES ]] || return 0
    local -a modules
    read -r -a modules <<<"$MPISWARM_MODULES"
    if ! type module >/dev/null 2>&1; then
        # `#!/bin/bash -l` gives a PBS job on Aurora its module command (ALCF, Running Jobs on Aurora).
        mpiswarm_log "no module command here (not an ALCF system?): not loading $MPISWARM_MODULES"
        return 0
    fi
    mpiswarm_show "modules" module load "${modules[@]}"
    module load "${modules[@]}" || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "module load $MPISWARM_MODULES failed (see the module error above)"
}

mpiswarm_dry_run_nodes() {  # MS_NODES for --dry-run without PBS_NODEFILE: the script's select=N placeholders
    local n=${MPISWARM_DRY_RUN_NODES:-} i
    if [[ -z $n ]]; then
        n=$(sed -n 's/^#PBS .*select=\([0-9]*\).*/\1/p' "${BASH_SOURCE[-1]}" | head -n 1)
    fi
    [[ $n =~ ^[0-9]+$ ]] && ((n > 0)) || n=1
    MS_NODES=()
    for ((i = 1; i <= n; i++)); do
        MS_NODES+=("NODE$i")
    done
}

mpiswarm_setup() {
    MS_DRY_RUN=0
    # shellcheck disable=SC2034  # read by mpiswarm_flag, by name
    [[ ${1:-} == --dry-run ]] && MPISWARM_DRY_RUN=1
    mpiswarm_flag MPISWARM_DRY_RUN && MS_DRY_RUN=1
    ((MS_DRY_RUN)) && echo "# mpiswarm job --dry-run: the commands this job would run; nothing is started"
    # Relative paths are relative to where qsub ran, as PBS users expect.
    if [[ -n ${PBS_JOBID:-} && -n ${PBS_O_WORKDIR:-} ]]; then
        cd "$PBS_O_WORKDIR" || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "cannot cd to $PBS_O_WORKDIR"
    fi
    mpiswarm_load_modules
    if [[ -n ${MPISWARM_VENV:-} ]]; then
        # shellcheck disable=SC1091  # the user's virtual environment
        source "$MPISWARM_VENV/bin/activate" || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "cannot activate $MPISWARM_VENV"
    fi

    MPISWARM_INPUT=${MPISWARM_INPUT:-prompts.jsonl}
    MPISWARM_OUTPUT=${MPISWARM_OUTPUT:-answers.h5}
    MPISWARM_MODEL=${MPISWARM_MODEL:-meta-llama/Llama-3.1-8B-Instruct}
    MPISWARM_PPN=${MPISWARM_PPN:-12}
    MPISWARM_BASE_PORT=${MPISWARM_BASE_PORT:-8000}
    MPISWARM_HEALTH_TIMEOUT=${MPISWARM_HEALTH_TIMEOUT:-1800}
    MPISWARM_STOP_TIMEOUT=${MPISWARM_STOP_TIMEOUT:-30}
    MPISWARM_SERVER_RESTARTS=${MPISWARM_SERVER_RESTARTS:-2}  # times a server that exits while serving starts again
    MPISWARM_LAUNCH_GRACE=${MPISWARM_LAUNCH_GRACE:-60}
    MPISWARM_VLLM_PORT_BASE=${MPISWARM_VLLM_PORT_BASE:-10000}  # GettingStarted mpi_llm_inference.py: 10000 + 200 an engine
    MPISWARM_NODE_TMP=${MPISWARM_NODE_TMP:-/tmp}  # node-local (ALCF vLLM guide and Known Issues: TMPDIR=/tmp)
    # ALCF Aurora vLLM guide: HF_HOME=/flare/datasets/model-weights (Hugging Face appends hub/).
    MPISWARM_HF_HOME=${MPISWARM_HF_HOME:-${HF_HOME:-/flare/datasets/model-weights}}
    mpiswarm_require_int MPISWARM_PPN 1
    MPISWARM_TP=${MPISWARM_TP:-$((MPISWARM_PPN == 1 ? 8 : 1))}
    mpiswarm_require_int MPISWARM_TP 1
    mpiswarm_require_int MPISWARM_BASE_PORT 1
    mpiswarm_require_int MPISWARM_HEALTH_TIMEOUT 1
    mpiswarm_require_int MPISWARM_STOP_TIMEOUT 1
    mpiswarm_require_int MPISWARM_SERVER_RESTARTS 0
    mpiswarm_require_int MPISWARM_LAUNCH_GRACE 0
    mpiswarm_require_int MPISWARM_VLLM_PORT_BASE 1
    [[ -z ${MPISWARM_MAX_MODEL_LEN:-} ]] || mpiswarm_require_int MPISWARM_MAX_MODEL_LEN 1
    ((MPISWARM_BASE_PORT + MPISWARM_PPN - 1 <= 65535)) ||
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "ports $MPISWARM_BASE_PORT..$((MPISWARM_BASE_PORT + MPISWARM_PPN - 1)) exceed 65535"
    ((MPISWARM_VLLM_PORT_BASE + MPISWARM_PPN * 200 - 1 <= 65535)) ||
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "MPISWARM_VLLM_PORT_BASE=$MPISWARM_VLLM_PORT_BASE: its 200 ports a server exceed 65535"
    # An Aurora node has 12 tiles, 6 a socket (ALCF Aurora vLLM guide: "12 PVC tiles per node").
    ((MPISWARM_PPN * MPISWARM_TP <= 12)) ||
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "MPISWARM_PPN=$MPISWARM_PPN servers of MPISWARM_TP=$MPISWARM_TP tiles need $((MPISWARM_PPN * MPISWARM_TP)) tiles; an Aurora node has 12"
    MPISWARM_SERVER=${MPISWARM_SERVER:-$(mpiswarm_default_server)}
    [[ -n ${MPISWARM_SERVER_CPU_BIND+set} ]] || MPISWARM_SERVER_CPU_BIND=$(mpiswarm_default_server_bind)
    MPISWARM_CPU_BIND=${MPISWARM_CPU_BIND:-}
    [[ -n ${MPISWARM_VLLM_CACHE+set} ]] || MPISWARM_VLLM_CACHE=$PWD/.vllm_cache  # GettingStarted: $PWD/.vllm_cache
    MPISWARM_VLLM_CACHE_BUILD=${MPISWARM_VLLM_CACHE_BUILD:-}
    MPISWARM_COPPER=${MPISWARM_COPPER:-0}
    mpiswarm_flag MPISWARM_COPPER && MS_COPPER=1 || MS_COPPER=0
    MPISWARM_COPPER_MOUNT=${MPISWARM_COPPER_MOUNT:-/tmp/${USER:-$(id -un)}/copper_mount}  # ALCF Copper docs' mount path
    MPISWARM_PREFLIGHT=${MPISWARM_PREFLIGHT:-1}

    # Fail now, not after the servers spent half an hour loading.
    [[ -f $MPISWARM_INPUT && -r $MPISWARM_INPUT ]] ||
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "MPISWARM_INPUT: no readable file $MPISWARM_INPUT (in $PWD)"
    local out_dir
    out_dir=$(dirname -- "$MPISWARM_OUTPUT")
    [[ -d $out_dir && -w $out_dir ]] ||
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "MPISWARM_OUTPUT: directory $out_dir does not exist or is not writable"

    if [[ -n ${PBS_NODEFILE:-} ]]; then
        [[ -r $PBS_NODEFILE ]] || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "cannot read PBS_NODEFILE=$PBS_NODEFILE"
        mapfile -t MS_NODES < <(awk 'NF && !seen[$1]++ { print $1 }' "$PBS_NODEFILE")
        ((${#MS_NODES[@]})) || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "PBS_NODEFILE=$PBS_NODEFILE lists no host"
    elif ((MS_DRY_RUN)); then
        mpiswarm_dry_run_nodes
    else
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "PBS_NODEFILE is not set: submit with qsub, or point it at a file listing hosts (localhost to run here)"
    fi
    local node label
    local -A taken=()
    MS_LABELS=()
    for node in "${MS_NODES[@]}"; do
        label=$(mpiswarm_label "$node")
        [[ -z ${taken[$label]-} ]] || label=${node//[^A-Za-z0-9._-]/_}  # log names must not collide
        taken[$label]=1
        MS_LABELS+=("$label")
    done
    MPISWARM_MIN_NODES=${MPISWARM_MIN_NODES:-${#MS_NODES[@]}}
    mpiswarm_require_int MPISWARM_MIN_NODES 1
    ((MPISWARM_MIN_NODES <= ${#MS_NODES[@]})) ||
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "MPISWARM_MIN_NODES=$MPISWARM_MIN_NODES but the job has ${#MS_NODES[@]} nodes"
    # Weight staging: on by default for more than one node (GettingStarted copies the weights
    # to every node's /tmp with bcast before any engine starts).
    MPISWARM_STAGE=${MPISWARM_STAGE:-$((${#MS_NODES[@]} > 1 ? 1 : 0))}
    mpiswarm_flag MPISWARM_STAGE && MS_STAGE=1 || MS_STAGE=0
    if [[ -z ${MPISWARM_BCAST+set} ]]; then
        MPISWARM_BCAST=$(command -v bcast 2>/dev/null || true)
    fi

    MPISWARM_LOG_DIR=${MPISWARM_LOG_DIR:-$PWD/mpiswarm-logs/${PBS_JOBID:-local-$(date +%Y%m%d-%H%M%S)-$$}}
    if ((MS_DRY_RUN)); then
        [[ $MPISWARM_LOG_DIR == /* ]] || MPISWARM_LOG_DIR=$PWD/$MPISWARM_LOG_DIR
    else
        mkdir -p "$MPISWARM_LOG_DIR" || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "cannot create MPISWARM_LOG_DIR=$MPISWARM_LOG_DIR"
        MPISWARM_LOG_DIR=$(cd "$MPISWARM_LOG_DIR" && pwd)
    fi

    mpiswarm_words MS_MPIEXEC "${MPISWARM_MPIEXEC:-mpiexec}"
    if ! command -v "${MS_MPIEXEC[0]}" >/dev/null 2>&1; then
        ((MS_DRY_RUN)) || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "no ${MS_MPIEXEC[0]} on PATH (set MPISWARM_MPIEXEC or load your MPI module)"
        mpiswarm_log "warning: no ${MS_MPIEXEC[0]} on PATH here"
    fi
    if [[ -n ${MPISWARM_CMD:-} ]]; then
        mpiswarm_words MS_CMD "$MPISWARM_CMD"
    elif command -v mpiswarm >/dev/null 2>&1; then
        MS_CMD=(mpiswarm)
    else
        MS_CMD=(python3 -m mpiswarm)
    fi
    mpiswarm_words MS_EXTRA "${MPISWARM_EXTRA_ARGS:-}"
    MS_RUN_OPTS=()
    MS_LAUNCH_OPTS=()
    MS_STAGE_OPTS=()
    local bind_note="no --cpu-bind"
    if mpiswarm_mpiexec_has_cpu_bind; then
        # The servers bound, each to its tile's socket's cores (ALCF's lists, above); the light
        # HTTP ranks of mpiswarm unbound unless MPISWARM_CPU_BIND says otherwise.
        MS_LAUNCH_OPTS=(--cpu-bind "${MPISWARM_SERVER_CPU_BIND:-none}")
        MS_RUN_OPTS=(--cpu-bind "${MPISWARM_CPU_BIND:-none}")
        MS_STAGE_OPTS=(--cpu-bind numa)  # GettingStarted: mpiexec -np NODES -ppn 1 --cpu-bind numa bcast
        bind_note="servers --cpu-bind ${MPISWARM_SERVER_CPU_BIND:-none}, ranks --cpu-bind ${MPISWARM_CPU_BIND:-none}"
    elif [[ -n $MPISWARM_SERVER_CPU_BIND$MPISWARM_CPU_BIND ]]; then
        bind_note="this mpiexec has no --cpu-bind (MPICH Hydra?): MPISWARM_SERVER_CPU_BIND/MPISWARM_CPU_BIND not applied"
    fi

    # The ranks' requests to 127.0.0.1 never go through an HTTP proxy (Aurora's login settings
    # often export http_proxy for pip; Python's httpx, used by mpiswarm, honours it).
    export no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
    export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"

    # Where the servers find weights and model-info cache once staging and the build are done.
    MS_SERVER_HF_HOME=$MPISWARM_HF_HOME
    MS_CACHE_ROOT=$MPISWARM_VLLM_CACHE
    if ((MS_STAGE)); then
        MS_SERVER_HF_HOME=$MPISWARM_NODE_TMP/hf_home  # GettingStarted: HF_HOME=/tmp/hf_home
        [[ -n $MPISWARM_VLLM_CACHE ]] && MS_CACHE_ROOT=$MS_SERVER_HF_HOME/hub/$(basename -- "$MPISWARM_VLLM_CACHE")
    fi
    MS_PYTHONPATH_PREFIX=
    if ((MS_COPPER)); then
        local site
        site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') ||
            mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "MPISWARM_COPPER=1: cannot find this Python's site-packages"
        MS_PYTHONPATH_PREFIX=$MPISWARM_COPPER_MOUNT$site
    fi

    mpiswarm_log "job ${PBS_JOBID:-(not under PBS)}: ${#MS_NODES[@]} node(s) ${MS_NODES[*]}"
    mpiswarm_log "$MPISWARM_PPN server(s) of $MPISWARM_TP tile(s) and $MPISWARM_PPN rank(s) a node on ports $MPISWARM_BASE_PORT..$((MPISWARM_BASE_PORT + MPISWARM_PPN - 1)); model $MPISWARM_MODEL"
    mpiswarm_log "server: $MPISWARM_SERVER (started again at most $MPISWARM_SERVER_RESTARTS time(s) if it exits while serving)"
    mpiswarm_log "mpiexec: ${MS_MPIEXEC[*]} ($bind_note); mpiswarm: ${MS_CMD[*]}"
    mpiswarm_log "input $MPISWARM_INPUT, output $MPISWARM_OUTPUT, logs $MPISWARM_LOG_DIR"
    mpiswarm_log "weights: HF_HOME=$MPISWARM_HF_HOME$( ((MS_STAGE)) && printf ', staged to %s on every node' "$MS_SERVER_HF_HOME")"
}

# --- before the servers: preflight, Copper, the model-info cache, weight staging --------------

mpiswarm_walltime() {  # the job's walltime as PBS knows it ('' when not under PBS)
    [[ -n ${PBS_JOBID:-} ]] && command -v qstat >/dev/null 2>&1 || return 0
    qstat -f "$PBS_JOBID" 2>/dev/null | awk '$1 == "Resource_List.walltime" { print $3; exit }'
}

mpiswarm_preflight() {  # `mpiswarm preflight` with the job's settings: exit 2 if it would fail
    mpiswarm_flag MPISWARM_PREFLIGHT || { mpiswarm_log "preflight skipped (MPISWARM_PREFLIGHT=0)"; return 0; }
    local walltime max_len
    local -a cmd=("${MS_CMD[@]}" preflight "$MPISWARM_INPUT" -o "$MPISWARM_OUTPUT" --model "$MPISWARM_MODEL"
        "${MS_EXTRA[@]}" --hf-home "$MPISWARM_HF_HOME" --offline --mpiexec "${MS_MPIEXEC[0]}"
        --load-time "$MPISWARM_HEALTH_TIMEOUT" --log-dir "$MPISWARM_LOG_DIR" --job-script "${BASH_SOURCE[-1]}")
    walltime=$(mpiswarm_walltime)
    [[ -n $walltime ]] && cmd+=(--walltime "$walltime")
    max_len=$(sed -n 's/.*--max-model-len[= ]\([0-9][0-9]*\).*/\1/p' <<<"$MPISWARM_SERVER")
    [[ -n $max_len ]] && cmd+=(--max-model-len "$max_len")
    mpiswarm_show "preflight" "${cmd[@]}"
    "${cmd[@]}" </dev/null >&2 && return 0
    if ((MS_DRY_RUN)); then  # show the rest of the plan, then exit 2
        mpiswarm_log "error: preflight found problems that would doom the job (above): the job would stop here"
        MS_DRY_RUN_RC=$MPISWARM_JOB_EXIT_USAGE
        return 0
    fi
    mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "preflight found problems that would doom the job (above); nothing was started"
}

mpiswarm_on_nodes() {  # mpiswarm_on_nodes WHAT CMD...: CMD once on every node (mpiexec --ppn 1)
    local what=$1 hosts
    shift
    hosts=$(IFS=,; printf '%s' "${MS_NODES[*]}")
    local -a cmd=("${MS_MPIEXEC[@]}" -n "${#MS_NODES[@]}" --ppn 1 --hosts "$hosts" "${MS_STAGE_OPTS[@]}" "$@")
    mpiswarm_show "$what" "${cmd[@]}"
    ((MS_DRY_RUN)) && return 0
    "${cmd[@]}" </dev/null >&2 || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "$what failed (above)"
}

mpiswarm_stage() {  # mpiswarm_stage WHAT SRC DEST_DIR: SRC into DEST_DIR on every node
    if [[ -n $MPISWARM_BCAST ]]; then
        # GettingStarted sub_mpi_aurora_llama8B.sh: one read of Flare, broadcast over the network.
        mpiswarm_on_nodes "$1" "$MPISWARM_BCAST" "$2" "$3"
    else
        # No bcast (MPISWARM_BCAST): every node copies for itself (one read of Flare a node, not
        # one a server; not ALCF's tool).
        # shellcheck disable=SC2016  # expanded on each node
        mpiswarm_on_nodes "$1 (cp: no bcast)" bash -c 'mkdir -p "$2" && cp -a "$1" "$2"/' stage "$2" "$3"
    fi
}

mpiswarm_copper_start() {  # ALCF Copper docs: module load copper; launch_copper.sh -d LOGS -v MOUNT
    ((MS_COPPER)) || return 0
    if type module >/dev/null 2>&1; then
        mpiswarm_show "copper" module load copper
        ((MS_DRY_RUN)) || module load copper || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "module load copper failed"
    else
        mpiswarm_log "no module command here: not loading copper"
    fi
    local -a cmd=(launch_copper.sh -d "$MPISWARM_LOG_DIR/copper" -v "$MPISWARM_COPPER_MOUNT")
    mpiswarm_show "copper" "${cmd[@]}"
    ((MS_DRY_RUN)) && return 0
    command -v launch_copper.sh >/dev/null 2>&1 || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "MPISWARM_COPPER=1 but no launch_copper.sh on PATH (module load copper)"
    "${cmd[@]}" </dev/null >&2 || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "launch_copper.sh failed (above)"
    MS_COPPER_UP=1
    mpiswarm_log "Copper: imports from $MS_PYTHONPATH_PREFIX (PYTHONPATH of the ranks and the servers)"
}

mpiswarm_copper_stop() {
    [[ -n ${MS_COPPER_UP:-} ]] || return 0
    MS_COPPER_UP=
    mpiswarm_show "copper" stop_copper.sh -d "$MPISWARM_LOG_DIR/copper" -v "$MPISWARM_COPPER_MOUNT"
    stop_copper.sh -d "$MPISWARM_LOG_DIR/copper" -v "$MPISWARM_COPPER_MOUNT" </dev/null >&2 ||
        mpiswarm_log "warning: stop_copper.sh failed"
}

mpiswarm_build_cache() {  # the vLLM model-info cache, once, before any server (ALCF Aurora vLLM guide, Known Issue)
    [[ -n $MPISWARM_VLLM_CACHE ]] || { mpiswarm_log "vLLM model-info cache: off (MPISWARM_VLLM_CACHE='')"; return 0; }
    if [[ -d $MPISWARM_VLLM_CACHE && -n $(ls -A "$MPISWARM_VLLM_CACHE" 2>/dev/null) ]]; then
        # ALCF Aurora vLLM guide: once populated, the cache persists (rebuild when it moves).
        mpiswarm_log "vLLM model-info cache: reusing $MPISWARM_VLLM_CACHE"
    elif [[ -n $MPISWARM_VLLM_CACHE_BUILD ]]; then
        local -a build
        mpiswarm_words build "$MPISWARM_VLLM_CACHE_BUILD"
        # GettingStarted: export VLLM_CACHE_ROOT=$PWD/.vllm_cache; python utils/vllm_build_model_cache.py
        mpiswarm_show "model-info cache" env "VLLM_CACHE_ROOT=$MPISWARM_VLLM_CACHE" "${build[@]}"
        if ((!MS_DRY_RUN)); then
            VLLM_CACHE_ROOT=$MPISWARM_VLLM_CACHE "${build[@]}" </dev/null >&2 ||
                mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "building the vLLM model-info cache failed: $MPISWARM_VLLM_CACHE_BUILD"
            [[ -n $(ls -A "$MPISWARM_VLLM_CACHE" 2>/dev/null) ]] ||
                mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "MPISWARM_VLLM_CACHE_BUILD left $MPISWARM_VLLM_CACHE empty"
        fi
    else
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "the vLLM model-info cache $MPISWARM_VLLM_CACHE is empty and MPISWARM_VLLM_CACHE_BUILD is not set:" \
            "give the command that builds it (ALCF GettingStarted AI_ML/LLM_Inference/utils/vllm_build_model_cache.py), a populated cache, or MPISWARM_VLLM_CACHE= to go without (ALCF Aurora vLLM guide, Known Issue on Aurora)"
    fi
}

# Everything the servers need, in order, before any of them starts.
mpiswarm_prepare() {
    mpiswarm_preflight
    mpiswarm_copper_start
    mpiswarm_build_cache
    if ((MS_STAGE)); then
        local repo=$MPISWARM_HF_HOME/hub/models--${MPISWARM_MODEL//\//--}
        # GettingStarted sub_mpi_aurora_llama8B.sh: the model's cache directory, into /tmp/hf_home/hub/.
        [[ -e $repo ]] || ((MS_DRY_RUN)) || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "MPISWARM_STAGE=1: did not find the model's weights $repo"
        mpiswarm_stage "staging weights" "$repo" "$MS_SERVER_HF_HOME/hub"
        # ... and the model-info cache, into the same directory (VLLM_CACHE_ROOT=/tmp/hf_home/hub/.vllm_cache).
        [[ -n $MPISWARM_VLLM_CACHE ]] && mpiswarm_stage "staging model-info cache" "$MPISWARM_VLLM_CACHE" "$MS_SERVER_HF_HOME/hub"
    else
        mpiswarm_log "weights not staged (MPISWARM_STAGE=0): the servers read HF_HOME=$MPISWARM_HF_HOME"
    fi
    return 0
}

mpiswarm_install_traps() {
    trap 'mpiswarm_on_signal TERM 15' TERM
    trap 'mpiswarm_on_signal INT 2' INT
    trap 'mpiswarm_on_signal HUP 1' HUP
    trap mpiswarm_on_exit EXIT
}

# PBS sends SIGTERM at the walltime (then SIGKILL after its kill delay). While mpiswarm runs,
# pass it on so mpiswarm writes every answered row and exits 75; otherwise leave at once (the
# EXIT trap stops the servers).
mpiswarm_on_signal() {  # mpiswarm_on_signal NAME NUMBER
    MS_SIGNALLED=1
    if [[ -n $MS_INTERRUPTED ]]; then
        mpiswarm_log "SIG$1 received again: already stopping"
        return
    fi
    MS_INTERRUPTED=$1
    if ((MS_STARTING)); then
        return  # mpiswarm_run passes it on as soon as it knows mpiswarm's pid
    fi
    if [[ -n $MS_RUN_PID ]] && kill -0 "$MS_RUN_PID" 2>/dev/null; then
        mpiswarm_log "SIG$1 received: passing SIGTERM to mpiswarm (pid $MS_RUN_PID) so it writes its partial file"
        kill -TERM "$MS_RUN_PID" 2>/dev/null
        MS_KILL_AT=$((SECONDS + MPISWARM_STOP_TIMEOUT))
    else
        mpiswarm_log "SIG$1 received: stopping"
        exit $((128 + $2))
    fi
}

mpiswarm_on_exit() {
    local rc=$?
    trap '' TERM INT HUP  # finish the cleanup whatever else arrives
    if ((MS_DRY_RUN)); then
        ((rc == 0)) && rc=${MS_DRY_RUN_RC:-0}
        echo "# dry run: nothing was started (exit $rc)"
        exit "$rc"
    fi
    if [[ -n $MS_RUN_PID ]] && kill -0 "$MS_RUN_PID" 2>/dev/null; then
        kill -TERM "$MS_RUN_PID" 2>/dev/null
        MS_KILL_AT=$((SECONDS + MPISWARM_STOP_TIMEOUT))
        MS_SIGNALLED=1
        mpiswarm_wait_run "$MS_RUN_PID"
    fi
    mpiswarm_stop_servers
    mpiswarm_copper_stop
    if ((${#MS_LAUNCHER_PIDS[@]})); then
        local died label
        local -a logs=()
        for label in "${MS_LABELS[@]}"; do
            logs+=("$MPISWARM_LOG_DIR/launcher-$label.log")
        done
        died=$(grep -h -E '^mpiswarm-server: (died|killed|restarted) ' "${logs[@]}" 2>/dev/null)
        [[ -z $died ]] || mpiswarm_log "servers lost during the job (mpiswarm fails over to live ones;" \
            "a restarted one rejoins once healthy, within mpiswarm's --revive-interval):"$'\n'"$died"
        mpiswarm_log "server logs: $MPISWARM_LOG_DIR"
    fi
    mpiswarm_log "exit code $rc"
    exit "$rc"
}

mpiswarm_start_servers() {
    local i j script node port host_ip cmd
    local -a launch
    script="$(declare -f mpiswarm_nap mpiswarm_http_ok mpiswarm_node_tail mpiswarm_node_stop mpiswarm_node_rank \
        mpiswarm_server_env mpiswarm_hsn_ip mpiswarm_node_launch mpiswarm_node_serve)"
    script+=$'\nmpiswarm_node_serve "$@"\n'
    MS_LAUNCHER_PIDS=()
    for i in "${!MS_NODES[@]}"; do
        node=${MS_NODES[i]}
        # One launcher a node, one rank a server: PALS binds each rank (and the server it starts)
        # to its entry of the --cpu-bind list.
        launch=("${MS_MPIEXEC[@]}" -n "$MPISWARM_PPN" --ppn "$MPISWARM_PPN" --hosts "$node" "${MS_LAUNCH_OPTS[@]}")
        if ((MS_DRY_RUN)); then
            mpiswarm_show "launcher $node" "${launch[@]}" bash -c '<mpiswarm_node_serve from jobs/lib.sh: one server a rank>'
            host_ip="<the HSN address of $node: getent hosts $node.hsn.cm.aurora.alcf.anl.gov>"
            for ((j = 0; j < MPISWARM_PPN; j++)); do
                port=$((MPISWARM_BASE_PORT + j))
                printf 'server %s:%s (tile %s): environment: %s\n' "$node" "$port" "$j" "$(mpiswarm_server_env "$j" \
                    "$MPISWARM_PPN" "$MPISWARM_TP" "$MPISWARM_VLLM_PORT_BASE" "$MPISWARM_NODE_TMP" "$MS_SERVER_HF_HOME" \
                    "$MS_CACHE_ROOT" "$MS_PYTHONPATH_PREFIX" "$host_ip" | paste -sd ' ')"
                cmd=${MPISWARM_SERVER//\{port\}/"$port"}
                cmd=${cmd//\{tile\}/"$j"}
                printf 'server %s:%s (tile %s): command: %s\n' "$node" "$port" "$j" "${cmd//\{node\}/"$node"}"
            done
            continue
        fi
        "${launch[@]}" bash -c "$script" mpiswarm-node "$node" "${MS_LABELS[i]}" "$MPISWARM_BASE_PORT" \
            "$MPISWARM_PPN" "$MPISWARM_TP" "$MPISWARM_HEALTH_TIMEOUT" "$MPISWARM_STOP_TIMEOUT" "$MPISWARM_LOG_DIR" \
            "$MPISWARM_VLLM_PORT_BASE" "$MPISWARM_NODE_TMP" "$MS_SERVER_HF_HOME" "$MS_CACHE_ROOT" \
            "$MS_PYTHONPATH_PREFIX" "$MPISWARM_SERVER" "$MPISWARM_SERVER_RESTARTS" \
            >"$MPISWARM_LOG_DIR/launcher-${MS_LABELS[i]}.log" 2>&1 </dev/null &
        MS_LAUNCHER_PIDS[i]=$!
    done
    ((MS_DRY_RUN)) && return 0
    printf '%s\n' "${MS_LAUNCHER_PIDS[@]}" >"$MPISWARM_LOG_DIR/launchers.pid"
    mpiswarm_log "started ${#MS_NODES[@]} server launcher(s) (mpiexec -n $MPISWARM_PPN --ppn $MPISWARM_PPN each; pids in $MPISWARM_LOG_DIR/launchers.pid)"
}

# Wait until every node reported "ready" or "failed", its launcher ended, or the deadline
# passed. Sets MS_HEALTHY_NODES; fails (exit 4) with the nodes, ports and log tails of the
# servers that never came up unless at least MPISWARM_MIN_NODES nodes are ready.
mpiswarm_wait_servers() {
    local -A state=() why=()
    local -a files=() failed=() down=()
    local i node word port rest rc n_pending n_ready log
    local deadline=$((SECONDS + MPISWARM_HEALTH_TIMEOUT + MPISWARM_LAUNCH_GRACE)) t0=$SECONDS next_note=$((SECONDS + 60))
    if ((MS_DRY_RUN)); then
        MS_HEALTHY_NODES=("${MS_NODES[@]}")
        return 0
    fi
    for i in "${!MS_NODES[@]}"; do
        files+=("$MPISWARM_LOG_DIR/launcher-${MS_LABELS[i]}.log")
        state[${MS_NODES[i]}]=pending
    done
    mpiswarm_log "waiting up to $MPISWARM_HEALTH_TIMEOUT s for $((${#MS_NODES[@]} * MPISWARM_PPN)) server(s) to answer /health"
    while :; do
        # Each server reports "ready NODE PORT" or "failed NODE PORT ..." once: a node is ready
        # when all MPISWARM_PPN of its servers are, failed as soon as one of them failed.
        local -A n_up=()
        while read -r _ word node port rest; do
            [[ ${state[$node]-} == pending ]] || continue
            if [[ $word == ready ]]; then
                n_up[$node]=$((${n_up[$node]:-0} + 1))
            else
                state[$node]=failed
                [[ -n $rest ]] && why[$node]="(port $port: $rest)"
            fi
        done < <(grep -h -E '^mpiswarm-server: (ready|failed) ' "${files[@]}" 2>/dev/null)
        n_pending=0
        n_ready=0
        for i in "${!MS_NODES[@]}"; do
            node=${MS_NODES[i]}
            if [[ ${state[$node]} == pending ]] && ((${n_up[$node]:-0} >= MPISWARM_PPN)); then
                state[$node]=ready
            fi
            [[ ${state[$node]} == ready ]] && n_ready=$((n_ready + 1))
            [[ ${state[$node]} == pending ]] || continue
            if ! kill -0 "${MS_LAUNCHER_PIDS[i]}" 2>/dev/null; then
                log=${files[i]}
                if (($(grep -c -E "^mpiswarm-server: ready " "$log" 2>/dev/null) >= MPISWARM_PPN)); then
                    continue  # reported just before ending: counted on the next pass
                fi
                wait "${MS_LAUNCHER_PIDS[i]}"
                rc=$?
                state[$node]=failed
                grep -q -E "^mpiswarm-server: failed " "$log" 2>/dev/null ||
                    why[$node]="(its launcher ended with code $rc before every server reported)"
                continue
            fi
            n_pending=$((n_pending + 1))
        done
        ((n_pending == 0)) && break
        if ((SECONDS >= deadline)); then
            for node in "${MS_NODES[@]}"; do
                [[ ${state[$node]} == pending ]] || continue
                state[$node]=failed
                why[$node]="(no report from its launcher within $((SECONDS - t0)) s)"
            done
            break
        fi
        if ((SECONDS >= next_note)); then
            mpiswarm_log "$n_ready node(s) ready, $n_pending still loading ($((SECONDS - t0)) s)"
            next_note=$((SECONDS + 60))
        fi
        mpiswarm_nap 1
    done

    MS_HEALTHY_NODES=()
    for i in "${!MS_NODES[@]}"; do
        node=${MS_NODES[i]}
        if [[ ${state[$node]} == ready ]]; then
            MS_HEALTHY_NODES+=("$node")
        else
            failed+=("$node")
            mapfile -t -O "${#down[@]}" down < <(awk -v n="$node" \
                '$1 == "mpiswarm-server:" && $2 == "down" && $3 == n { sub(/:$/, "", $4); print $3 ":" $4 }' "${files[i]}" 2>/dev/null)
            [[ ${down[*]-} == *"$node:"* ]] || down+=("$node")
            mpiswarm_log "node $node: servers not healthy${why[$node]:+ ${why[$node]}}:"
            # The launcher's report: each port that never came up, why, and its log's end.
            grep -v -E '^mpiswarm-server: (started|up|stopped|ready) ' "${files[i]}" 2>/dev/null | tail -n 100 >&2
        fi
    done
    mpiswarm_log "${#MS_HEALTHY_NODES[@]} of ${#MS_NODES[@]} node(s) ready after $((SECONDS - t0)) s"
    if ((${#failed[@]})); then
        if ((${#MS_HEALTHY_NODES[@]} < MPISWARM_MIN_NODES)); then
            mpiswarm_log "error: servers not healthy within $MPISWARM_HEALTH_TIMEOUT s: ${down[*]}" \
                "(server logs in $MPISWARM_LOG_DIR); ${#MS_HEALTHY_NODES[@]} node(s) ready, MPISWARM_MIN_NODES=$MPISWARM_MIN_NODES"
            return "$MPISWARM_JOB_EXIT_UNHEALTHY"
        fi
        mpiswarm_log "warning: going on without ${failed[*]} (MPISWARM_MIN_NODES=$MPISWARM_MIN_NODES)"
    fi
    return 0
}

# Wait for the mpiswarm job; a trapped signal interrupts `wait`, so wait again (bounded after
# the signal: MPISWARM_STOP_TIMEOUT seconds, then SIGKILL). Returns mpiswarm's exit code.
mpiswarm_wait_run() {
    local pid=$1 rc
    wait "$pid"
    rc=$?
    while ((MS_SIGNALLED)); do
        MS_SIGNALLED=0
        while kill -0 "$pid" 2>/dev/null; do
            if [[ -n $MS_KILL_AT ]] && ((SECONDS >= MS_KILL_AT)); then
                mpiswarm_log "mpiswarm still running $MPISWARM_STOP_TIMEOUT s after SIGTERM: killing it"
                kill -KILL "$pid" 2>/dev/null
                MS_KILL_AT=
            fi
            mpiswarm_nap 0.5
        done
        wait "$pid"
        rc=$?
    done
    return "$rc"
}

# mpiswarm_run OUTPUT N_NODES [MPISWARM_ARGS...]: mpiswarm on the first N healthy nodes,
# MPISWARM_PPN ranks each, rank i of a node talking to the server on port BASE+i of its node.
mpiswarm_run() {
    local output=$1 n=$2 hosts rc
    shift 2
    local -a nodes=("${MS_HEALTHY_NODES[@]:0:n}")
    hosts=$(IFS=,; printf '%s' "${nodes[*]}")
    # The ranks' environment: a TMPDIR of their own under mpiexec (ALCF Aurora Known Issues #7)
    # and, with Copper, imports through its mount (ALCF Copper docs: PYTHONPATH only).
    local -a rank_env=("TMPDIR=$MPISWARM_NODE_TMP")
    [[ -n $MS_PYTHONPATH_PREFIX ]] && rank_env+=("PYTHONPATH=$MS_PYTHONPATH_PREFIX${PYTHONPATH:+:$PYTHONPATH}")
    # mpiswarm's own exit code, written by rank 0 before any rank exits: once mpiexec has passed
    # a SIGTERM on, MPICH's Hydra SIGKILLs the ranks still finalising as soon as one exits and
    # reports signal 9, not the job's 75 (seen with strace; mpiswarm/cli.py EXIT_FILE_VARIABLE)
    local exit_file="$output.exit"
    rank_env+=("MPISWARM_EXIT_FILE=$exit_file")
    local -a cmd=("${MS_MPIEXEC[@]}" -n $((n * MPISWARM_PPN)) --ppn "$MPISWARM_PPN" --hosts "$hosts"
        "${MS_RUN_OPTS[@]}" env "${rank_env[@]}" "${MS_CMD[@]}" run "$MPISWARM_INPUT" -o "$output" --model "$MPISWARM_MODEL"
        --endpoint 'http://127.0.0.1:{port}/v1' --base-port "$MPISWARM_BASE_PORT" "${MS_EXTRA[@]}" "$@")
    if ((MS_DRY_RUN)); then
        mpiswarm_show "mpiswarm on $n node(s)" "${cmd[@]}"
        return 0
    fi
    if [[ -n $MS_INTERRUPTED ]]; then
        mpiswarm_log "not starting mpiswarm: SIG$MS_INTERRUPTED received"
        return "$MPISWARM_JOB_EXIT_RESUME"
    fi
    mpiswarm_show "mpiswarm on $n node(s)" "${cmd[@]}"
    rm -f "$exit_file"  # an earlier job's
    MS_SIGNALLED=0
    MS_STARTING=1
    "${cmd[@]}" </dev/null &
    MS_RUN_PID=$!
    MS_STARTING=0
    if [[ -n $MS_INTERRUPTED ]]; then  # a signal came while mpiswarm was being started
        mpiswarm_log "SIG$MS_INTERRUPTED received: passing SIGTERM to mpiswarm (pid $MS_RUN_PID)"
        kill -TERM "$MS_RUN_PID" 2>/dev/null
        MS_KILL_AT=$((SECONDS + MPISWARM_STOP_TIMEOUT))
        MS_SIGNALLED=1
    fi
    mpiswarm_wait_run "$MS_RUN_PID"
    rc=$?
    MS_RUN_PID=
    if [[ -s $exit_file ]]; then
        local said
        said=$(<"$exit_file")
        rm -f "$exit_file"
        if [[ $said =~ ^[0-9]+$ ]] && ((said != rc)); then
            mpiswarm_log "mpiexec exited $rc where mpiswarm exited $said (the launcher killed ranks that were" \
                "already done): taking $said"
            rc=$said
        fi
    fi
    return "$rc"
}

mpiswarm_explain_exit() {  # mpiswarm_explain_exit CODE OUTPUT
    ((MS_DRY_RUN)) && return 0
    case $1 in
        0) mpiswarm_log "mpiswarm exit 0: every prompt answered, in $2" ;;
        1) mpiswarm_log "mpiswarm exit 1: the job was aborted (see the rank's message above)" ;;
        2) mpiswarm_log "mpiswarm exit 2: usage or input error, nothing was sent" ;;
        3) mpiswarm_log "mpiswarm exit 3: finished, some prompts failed (their 'error' column in $2 says why)" ;;
        4) mpiswarm_log "mpiswarm exit 4: an endpoint was not healthy for mpiswarm, nothing was sent" ;;
        75) mpiswarm_log "mpiswarm exit 75: interrupted; $2 holds every answered row (complete = False)." \
            "Submit the same job again, same MPISWARM_* settings, to resume: only the unanswered prompts are sent" ;;
        *) mpiswarm_log "mpiswarm exit $1 (killed by a signal or launcher failure if > 128)" ;;
    esac
}

mpiswarm_stop_servers() {
    local -a alive=()
    local pid t_end
    for pid in "${MS_LAUNCHER_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && alive+=("$pid")
    done
    ((${#alive[@]})) || return 0
    mpiswarm_log "stopping the servers (${#alive[@]} launcher(s))"
    kill -TERM "${alive[@]}" 2>/dev/null
    # Each launcher gives its servers MPISWARM_STOP_TIMEOUT s before SIGKILL: allow that and more.
    t_end=$((SECONDS + MPISWARM_STOP_TIMEOUT + 15))
    while :; do
        local -a still=()
        for pid in "${alive[@]}"; do
            kill -0 "$pid" 2>/dev/null && still+=("$pid")
        done
        ((${#still[@]})) || break
        if ((SECONDS >= t_end)); then
            mpiswarm_log "warning: killing ${#still[@]} launcher(s) still running: ${still[*]}"
            kill -KILL "${still[@]}" 2>/dev/null
            break
        fi
        mpiswarm_nap 0.5
    done
    for pid in "${alive[@]}"; do
        wait "$pid" 2>/dev/null
    done
    return 0
}

mpiswarm_node_counts() {  # MS_COUNTS = MPISWARM_NODE_COUNTS, or 1 2 4 ... up to the job's nodes
    local max=${#MS_NODES[@]} n
    local -a wanted=()
    MS_COUNTS=()
    read -r -a wanted <<<"${MPISWARM_NODE_COUNTS//,/ }"
    if ((${#wanted[@]})); then
        for n in "${wanted[@]}"; do
            if ! [[ $n =~ ^[0-9]+$ ]] || ((10#$n < 1)); then
                mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "MPISWARM_NODE_COUNTS: '$n' is not a node count"
            fi
            ((10#$n <= max)) ||
                mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "MPISWARM_NODE_COUNTS: $n nodes, but the job has $max"
            MS_COUNTS+=("$((10#$n))")
        done
        return 0
    fi
    for ((n = 1; n < max; n *= 2)); do
        MS_COUNTS+=("$n")
    done
    MS_COUNTS+=("$max")
}
