#!/usr/bin/env bash
# BatchProcess_mpi.sh JOB [--hostfile FILE] [--config FILE] [--dry-run] [mpirun options...]
#
# One `BatchProcess.py JOB run` worker per hostfile slot, started by Open MPI's mpirun on every host
# the hostfile names; the job's SQL table is the only coordination. See README.md.
#
#   hostfile   --hostfile FILE, else $HIPE_BATCH_ROOT/hostfile, else $HIPE_BATCH_ROOT/bin/hostfile
#   python     $HIPE_BATCH_PYTHON, else this checkout's .venv/bin/python, else python3; by absolute
#              path, which must be the same on every host
#   mpirun     $HIPE_BATCH_MPIRUN, else mpirun from PATH (Open MPI 4.x)
#   --dry-run  print the mpirun command line and exit
#   $HIPE_BATCH_MPI_GRACE  seconds mpirun may go on once the job has nothing pending or running
#              (it waits for good for the ranks of a lost host); default 30
# Every other argument goes to mpirun, e.g. `-x JAVA_HOME` or `--mca plm_rsh_agent "ssh -p 2222"`.
# SIGTERM, SIGINT (Ctrl-C) or SIGHUP: every worker puts its running obsid back to pending and stops.
# Exit status: 0 when every obsid of the job is done; 1 when some failed or are unfinished; 2 for
# bad input (nothing started); mpirun's status when mpirun itself failed; 128+N after signal N.
set -u

prog=BatchProcess_mpi.sh
usage() {
  sed -n '2,/^set -u/{/^set -u/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}
die() {
  echo "$prog: error: $*" >&2
  exit 2
}

# Stopping. mpirun cannot pass SIGTERM or SIGINT on: on either it kills the ranks itself (SIGKILL
# one second later, too soon for them to put their obsids back), and ess_base_forward_signals
# refuses SIGTERM. So mpirun runs in a process group of its own (a Ctrl-C in the terminal reaches
# this script only), and this script turns TERM, INT and HUP into SIGUSR2 to mpirun, which mpirun
# forwards to every rank on every host; the worker treats SIGUSR2 as it treats SIGTERM. Caught from
# the start, so that no stop is lost: one that comes before mpirun starts means mpirun never starts.
stop=0 launching=0 pid="" repeater="" watcher=""
stop_workers() {
  kill -USR2 "$pid" 2>/dev/null
  # Ranks still starting have no handler yet (SIGUSR2 ends them before they claim anything) or do
  # not exist yet (mpirun forwards a signal only to the ranks it has started): so the signal is
  # repeated every 2 s until mpirun ends, and no rank goes on to run the job.
  if [ -z "$repeater" ]; then
    (
      trap 'kill "$nap" 2>/dev/null; exit 0' TERM
      trap '' INT HUP
      while :; do
        sleep 2 & nap=$!
        wait "$nap"
        kill -USR2 "$pid" 2>/dev/null || exit 0
      done
    ) &
    repeater=$!
  fi
}
on_signal() {
  stop=$1
  if [ -z "$pid" ] && [ "$launching" = 0 ]; then
    echo "$prog: $2: stopped before any worker was started" >&2
    exit "$stop"
  fi
  echo "$prog: $2: every worker puts its running obsid back to pending and stops" >&2
  [ -z "$pid" ] || stop_workers  # else mpirun is being started: stopped as soon as its pid is known
}
trap 'on_signal 143 SIGTERM' TERM
trap 'on_signal 130 SIGINT' INT
trap 'on_signal 129 SIGHUP' HUP

bin_dir=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd -P)
checkout=$(dirname "$bin_dir")

[ $# -ge 1 ] || { usage >&2; exit 2; }
case $1 in
  -h|--help) usage; exit 0 ;;
  -*) die "the first argument must be the job's name (usage: $prog JOB [--hostfile FILE] [mpirun options...])" ;;
esac
job=$1
shift
hostfile="" config="" dry_run=0 extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --hostfile|-hostfile|--machinefile|-machinefile)
      [ $# -ge 2 ] || die "$1 needs a FILE"
      hostfile=$2; shift 2 ;;
    --hostfile=*|-hostfile=*) hostfile=${1#*=}; shift ;;
    --config) [ $# -ge 2 ] || die "$1 needs a FILE"; config=$2; shift 2 ;;
    --config=*) config=${1#*=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra+=("$@"); break ;;
    *) extra+=("$1"); shift ;;
  esac
done

# Where the jobs, batch.cfg and hostfile are; exported so that every rank on every host sees it.
root=${HIPE_BATCH_ROOT:-$checkout}
[ -d "$root" ] || die "HIPE_BATCH_ROOT=$root is not a folder"
export HIPE_BATCH_ROOT=$(cd "$root" && pwd -P)
if [ -n "$config" ]; then
  [ -f "$config" ] || die "$config: configuration file not found (from --config)"
  export HIPE_BATCH_CONFIG=$(readlink -f "$config")
fi

# The same interpreter on every host, by absolute path: sys.executable resolves a pyenv shim or a
# bare `python3` to the real interpreter, and keeps a venv's own path (so its packages are used).
python=${HIPE_BATCH_PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$checkout/.venv/bin/python" ]; then python=$checkout/.venv/bin/python; else python=python3; fi
fi
python_given=$python
python=$("$python" -c 'import sys; print(sys.executable)' 2>/dev/null) && [ -n "$python" ] \
  || die "Python interpreter '$python_given' does not run (set HIPE_BATCH_PYTHON)"
export HIPE_BATCH_PYTHON=$python
helper() {
  PYTHONPATH="$checkout/lib${PYTHONPATH:+:$PYTHONPATH}" "$python" -m batchUtility.mpi_launch "$@"
}

mpirun=${HIPE_BATCH_MPIRUN:-mpirun}
command -v "$mpirun" >/dev/null 2>&1 || die "$mpirun not found on PATH (install Open MPI, e.g. apt-get install openmpi-bin)"
"$mpirun" --version 2>/dev/null | grep -q "Open MPI\|Open RTE" \
  || die "$mpirun is not Open MPI's mpirun, which this launcher needs (set HIPE_BATCH_MPIRUN)"

grace=${HIPE_BATCH_MPI_GRACE:-30}
[[ $grace =~ ^[0-9]+([.][0-9]*)?$ ]] || die "HIPE_BATCH_MPI_GRACE=$grace is not a number of seconds"

# Hostfile, database and job, checked here once rather than failing in every rank.
hostfile=$(helper check "$job" ${hostfile:+--hostfile "$hostfile"}) || exit $?

opts=(--hostfile "$hostfile")
[ "$(id -u)" = 0 ] && opts+=(--allow-run-as-root)
# Why these options (Open MPI 4.1, mpi4py 4.1; each was seen to matter on this setup):
#  --enable-recovery  without it, a rank that dies (kill -9, lost node) makes mpirun kill all the
#      others. With it the other ranks run on, and take the dead rank's obsid back after its lease.
#      (mpirun's own exit status is then 0 whatever the ranks did, and it prints
#      "PMIX ERROR: BAD-PARAM" for each rank that ends abnormally: harmless. This script's exit
#      status comes from the job table instead.)
#  MPI4PY_RC_FINALIZE=false and orte_allowed_exit_without_sync  MPI_Finalize is a collective in
#      Open MPI 4.1 (a PMIx fence): a rank that has finished would wait in it for every other
#      rank, and a rank on a lost node could keep it waiting for good. The ranks never talk to each
#      other, so they skip MPI_Finalize and just exit; the MCA option tells mpirun that exiting
#      without MPI_Finalize is no failure (without --enable-recovery it would abort the job).
#  --bind-to none  Open MPI binds each rank to a core (or socket) by default; HIPE is a child of
#      the rank and would inherit that binding: one Java VM squeezed onto one core.
#  --stdin none  nothing reads the terminal.
opts+=(--enable-recovery --mca orte_allowed_exit_without_sync 1 --bind-to none --stdin none
       -x MPI4PY_RC_FINALIZE=false)
# The environment every rank needs, also on hosts reached by ssh: PATH (HIPE, java, python), the
# library and Python paths, and every HIPE_* variable (HIPE_BATCH_ROOT, _CONFIG, _PASSWORD, ...).
# mpirun sends these values to its daemons itself: none appears on any command line.
for name in PATH LD_LIBRARY_PATH PYTHONPATH VIRTUAL_ENV $(compgen -e | grep '^HIPE_'); do
  [ -n "${!name+set}" ] && opts+=(-x "$name")
done
command=("$mpirun" "${opts[@]}" "${extra[@]}" "$python" "$bin_dir/BatchProcess.py" "$job" run)

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${command[@]}"
  echo
  exit 0
fi

launching=1
set -m  # job control: mpirun gets a process group of its own
"${command[@]}" </dev/null &
pid=$!
set +m
[ "$stop" = 0 ] || stop_workers  # a stop that came while mpirun was being started
# A host lost for good (its mpirun daemon killed or cut off) leaves mpirun waiting for its ranks
# forever, even once the other ranks have finished the job: the watcher ends such an mpirun when
# the job has had nothing pending or running for $grace seconds.
helper watch "$job" "$pid" "$grace" &
watcher=$!
reap() {  # wait for child $1 through any trapped signal; its exit status in $reaped
  while :; do
    wait "$1"
    reaped=$?
    kill -0 "$1" 2>/dev/null || break  # wait returned early (>128) for a trapped signal
  done
}
reap "$pid"
status=$reaped
reap "$watcher"  # it ends within a second of mpirun
[ "$reaped" = 10 ] && status=0  # mpirun ended by the watcher: the job itself is finished
if [ -n "$repeater" ]; then
  kill "$repeater" 2>/dev/null
  wait "$repeater" 2>/dev/null
fi
trap - TERM INT HUP

echo "$prog: job-wide summary of job $job:"
helper summary "$job"
summary=$?
if [ "$stop" != 0 ]; then
  exit "$stop"
elif [ "$status" != 0 ]; then
  echo "$prog: mpirun ended with status $status" >&2
  exit "$status"
fi
exit "$summary"
