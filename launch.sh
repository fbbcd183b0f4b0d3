#!/usr/bin/env bash
# Launches resnet_jax.main on a TPU VM pod slice, a SLURM GPU cluster, or N local processes.
#
#   launch.sh tpu NAME ZONE TYPE -- <args of resnet_jax.main>   create/reuse a TPU VM, run on all workers
#   launch.sh tpu-logs NAME ZONE                                 tail the run's log on every worker
#   launch.sh tpu-delete NAME ZONE                               delete the TPU VM
#   launch.sh slurm NODES GPUS_PER_NODE -- <args>                sbatch one process per GPU
#   launch.sh local N -- <args>                                  N cooperating processes here
#
# DRY_RUN=1 prints every command instead of running it. Environment knobs: TPU_VERSION (runtime
# image, default tpu-ubuntu2204-base), REPO_URL / REPO_REF (TPU workers clone this instead of
# receiving this checkout's HEAD),
# SLURM_PARTITION, SLURM_TIME, SLURM_ACCOUNT, PORT (coordinator port, default 12355),
# DEVICES_PER_PROCESS (local mode: simulated CPU devices per process, default 4),
# STOP_GRACE_SECONDS (local mode: after one process fails, how long the others get to end by
# themselves before they are killed, default 10).
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

split_args() {  # everything after `--` goes to resnet_jax.main
  MAIN_ARGS=()
  local seen=0
  for a in "$@"; do
    if [[ $seen == 1 ]]; then MAIN_ARGS+=("$a"); elif [[ "$a" == -- ]]; then seen=1; fi
  done
  if [[ $seen == 0 ]]; then echo "launch.sh: put the arguments of resnet_jax.main after --" >&2; exit 2; fi
}

quoted_main_args() { printf '%q ' "${MAIN_ARGS[@]}"; }

tpu() {
  local name=$1 zone=$2 type=$3; shift 3; split_args "$@"
  local where=(--zone "$zone")
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "# if $name does not exist yet:"
    run gcloud compute tpus tpu-vm create "$name" "${where[@]}" --accelerator-type "$type" \
      --version "${TPU_VERSION:-tpu-ubuntu2204-base}"
  elif ! gcloud compute tpus tpu-vm describe "$name" "${where[@]}" >/dev/null 2>&1; then
    gcloud compute tpus tpu-vm create "$name" "${where[@]}" --accelerator-type "$type" \
      --version "${TPU_VERSION:-tpu-ubuntu2204-base}"
  fi
  # Every worker gets the same code (this checkout's HEAD, or REPO_URL at REPO_REF); all of them
  # must run main, or the others wait forever at the first collective.
  local fetch
  if [[ -n "${REPO_URL:-}" ]]; then
    fetch="rm -rf resnet_jax && git clone -q $REPO_URL resnet_jax && git -C resnet_jax checkout -q ${REPO_REF:-main}"
  else
    run git -C "$(dirname "$0")" archive --format=tar.gz -o /tmp/resnet_jax.tgz HEAD
    run gcloud compute tpus tpu-vm scp /tmp/resnet_jax.tgz "$name": "${where[@]}" --worker=all
    fetch="rm -rf resnet_jax && mkdir resnet_jax && tar -xzf resnet_jax.tgz -C resnet_jax"
  fi
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all \
    --command "set -e; $fetch; cd resnet_jax && pip install -q 'jax[tpu]' -e ."
  local cmd
  cmd="cd resnet_jax && nohup python3 -m resnet_jax.main $(quoted_main_args) > ~/resnet_jax.log 2>&1 &"
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command "$cmd"
  echo "Started on all workers of $name. Logs: launch.sh tpu-logs $name $zone"
}

slurm() {
  local nodes=$1 gpus=$2; shift 2; split_args "$@"
  # One task per GPU: jax.distributed.initialize() reads SLURM_* and binds each to its GPU.
  local script
  script=$(cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=resnet_jax
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$gpus
#SBATCH --gpus-per-node=$gpus
#SBATCH --cpus-per-task=${SLURM_CPUS_PER_TASK:-8}
#SBATCH --time=${SLURM_TIME:-72:00:00}
#SBATCH --signal=TERM@120
${SLURM_PARTITION:+#SBATCH --partition=$SLURM_PARTITION}
${SLURM_ACCOUNT:+#SBATCH --account=$SLURM_ACCOUNT}
srun --kill-on-bad-exit=1 python3 -m resnet_jax.main $(quoted_main_args)
SBATCH
)
  if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "$script"; echo "sbatch <script above>"; return; fi
  sbatch <<<"$script"
}

local_run() {
  local n=$1; shift; split_args "$@"
  local port=${PORT:-12355} per=${DEVICES_PER_PROCESS:-4} grace=${STOP_GRACE_SECONDS:-10}
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    for ((i = 0; i < n; i++)); do
      echo "JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i" \
        "python3 -m resnet_jax.main $(quoted_main_args)"
    done
    return 0
  fi
  local -A index=()  # pid -> process id
  local pids=() filters=() i err
  for ((i = 0; i < n; i++)); do
    # Each process's stderr passes through quiet_after_lost_coordinator (below).
    exec {err}> >(quiet_after_lost_coordinator)
    filters+=($!)
    JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i \
      XLA_FLAGS="--xla_force_host_platform_device_count=$per ${XLA_FLAGS:-}" \
      python3 -m resnet_jax.main "${MAIN_ARGS[@]}" 2>&$err &
    pids+=($!)
    index[$!]=$i
    exec {err}>&-
  done
  # SIGTERM / Ctrl-C: every process saves at the same step and exits; wait for them all.
  local stopping=0
  trap 'stopping=1; kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
  local status=0 left=("${pids[@]}") done_pid code deadline failed=''
  while ((${#left[@]})); do
    done_pid=''
    # (stderr: bash's own "Killed" report of a job; the line below says it better)
    wait -n -p done_pid "${left[@]}" 2>/dev/null && code=0 || code=$?
    if [[ -z "${done_pid:-}" ]]; then  # a trapped signal interrupted the wait, or bash had
      local alive=() p                  # already reaped the process: keep those still running
      for p in "${left[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
      left=("${alive[@]}")
      continue
    fi
    local still=() p
    for p in "${left[@]}"; do [[ "$p" != "$done_pid" ]] && still+=("$p"); done
    left=("${still[@]}")
    if ((code != 0 && status == 0)); then
      status=$code
      failed="process ${index[$done_pid]} (pid $done_pid) $(describe_exit "$code")"
      ((stopping)) && continue
      # A process that died takes the job with it: the others cannot finish a collective (or a
      # checkpoint) without it. Give them a moment to end on their own, then stop them.
      deadline=$((SECONDS + grace))
      {  # (bash reports each job that a signal ended, such as "Aborted": the last line says why)
        while ((SECONDS < deadline)) && kill -0 "${left[@]}"; do sleep 0.2; done
        kill -KILL "${left[@]}" || true
      } 2>/dev/null
    fi
  done
  wait "${filters[@]}" 2>/dev/null || true  # every process's last lines come before ours
  release_lock "${pids[@]}"
  if ((status != 0 && !stopping)); then  # last, after whatever the other processes printed
    echo "launch.sh: the job stopped: $failed. $(checkpoint_note)" >&2
  fi
  return "$status"
}

# A process whose coordinator (process 0) died is ended by JAX's coordination service with ~50
# lines (a check-failure stack, "Fatal Python error: Aborted", every thread's stack) that say
# only that another process died. They are dropped here; the launcher's last line names the
# process that died. Ctrl-C reaches this filter too: it ignores it, so a process saving its
# checkpoint after Ctrl-C can still write its lines.
quiet_after_lost_coordinator() {
  trap '' INT TERM
  awk '/Polled an error from coordination service|JAX distributed service detected fatal/ { quiet = 1 }
       !quiet { print; fflush() }' >&2
}

checkpoint_note() {  # what a failed local job leaves in its workdir
  local workdir='' a steps=()
  for a in "${MAIN_ARGS[@]}"; do [[ "$a" == --workdir=* ]] && workdir=${a#--workdir=}; done
  if [[ -d "$workdir/checkpoints" ]]; then
    mapfile -t steps < <(find "$workdir/checkpoints" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' -printf '%f\n' | sort -n)
  fi
  if ((${#steps[@]})); then
    echo "Its last checkpoint (step ${steps[-1]}) is kept: run the same command to resume."
  elif [[ "$workdir" == *://* ]]; then
    echo "Its checkpoints, if any, are kept: run the same command to resume."
  else
    echo "It had saved no checkpoint yet: run the same command to start again."
  fi
}

describe_exit() {  # an exit status as words
  if (($1 > 128)); then echo "was killed by SIG$(kill -l $(($1 - 128)))"; else echo "exited with code $1"; fi
}

release_lock() {  # removes WORKDIR/run.lock when one of these (now ended) pids on this host held it
  local workdir='' a
  for a in "${MAIN_ARGS[@]}"; do [[ "$a" == --workdir=* ]] && workdir=${a#--workdir=}; done
  [[ -n "$workdir" && -f "$workdir/run.lock" ]] || return 0
  python3 - "$workdir/run.lock" "$(hostname)" "$@" <<'PY'
import json, os, sys
path, host, pids = sys.argv[1], sys.argv[2], set(sys.argv[3:])
try:
  holder = json.load(open(path))
except (OSError, ValueError):
  sys.exit()
if holder.get('host') == host and str(holder.get('pid')) in pids:
  os.remove(path)
  print(f'launch.sh: released {path} (held by ended pid {holder["pid"]})', file=sys.stderr)
PY
}

case "${1:-}" in
  tpu) shift; [[ $# -ge 4 ]] || { usage; exit 2; }; tpu "$@" ;;
  tpu-logs) run gcloud compute tpus tpu-vm ssh "$2" --zone "$3" --worker=all --command "tail -n 20 ~/resnet_jax.log" ;;
  tpu-delete) run gcloud compute tpus tpu-vm delete "$2" --zone "$3" --quiet ;;
  slurm) shift; [[ $# -ge 3 ]] || { usage; exit 2; }; slurm "$@" ;;
  local) shift; [[ $# -ge 2 ]] || { usage; exit 2; }; local_run "$@" ;;
  -h|--help|help) usage ;;
  *) echo "launch.sh: unknown mode '${1:-}'" >&2; usage >&2; exit 2 ;;
esac
