#!/bin/sh
""":"
# BatchProcess.py JOB new [FILE] | reset | run | status | wipe  --  see README.md.
# Started as a command, the shell reads these lines and Python skips them (a string). The shell
# holds the stop signals (blocks them) from before Python starts up until batchUtility.startup
# answers them, as bin/BatchProcess_mpi.sh does: a Ctrl-C meanwhile stops the command with one
# line and exit 130, not a KeyboardInterrupt traceback (env --block-signal: coreutils 8.31+).
for sig in INT:130 TERM:143 HUP:129; do
  trap "echo 'BatchProcess.py: stopped by SIG${sig%:*} with no obsid running' >&2; exit ${sig#*:}" "${sig%:*}"
done
hold=
env --block-signal=INT true >/dev/null 2>&1 && hold="env --block-signal=INT --block-signal=TERM --block-signal=HUP"
exec $hold python3 "$0" "$@"
"""
import os
import sys

# Run from a checkout without installing: the package lives in ../lib.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, os.path.join(CHECKOUT, "lib"))


def use_the_checkouts_venv():
    """Run by a Python lacking the project's modules (cron's bare `python3`, no venv): re-run this
    script with the checkout's .venv/bin/python when there is one, instead of failing later."""
    import importlib.util
    venv_python = os.path.join(CHECKOUT, ".venv", "bin", "python")
    if importlib.util.find_spec("MySQLdb") is not None or not os.access(venv_python, os.X_OK):
        return
    if os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(CHECKOUT, ".venv")) \
            or os.environ.get("HIPE_BATCH_REEXEC") == venv_python:   # it is that venv already: no loop
        return
    os.environ["HIPE_BATCH_REEXEC"] = venv_python
    startup.hold_stops()
    try:
        os.execv(venv_python, [venv_python, os.path.realpath(__file__), *sys.argv[1:]])
    finally:   # only if the exec failed
        startup.answer_stops()


if __name__ == "__main__":
    from batchUtility import startup  # first: os, signal and sys only
    startup.answer_stops()
    use_the_checkouts_venv()
    sys.exit(startup.main())
