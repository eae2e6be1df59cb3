#!/usr/bin/env bash
# BatchProcess_sbatch.sh JOB [--mpi] [--config FILE]
#
# A Slurm batch script: one `BatchProcess.py JOB run` worker per task of the allocation, started by
# srun (no MPI needed: the job's SQL table is the only coordination), then the job-wide summary.
#
#   sbatch --ntasks=64 bin/BatchProcess_sbatch.sh JOB        64 workers, wherever Slurm puts them
#   sbatch --nodes=4 --ntasks-per-node=8 bin/BatchProcess_sbatch.sh JOB
#   sbatch --ntasks=16 bin/BatchProcess_sbatch.sh JOB --mpi  workers started by bin/BatchProcess_mpi.sh
#                                                           (mpirun) on the allocation's nodes instead
# Options on sbatch's command line override the #SBATCH lines below. Also $HIPE_BATCH_LAUNCHER=mpi
# for --mpi. Python: $HIPE_BATCH_PYTHON, else the checkout's .venv/bin/python, else python3.
# $HIPE_BATCH_SLURM_GRACE: seconds srun may go on once the job has nothing pending or running (it
# waits for good for the tasks of a lost node); default 60.
#
# Stopping: SIGTERM, SIGINT or SIGHUP to this script make every worker put its running obsid back
# to pending (not counted as an attempt) and stop; submit the script again to go on. That is what
#   --signal=B:TERM@600          (below: 10 minutes before the time limit, SIGTERM to this script)
#   scancel JOBID,  scancel --full --signal=TERM JOBID,  scancel --batch --signal=TERM JOBID
# do. (After a plain scancel or a time limit, Slurm sends SIGKILL KillWait seconds later: an obsid
# still running then is taken back by the next run after its lease.)
# Exit status: 0 when every obsid of the job is done, 1 when some failed or are left, 2 for bad
# input (nothing started), 128+N after stop signal N.
#
#SBATCH --job-name=hipe-batch
#SBATCH --output=%x-%j.out
#SBATCH --cpus-per-task=2
#SBATCH --mem-per-cpu=2G
#SBATCH --signal=B:TERM@600
#SBATCH --no-kill
# Why these: --cpus-per-task=2 and --mem-per-cpu=2G give each worker two cores and 4 GB, room for
# one HIPE of [hipe] memory = 2048m (the Java VM needs more than its heap, and more than one core
# for its collector and compiler). --no-kill: a node lost does not end the allocation; the other
# nodes' workers take its obsids back after the lease. No --ntasks: give it, or --nodes with
# --ntasks-per-node (a default here would clash with those), else one worker. No --time: your
# site's default applies; give one.
set -u

prog=BatchProcess_sbatch.sh
# Stopping. srun must not get the stop itself: srun turns a SIGTERM or SIGHUP it receives into
# SIGKILL for every task, too soon for a worker to put its obsid back. So srun runs in a process
# group of its own (`scancel --full` signals this script's group, and Slurm's --signal=B: this
# script only), and this script turns TERM, INT and HUP into SIGUSR2 to srun, which srun forwards
# to every task on every node; the worker treats SIGUSR2 as it treats SIGTERM. Repeated every
# 2 s while srun runs, for tasks that were still starting when the first one came.
stop=0 pid=""
on_signal() {
  stop=$1
  echo "$prog: $2: every worker puts its running obsid back to pending and stops" >&2
  [ -z "$pid" ] || kill -USR2 "$pid" 2>/dev/null
}
trap 'on_signal 143 SIGTERM' TERM
trap 'on_signal 130 SIGINT' INT
trap 'on_signal 129 SIGHUP' HUP

# Where the checkout is. sbatch runs a copy of this script from slurmd's spool folder, so its own
# path says nothing: Slurm's record of the submitted command does. (Inline in both Slurm scripts:
# nothing of the checkout, bin/slurm_common.sh included, can be sourced before it is found.)
find_bin_dir() {
  local here command
  here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
  if [ -f "$here/BatchProcess.py" ]; then echo "$here"; return 0; fi
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    command=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=//p' | head -n 1)
    while [ -n "$command" ]; do
      if [ -f "$command" ] && [ -f "$(dirname "$command")/BatchProcess.py" ]; then
        dirname "$(readlink -f "$command")"; return 0
      fi
      [ "${command% *}" = "$command" ] && break
      command=${command% *}  # the command's arguments follow its path
    done
  fi
  if [ -n "${HIPE_BATCH_ROOT:-}" ] && [ -f "$HIPE_BATCH_ROOT/bin/BatchProcess.py" ]; then
    echo "$HIPE_BATCH_ROOT/bin"; return 0
  fi
  return 1
}
bin_dir=$(find_bin_dir) || {
  echo "$prog: error: cannot find bin/BatchProcess.py (submit this script by its path in the checkout, or set HIPE_BATCH_ROOT)" >&2
  exit 2
}
checkout=$(dirname "$bin_dir")
. "$bin_dir/slurm_common.sh"

parse_job_arguments "sbatch [options] $prog JOB [--mpi] [--config FILE]" --mpi "$@"
launcher=${HIPE_BATCH_LAUNCHER:-srun}
[ "$extra_given" = 1 ] && launcher=mpi
case $launcher in
  srun|mpi|mpirun) ;;
  *) die "HIPE_BATCH_LAUNCHER=$launcher: must be srun or mpi" ;;
esac
[ -n "${SLURM_JOB_ID:-}" ] || die "not inside a Slurm job: submit this script with sbatch (or run it in salloc)"
grace=${HIPE_BATCH_SLURM_GRACE:-60}
[[ $grace =~ ^[0-9]+$ ]] || die "HIPE_BATCH_SLURM_GRACE=$grace is not a whole number of seconds"

pick_python

if [ "$launcher" != srun ]; then
  # mpirun on the allocation's nodes, one slot per task: BatchProcess_mpi.sh does the rest (its
  # stop handling and summary included), so it replaces this script.
  hostfile=${TMPDIR:-/tmp}/hipe-batch-hostfile.$SLURM_JOB_ID
  nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST")) || die "scontrol show hostnames failed"
  counts=()
  for word in ${SLURM_TASKS_PER_NODE//,/ }; do  # e.g. 8(x2),4: 8 on each of two nodes, then 4
    if [[ $word =~ ^([0-9]+)\(x([0-9]+)\)$ ]]; then
      for ((i = 0; i < BASH_REMATCH[2]; i++)); do counts+=("${BASH_REMATCH[1]}"); done
    else
      counts+=("$word")
    fi
  done
  : > "$hostfile" || die "cannot write $hostfile"
  for i in "${!nodes[@]}"; do echo "${nodes[$i]} slots=${counts[$i]:-1}" >> "$hostfile"; done
  trap - TERM INT HUP
  [ "$stop" = 0 ] || exit "$stop"
  exec "$bin_dir/BatchProcess_mpi.sh" "$job" --hostfile "$hostfile" ${config[@]+"${config[@]}"}
fi

# The database and the job, checked once here rather than failing in every task.
batch status >/dev/null || exit $?

# srun does not pass the allocation's --cpus-per-task on to its tasks (Slurm 22.05): say it again,
# or each task (and HIPE under it) may be bound to one core.
step=(--mpi=none --kill-on-bad-exit=0 --no-kill)
[ -n "${SLURM_CPUS_PER_TASK:-}" ] && step+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
echo "$prog: job $job: ${SLURM_NTASKS:-?} worker(s) on ${SLURM_JOB_NODELIST} (Slurm job $SLURM_JOB_ID)" >&2
status=0
if [ "$stop" = 0 ]; then  # else stopped before any worker was started: only the summary
  set -m  # job control: srun gets a process group of its own
  srun "${step[@]}" "$python" "$bin_dir/BatchProcess.py" "$job" run ${config[@]+"${config[@]}"} </dev/null &
  pid=$!
  set +m
  [ "$stop" = 0 ] || kill -USR2 "$pid" 2>/dev/null  # a stop that came while srun was being started
fi
# Waiting for srun, which also waits for good for the tasks of a node that was lost: they are not
# "terminated" for it (--no-kill, which lets the other nodes' workers run on). So once the job has
# had nothing pending or running for $grace seconds (the workers leave within seconds of that) and
# srun is still there, srun is ended. Polled by short naps, which a trapped signal cuts short.
ended="" tick=0 idle_since=""
while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do
  sleep 1 &
  nap=$!
  wait "$nap" 2>/dev/null
  kill "$nap" 2>/dev/null
  tick=$((tick + 1))
  if [ "$stop" != 0 ]; then
    [ $((tick % 2)) = 0 ] && kill -USR2 "$pid" 2>/dev/null
  elif [ -n "$ended" ]; then
    [ $((SECONDS - ended)) -ge 30 ] && kill -KILL "$pid" 2>/dev/null
  elif [ $((tick % 5)) = 0 ]; then
    if ! job_finished; then
      idle_since=""
    elif [ -z "$idle_since" ]; then
      idle_since=$SECONDS
    elif [ $((SECONDS - idle_since)) -ge "$grace" ]; then
      echo "$prog: job $job has had nothing left to run for $((SECONDS - idle_since)) s, yet srun still" \
           "waits for tasks that are gone (a lost node?): ending srun" >&2
      kill -TERM "$pid" 2>/dev/null
      ended=$SECONDS
    fi
  fi
done
if [ -n "$pid" ]; then
  wait "$pid"
  status=$?
  [ -n "$ended" ] && status=0
fi
trap - TERM INT HUP

echo "$prog: job-wide summary of job $job:"
batch status --hosts
summary=1
batch status --json | "$python" -c 'import json, sys; d = json.load(sys.stdin); sys.exit(d["done"] != d["total"])' \
  && summary=0
if [ "$stop" != 0 ]; then
  exit "$stop"
elif [ "$summary" != 0 ] && [ "$status" != 0 ]; then
  echo "$prog: srun ended with status $status" >&2
fi
exit "$summary"
