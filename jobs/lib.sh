# shellcheck shell=bash
# mpiswarm job library, sourced by jobs/aurora_batch.pbs and jobs/aurora_scaling.pbs.
#
# A job: mpiswarm_setup (settings, nodes, launcher), mpiswarm_install_traps, then
# mpiswarm_start_servers (one `mpiexec -n 1 --ppn 1 --hosts NODE` launcher per node, each
# starting MPISWARM_PPN servers on its node), mpiswarm_wait_servers (every /health, with a
# deadline), mpiswarm_run OUTPUT N_NODES (mpiswarm on the first N healthy nodes). The EXIT
# trap stops mpiswarm and every server, whatever the way out.
#
# Settings (environment, with defaults; see README "Running on Aurora"):
#   MPISWARM_INPUT MPISWARM_OUTPUT MPISWARM_MODEL MPISWARM_PPN MPISWARM_BASE_PORT
#   MPISWARM_SERVER MPISWARM_HEALTH_TIMEOUT MPISWARM_LOG_DIR MPISWARM_EXTRA_ARGS
#   MPISWARM_CPU_BIND MPISWARM_MIN_NODES MPISWARM_STOP_TIMEOUT MPISWARM_LAUNCH_GRACE
#   MPISWARM_CMD MPISWARM_MPIEXEC MPISWARM_MODULES MPISWARM_VENV
#
# Exit codes of the scripts: mpiswarm's own (0, 1, 2, 3, 4, 75) once it ran; before that
# 2 = a bad setting, 4 = servers not healthy in time, 128+N = killed by signal N.

MPISWARM_JOB_EXIT_USAGE=2
MPISWARM_JOB_EXIT_UNHEALTHY=4
MPISWARM_JOB_EXIT_RESUME=75
# 12 ranks a node on Aurora, 8 cores each, both sockets (DESIGN.md section 3).
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
MS_LAUNCH_OPTS=()      # mpiexec options of the server launchers (--cpu-bind none)
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

# mpiswarm_node_launch CMD LOG USE_SETSID: start one server (in a session of its own when
# USE_SETSID is set, so that stopping it stops its children), its output appended to LOG; its pid
# in MS_NODE_PID.
mpiswarm_node_launch() {
    if [[ -n $3 ]]; then
        setsid bash -c "$1" >>"$2" 2>&1 </dev/null &
    else
        bash -c "$1" >>"$2" 2>&1 </dev/null &
    fi
    MS_NODE_PID=$!
}

# mpiswarm_node_serve NODE LABEL BASE_PORT PPN HEALTH_TIMEOUT STOP_TIMEOUT LOG_DIR TEMPLATE [RESTARTS]
# Start PPN servers (TEMPLATE with {port} {tile} {node} replaced) on ports BASE_PORT.., wait for
# their /health on 127.0.0.1, report on stdout, keep them until SIGTERM, then stop them. A server
# that exits while serving is started again, at most RESTARTS times (default 0), so that it can
# rejoin (mpiswarm looks at dead endpoints every --revive-interval seconds).
# Report lines: "mpiswarm-server: started|up|down|died|restarted NODE PORT ..." and, once,
# "mpiswarm-server: ready NODE" or "mpiswarm-server: failed NODE"; last "stopped NODE".
mpiswarm_node_serve() {
    local node=$1 label=$2 base=$3 ppn=$4 health_timeout=$5 stop_timeout=$6 log_dir=$7 template=$8
    local max_restarts=${9:-0}
    local -a pids=() state=() running=() cmds=() restarts=()
    local j port cmd log rc deadline n_pending n_down=0 t0=$SECONDS use_setsid=
    MPISWARM_NODE_STOP=
    trap 'MPISWARM_NODE_STOP=TERM' TERM
    trap 'MPISWARM_NODE_STOP=INT' INT
    trap 'MPISWARM_NODE_STOP=HUP' HUP
    # The servers are not ranks of this launcher's MPI job: do not hand them its PMI settings
    # (oneCCL and torch.distributed inside vLLM would read them).
    unset "${!PMI_@}" "${!PMIX_@}" "${!PALS_@}" "${!HYDI_@}" MPI_LOCALRANKID MPI_LOCALNRANKS
    command -v setsid >/dev/null 2>&1 && use_setsid=1
    if ! mkdir -p "$log_dir"; then
        echo "mpiswarm-server: down $node $base: cannot create the log directory $log_dir"
        echo "mpiswarm-server: failed $node"
        return 1
    fi
    for ((j = 0; j < ppn; j++)); do
        port=$((base + j))
        log="$log_dir/server-$label-$port.log"
        cmd=${template//\{port\}/"$port"}
        cmd=${cmd//\{tile\}/"$j"}
        cmd=${cmd//\{node\}/"$node"}
        printf '# mpiswarm: %s on %s (tile %s): %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$node" "$j" "$cmd" >"$log"
        mpiswarm_node_launch "$cmd" "$log" "$use_setsid"
        pids[j]=$MS_NODE_PID
        cmds[j]=$cmd
        restarts[j]=0
        state[j]=pending
        running+=("${pids[j]}")
        echo "${pids[j]}" >"$log_dir/server-$label-$port.pid"
        echo "mpiswarm-server: started $node $port pid ${pids[j]} tile $j log $log"
    done

    deadline=$((SECONDS + health_timeout))
    while :; do
        n_pending=0
        for ((j = 0; j < ppn; j++)); do
            [[ ${state[j]} == pending ]] || continue
            port=$((base + j))
            log="$log_dir/server-$label-$port.log"
            if ! kill -0 "${pids[j]}" 2>/dev/null; then
                wait "${pids[j]}"
                rc=$?
                state[j]=down
                n_down=$((n_down + 1))
                echo "mpiswarm-server: down $node $port: the server exited with code $rc before /health answered"
                mpiswarm_node_tail "$log" "$node:$port|"
            elif mpiswarm_http_ok "http://127.0.0.1:$port/health"; then
                state[j]=up
                echo "mpiswarm-server: up $node $port after $((SECONDS - t0)) s"
            else
                n_pending=$((n_pending + 1))
            fi
        done
        ((n_pending == 0)) && break
        [[ -n $MPISWARM_NODE_STOP ]] && break
        if ((SECONDS >= deadline)); then
            for ((j = 0; j < ppn; j++)); do
                [[ ${state[j]} == pending ]] || continue
                port=$((base + j))
                state[j]=down
                n_down=$((n_down + 1))
                echo "mpiswarm-server: down $node $port: /health did not answer within ${health_timeout} s"
                mpiswarm_node_tail "$log_dir/server-$label-$port.log" "$node:$port|"
            done
            break
        fi
        mpiswarm_nap 1
    done

    if [[ -n $MPISWARM_NODE_STOP ]]; then
        echo "mpiswarm-server: failed $node (SIG$MPISWARM_NODE_STOP before every server was up)"
    elif ((n_down > 0)); then
        echo "mpiswarm-server: failed $node"
    else
        echo "mpiswarm-server: ready $node"
        while [[ -z $MPISWARM_NODE_STOP ]]; do
            mpiswarm_nap 1
            for ((j = 0; j < ppn; j++)); do
                [[ ${state[j]} == up ]] || continue
                kill -0 "${pids[j]}" 2>/dev/null && continue
                wait "${pids[j]}"
                rc=$?
                state[j]=died
                port=$((base + j))
                echo "mpiswarm-server: died $node $port: exited with code $rc while serving"
                log="$log_dir/server-$label-$port.log"
                mpiswarm_node_tail "$log" "$node:$port|"
                ((restarts[j] < max_restarts)) || continue
                restarts[j]=$((restarts[j] + 1))
                printf '# mpiswarm: %s restart %s of %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "${restarts[j]}" \
                    "$max_restarts" >>"$log"
                mpiswarm_node_launch "${cmds[j]}" "$log" "$use_setsid"
                pids[j]=$MS_NODE_PID
                running+=("${pids[j]}")
                echo "${pids[j]}" >"$log_dir/server-$label-$port.pid"
                state[j]=up  # serving again once its /health answers: mpiswarm looks by itself
                echo "mpiswarm-server: restarted $node $port pid ${pids[j]} (restart ${restarts[j]} of $max_restarts)"
            done
        done
    fi
    ((${#running[@]})) && mpiswarm_node_stop "$stop_timeout" "${running[@]}"
    echo "mpiswarm-server: stopped $node"
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

mpiswarm_default_server() {  # the Aurora vLLM command line for MPISWARM_PPN servers a node
    local model hf
    model=$(printf '%q' "$MPISWARM_MODEL")
    hf=$(printf '%q' "${HF_HOME:-/flare/datasets/model-weights/hub}")
    if ((MPISWARM_PPN == 1)); then
        # One server a node, tensor parallel over 8 tiles; VLLM_HOST_IP = the node's HSN address.
        # shellcheck disable=SC2016  # expanded by the server's shell, on its node
        printf '%s' "HF_HOME=$hf HF_HUB_OFFLINE=1 ZE_FLAT_DEVICE_HIERARCHY=FLAT" \
            ' VLLM_HOST_IP=$(getent hosts "$(hostname).hsn.cm.aurora.alcf.anl.gov" | awk '"'"'{print $1}'"'"' | sort | head -n 1)' \
            " vllm serve $model --port {port} --dtype bfloat16 --enforce-eager --tensor-parallel-size 8"
    else
        # One server a tile (ZE_FLAT_DEVICE_HIERARCHY=FLAT: tiles are devices 0..11).
        printf '%s' "HF_HOME=$hf HF_HUB_OFFLINE=1 ZE_FLAT_DEVICE_HIERARCHY=FLAT ZE_AFFINITY_MASK={tile}" \
            " vllm serve $model --port {port} --dtype bfloat16 --enforce-eager"
    fi
}

mpiswarm_mpiexec_has_cpu_bind() {  # Cray PALS has --cpu-bind; MPICH's Hydra does not
    local text
    text=$("${MS_MPIEXEC[@]}" --help 2>&1; "${MS_MPIEXEC[@]}" --version 2>&1)
    [[ $text == *cpu-bind* || $text == *PALS* ]]
}

mpiswarm_setup() {
    # Relative paths are relative to where qsub ran, as PBS users expect.
    if [[ -n ${PBS_JOBID:-} && -n ${PBS_O_WORKDIR:-} ]]; then
        cd "$PBS_O_WORKDIR" || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "cannot cd to $PBS_O_WORKDIR"
    fi
    : "${MPISWARM_MODULES=frameworks}"
    if [[ -n $MPISWARM_MODULES ]] && type module >/dev/null 2>&1; then
        mpiswarm_log "module load $MPISWARM_MODULES"
        local -a modules
        read -r -a modules <<<"$MPISWARM_MODULES"
        module load "${modules[@]}" || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "module load $MPISWARM_MODULES failed"
    fi
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
    MPISWARM_SERVER_RESTARTS=${MPISWARM_SERVER_RESTARTS:-2}  # times a server that exits is started again
    MPISWARM_LAUNCH_GRACE=${MPISWARM_LAUNCH_GRACE:-60}
    mpiswarm_require_int MPISWARM_PPN 1
    mpiswarm_require_int MPISWARM_BASE_PORT 1
    mpiswarm_require_int MPISWARM_HEALTH_TIMEOUT 1
    mpiswarm_require_int MPISWARM_STOP_TIMEOUT 1
    mpiswarm_require_int MPISWARM_SERVER_RESTARTS 0
    mpiswarm_require_int MPISWARM_LAUNCH_GRACE 0
    ((MPISWARM_BASE_PORT + MPISWARM_PPN - 1 <= 65535)) ||
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "ports $MPISWARM_BASE_PORT..$((MPISWARM_BASE_PORT + MPISWARM_PPN - 1)) exceed 65535"
    MPISWARM_SERVER=${MPISWARM_SERVER:-$(mpiswarm_default_server)}
    if [[ -z ${MPISWARM_CPU_BIND+set} ]]; then
        MPISWARM_CPU_BIND=
        ((MPISWARM_PPN == 12)) && MPISWARM_CPU_BIND=$MPISWARM_AURORA_CPU_LIST
    fi

    # Fail now, not after the servers spent half an hour loading.
    [[ -f $MPISWARM_INPUT && -r $MPISWARM_INPUT ]] ||
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "MPISWARM_INPUT: no readable file $MPISWARM_INPUT (in $PWD)"
    local out_dir
    out_dir=$(dirname -- "$MPISWARM_OUTPUT")
    [[ -d $out_dir && -w $out_dir ]] ||
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "MPISWARM_OUTPUT: directory $out_dir does not exist or is not writable"

    [[ -n ${PBS_NODEFILE:-} ]] ||
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "PBS_NODEFILE is not set: submit with qsub, or point it at a file listing hosts (localhost to run here)"
    [[ -r $PBS_NODEFILE ]] || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "cannot read PBS_NODEFILE=$PBS_NODEFILE"
    mapfile -t MS_NODES < <(awk 'NF && !seen[$1]++ { print $1 }' "$PBS_NODEFILE")
    ((${#MS_NODES[@]})) || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "PBS_NODEFILE=$PBS_NODEFILE lists no host"
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

    MPISWARM_LOG_DIR=${MPISWARM_LOG_DIR:-$PWD/mpiswarm-logs/${PBS_JOBID:-local-$(date +%Y%m%d-%H%M%S)-$$}}
    mkdir -p "$MPISWARM_LOG_DIR" || mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "cannot create MPISWARM_LOG_DIR=$MPISWARM_LOG_DIR"
    MPISWARM_LOG_DIR=$(cd "$MPISWARM_LOG_DIR" && pwd)

    mpiswarm_words MS_MPIEXEC "${MPISWARM_MPIEXEC:-mpiexec}"
    command -v "${MS_MPIEXEC[0]}" >/dev/null 2>&1 ||
        mpiswarm_die "$MPISWARM_JOB_EXIT_USAGE" "no ${MS_MPIEXEC[0]} on PATH (set MPISWARM_MPIEXEC or load your MPI module)"
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
    local bind_note="no --cpu-bind"
    if mpiswarm_mpiexec_has_cpu_bind; then
        MS_LAUNCH_OPTS=(--cpu-bind none)  # the servers use the whole node
        if [[ -n $MPISWARM_CPU_BIND ]]; then
            MS_RUN_OPTS=(--cpu-bind "$MPISWARM_CPU_BIND")
            bind_note="--cpu-bind $MPISWARM_CPU_BIND"
        fi
    elif [[ -n $MPISWARM_CPU_BIND ]]; then
        bind_note="this mpiexec has no --cpu-bind (MPICH Hydra?): MPISWARM_CPU_BIND=$MPISWARM_CPU_BIND not applied"
    fi

    # The ranks' requests to 127.0.0.1 never go through an HTTP proxy (Aurora's login settings
    # often export http_proxy for pip; Python's httpx, used by mpiswarm, honours it).
    export no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
    export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"

    mpiswarm_log "job ${PBS_JOBID:-(not under PBS)}: ${#MS_NODES[@]} node(s) ${MS_NODES[*]}"
    mpiswarm_log "$MPISWARM_PPN server(s) and rank(s) a node on ports $MPISWARM_BASE_PORT..$((MPISWARM_BASE_PORT + MPISWARM_PPN - 1)); model $MPISWARM_MODEL"
    mpiswarm_log "server: $MPISWARM_SERVER"
    mpiswarm_log "mpiexec: ${MS_MPIEXEC[*]} ($bind_note); mpiswarm: ${MS_CMD[*]}"
    mpiswarm_log "input $MPISWARM_INPUT, output $MPISWARM_OUTPUT, logs $MPISWARM_LOG_DIR"
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
    if [[ -n $MS_RUN_PID ]] && kill -0 "$MS_RUN_PID" 2>/dev/null; then
        kill -TERM "$MS_RUN_PID" 2>/dev/null
        MS_KILL_AT=$((SECONDS + MPISWARM_STOP_TIMEOUT))
        MS_SIGNALLED=1
        mpiswarm_wait_run "$MS_RUN_PID"
    fi
    mpiswarm_stop_servers
    if ((${#MS_LAUNCHER_PIDS[@]})); then
        local died label
        local -a logs=()
        for label in "${MS_LABELS[@]}"; do
            logs+=("$MPISWARM_LOG_DIR/launcher-$label.log")
        done
        died=$(grep -h -E '^mpiswarm-server: (died|killed|restarted) ' "${logs[@]}" 2>/dev/null)
        [[ -z $died ]] ||
            mpiswarm_log "servers lost during the job (mpiswarm fails over to live ones; restarted ones rejoin):"$'\n'"$died"
        mpiswarm_log "server logs: $MPISWARM_LOG_DIR"
    fi
    mpiswarm_log "exit code $rc"
    exit "$rc"
}

mpiswarm_start_servers() {
    local i script
    script="$(declare -f mpiswarm_nap mpiswarm_http_ok mpiswarm_node_tail mpiswarm_node_stop mpiswarm_node_launch \
        mpiswarm_node_serve)"
    script+=$'\nmpiswarm_node_serve "$@"\n'
    MS_LAUNCHER_PIDS=()
    for i in "${!MS_NODES[@]}"; do
        "${MS_MPIEXEC[@]}" -n 1 --ppn 1 --hosts "${MS_NODES[i]}" "${MS_LAUNCH_OPTS[@]}" \
            bash -c "$script" mpiswarm-node "${MS_NODES[i]}" "${MS_LABELS[i]}" "$MPISWARM_BASE_PORT" \
            "$MPISWARM_PPN" "$MPISWARM_HEALTH_TIMEOUT" "$MPISWARM_STOP_TIMEOUT" "$MPISWARM_LOG_DIR" \
            "$MPISWARM_SERVER" "$MPISWARM_SERVER_RESTARTS" >"$MPISWARM_LOG_DIR/launcher-${MS_LABELS[i]}.log" \
            2>&1 </dev/null &
        MS_LAUNCHER_PIDS[i]=$!
    done
    printf '%s\n' "${MS_LAUNCHER_PIDS[@]}" >"$MPISWARM_LOG_DIR/launchers.pid"
    mpiswarm_log "started ${#MS_NODES[@]} server launcher(s) (mpiexec --ppn 1 each; pids in $MPISWARM_LOG_DIR/launchers.pid)"
}

# Wait until every node reported "ready" or "failed", its launcher ended, or the deadline
# passed. Sets MS_HEALTHY_NODES; fails (exit 4) with the nodes, ports and log tails of the
# servers that never came up unless at least MPISWARM_MIN_NODES nodes are ready.
mpiswarm_wait_servers() {
    local -A state=() why=()
    local -a files=() failed=() down=()
    local i node word rest rc n_pending n_ready log
    local deadline=$((SECONDS + MPISWARM_HEALTH_TIMEOUT + MPISWARM_LAUNCH_GRACE)) t0=$SECONDS next_note=$((SECONDS + 60))
    for i in "${!MS_NODES[@]}"; do
        files+=("$MPISWARM_LOG_DIR/launcher-${MS_LABELS[i]}.log")
        state[${MS_NODES[i]}]=pending
    done
    mpiswarm_log "waiting up to $MPISWARM_HEALTH_TIMEOUT s for $((${#MS_NODES[@]} * MPISWARM_PPN)) server(s) to answer /health"
    while :; do
        while read -r _ word node rest; do
            [[ ${state[$node]-} == pending ]] || continue
            state[$node]=$word
            [[ $word == failed && -n $rest ]] && why[$node]=$rest
        done < <(grep -h -E '^mpiswarm-server: (ready|failed) ' "${files[@]}" 2>/dev/null)
        n_pending=0
        n_ready=0
        for i in "${!MS_NODES[@]}"; do
            node=${MS_NODES[i]}
            [[ ${state[$node]} == ready ]] && n_ready=$((n_ready + 1))
            [[ ${state[$node]} == pending ]] || continue
            if ! kill -0 "${MS_LAUNCHER_PIDS[i]}" 2>/dev/null; then
                log=${files[i]}
                if grep -q -E "^mpiswarm-server: ready " "$log" 2>/dev/null; then
                    state[$node]=ready  # reported just before ending: counted on the next pass
                    continue
                fi
                wait "${MS_LAUNCHER_PIDS[i]}"
                rc=$?
                state[$node]=failed
                grep -q -E "^mpiswarm-server: failed " "$log" 2>/dev/null ||
                    why[$node]="(its launcher ended with code $rc before reporting)"
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
    local -a cmd=("${MS_MPIEXEC[@]}" -n $((n * MPISWARM_PPN)) --ppn "$MPISWARM_PPN" --hosts "$hosts"
        "${MS_RUN_OPTS[@]}" "${MS_CMD[@]}" run "$MPISWARM_INPUT" -o "$output" --model "$MPISWARM_MODEL"
        --endpoint 'http://127.0.0.1:{port}/v1' --base-port "$MPISWARM_BASE_PORT" "${MS_EXTRA[@]}" "$@")
    if [[ -n $MS_INTERRUPTED ]]; then
        mpiswarm_log "not starting mpiswarm: SIG$MS_INTERRUPTED received"
        return "$MPISWARM_JOB_EXIT_RESUME"
    fi
    mpiswarm_log "running on $n node(s): $(printf '%q ' "${cmd[@]}")"
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
    return "$rc"
}

mpiswarm_explain_exit() {  # mpiswarm_explain_exit CODE OUTPUT
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
