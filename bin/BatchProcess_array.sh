#!/usr/bin/env bash
# BatchProcess_array.sh JOB [--config FILE]
#
# A Slurm job array: each array task is one `BatchProcess.py JOB run` worker. Tasks start whenever
# the cluster has room for one more, and the job's SQL table is the only coordination, so 64 tasks
# that never run at the same time still share the job (a task that starts after the job is done
# finds nothing to do and ends at once).
#
#   sbatch --array=1-64 bin/BatchProcess_array.sh JOB       64 workers
#   sbatch --array=1-64%16 bin/BatchProcess_array.sh JOB    no more than 16 at a time
# Options on sbatch's command line override the #SBATCH lines below. Python: $HIPE_BATCH_PYTHON,
# else the checkout's .venv/bin/python, else python3.
#
# Each task prints its worker's lines and SUMMARY; the first task to end after the whole job is
# finished (nothing pending or running) also prints the job-wide summary (`status --hosts`), and
# leaves it in jobs/JOB/log/slurm-array-ARRAYJOBID.summary.
# Stopping: SIGTERM, SIGINT or SIGHUP to a task make its worker put its running obsid back to
# pending (not counted as an attempt) and stop; submit the array again to go on. That is what
#   --signal=B:TERM@600          (below: 10 minutes before a task's time limit)
#   scancel --batch --signal=TERM ARRAYJOBID    or    scancel --full --signal=TERM ARRAYJOBID
# do (every task of the array; `scancel ARRAYJOBID_7` one task). A plain `scancel` signals the
# workers as well; an obsid left running is taken back after its lease.
# Exit status: the worker's, job-level: 0 when every obsid of the job is done, 1 when some failed
# or are not done yet, 2 for bad input, 3 when the database stayed away, 128+N after stop signal N.
#
#SBATCH --job-name=hipe-batch
#SBATCH --output=%x-%A_%a.out
#SBATCH --array=1-8
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --signal=B:TERM@600
# Why these: one worker per task, with two cores and 4 GB for one HIPE of [hipe] memory = 2048m
# (the Java VM needs more than its heap, and more than one core for its collector and compiler).
# No --time: your site's default applies; give one.
set -u

prog=BatchProcess_array.sh
# Stopping: the worker runs as this script's child (not exec'd, so that the job-wide summary can
# follow it); the signals that come to this script are passed on to it. When Slurm signals every
# process of the task (scancel --full, the time limit) the worker gets the signal twice: harmless.
stop=0 pid=""
on_signal() {
  stop=$1
  [ -z "$pid" ] || kill "-$2" "$pid" 2>/dev/null
}
trap 'on_signal 143 TERM' TERM
trap 'on_signal 130 INT' INT
trap 'on_signal 129 HUP' HUP

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

parse_job_arguments "sbatch --array=1-N [options] $prog JOB [--config FILE]" "" "$@"
[ -n "${SLURM_JOB_ID:-}" ] || die "not inside a Slurm job: submit this script with sbatch --array=1-N"

pick_python

[ "$stop" = 0 ] || exit "$stop"
"$python" "$bin_dir/BatchProcess.py" "$job" run ${config[@]+"${config[@]}"} </dev/null &
pid=$!
[ "$stop" = 0 ] || kill -TERM "$pid" 2>/dev/null  # a stop that came while the worker was being started
while :; do  # wait for the worker through any trapped signal; its exit status in $status
  wait "$pid"
  status=$?
  kill -0 "$pid" 2>/dev/null || break  # else wait returned early (>128) for a trapped signal
done
trap - TERM INT HUP
[ "$stop" = 0 ] || exit "$stop"
[ "$status" = 2 ] && exit 2  # bad input: the worker said why

# The job-wide summary, once: by the first task to find the job finished (the file is created
# only if it does not exist yet, which one task alone succeeds in).
if job_finished; then
  root=${HIPE_BATCH_ROOT:-$checkout}
  summary=$root/jobs/$job/log/slurm-array-${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}.summary
  if (set -C; : > "$summary") 2>/dev/null; then
    echo "$prog: job-wide summary of job $job (array task ${SLURM_ARRAY_TASK_ID:-?}, the first to find it finished):"
    batch status --hosts | tee "$summary"
  fi
fi
exit "$status"
