#!/usr/bin/env python3
"""BatchProcess.py JOB new [FILE] | reset | run | status | wipe  --  see README.md."""
import importlib.util
import os
import sys

# Run from a checkout without installing: the package lives in ../lib.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, os.path.join(CHECKOUT, "lib"))


def use_the_checkouts_venv():
    """Run by a Python lacking the project's modules (cron's bare `python3`, no venv): re-run this
    script with the checkout's .venv/bin/python when there is one, instead of failing later."""
    venv_python = os.path.join(CHECKOUT, ".venv", "bin", "python")
    if importlib.util.find_spec("MySQLdb") is not None or not os.access(venv_python, os.X_OK):
        return
    if os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(CHECKOUT, ".venv")) \
            or os.environ.get("HIPE_BATCH_REEXEC") == venv_python:   # it is that venv already: no loop
        return
    os.environ["HIPE_BATCH_REEXEC"] = venv_python
    os.execv(venv_python, [venv_python, os.path.realpath(__file__), *sys.argv[1:]])


if __name__ == "__main__":
    use_the_checkouts_venv()
    from batchUtility.cli import main
    sys.exit(main())
