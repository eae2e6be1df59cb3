#!/usr/bin/env bash
# BatchProcess_mpi.sh JOB [--hostfile FILE] [--config FILE] [-v | -q] [--dry-run] [mpirun options...]
#
# One `BatchProcess.py JOB run` worker per hostfile slot, started by Open MPI's mpirun on every host;
# `--help` says more, README.md says all. The launcher is Python (lib/batchUtility/mpi_launch.py):
# this script only finds the interpreter and hands over to it, arguments, signals and exit status.
#   python  $HIPE_BATCH_PYTHON, else this checkout's .venv/bin/python, else the python beside this
#           script (installed by pip into a venv's bin/), else python3; the same
#           interpreter then runs every rank, by absolute path (which must be the same on every host)
set -u
for sig in TERM:143 INT:130 HUP:129; do  # until the launcher takes over: nothing started yet
  trap "echo 'BatchProcess_mpi.sh: SIG${sig%:*}: stopped before any worker was started' >&2; exit ${sig#*:}" "${sig%:*}"
done

checkout=$(dirname "$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd -P)")
python=${HIPE_BATCH_PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$checkout/.venv/bin/python" ]; then python=$checkout/.venv/bin/python
  elif [ -x "$checkout/bin/python" ]; then python=$checkout/bin/python   # installed into a venv's bin/
  else python=python3; fi
fi
# exec: the launcher is this very process, so signals sent to it (kill, Ctrl-C, Slurm) reach it.
# The package is found through sys.path, not PYTHONPATH, which the ranks are given unchanged. Stop
# signals are held (blocked) until the launcher's handlers are in place, so that none is lost: from
# before Python starts where env can (coreutils 8.31+), else from the launcher's first line (then a
# Ctrl-C while Python starts up, 40 ms or so, is a KeyboardInterrupt traceback).
shopt -s execfail
hold=()
env --block-signal=INT true >/dev/null 2>&1 && hold=(env --block-signal=TERM --block-signal=INT --block-signal=HUP)
command -v "$python" >/dev/null 2>&1 && exec ${hold[@]+"${hold[@]}"} "$python" -c '
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
sys.path.insert(0, sys.argv.pop(1))
from batchUtility.mpi_launch import main
sys.exit(main())' "$checkout/lib" "$@"
echo "BatchProcess_mpi.sh: error: Python interpreter '$python' does not run (set HIPE_BATCH_PYTHON)" >&2
exit 2
