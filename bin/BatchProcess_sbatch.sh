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
# input (nothing started) or a worker whose setup broke (HIPE gone, say), 3 when a worker gave up on
# the database, 4 when a worker stopped because the Java heap an obsid needs cannot fit in the
# memory it may ever have (each as srun's highest task status), 128+N after stop signal N.
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
#
# The launcher is Python (lib/batchUtility/srun_launch.py, with supervise.py): this script only finds
# the checkout and the interpreter and hands over to it, arguments, signals and exit status.
set -u
prog=BatchProcess_sbatch.sh
for sig in TERM:143 INT:130 HUP:129; do  # until the launcher takes over: nothing started yet
  trap "echo '$prog: SIG${sig%:*}: stopped before any worker was started' >&2; exit ${sig#*:}" "${sig%:*}"
done

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
pick_python

# exec: the launcher is this very process, so signals sent to it (scancel, Slurm's --signal=B:)
# reach it. Stop signals are held (blocked) until its handlers are in place, as in BatchProcess_mpi.sh.
hold=()
env --block-signal=INT true >/dev/null 2>&1 && hold=(env --block-signal=TERM --block-signal=INT --block-signal=HUP)
exec ${hold[@]+"${hold[@]}"} "$python" -c '
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
sys.path.insert(0, sys.argv.pop(1))
from batchUtility.srun_launch import main
sys.exit(main())' "$checkout/lib" "$@"
