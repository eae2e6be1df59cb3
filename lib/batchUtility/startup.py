"""How BatchProcess.py starts (bin/BatchProcess.py, and the command `pip install` makes): a stop
signal (Ctrl-C, SIGTERM, SIGHUP) that arrives while Python still imports and prepares the command
stops it with one line and exit status 128+N, never a KeyboardInterrupt traceback.

Imported before anything else, so it imports only what Python has loaded already (signals imports
os and signal). bin/BatchProcess.py holds the stop signals (blocked) from before Python starts, as
bin/BatchProcess_mpi.sh does; answer_stops() takes them over here.
"""
import sys

from .signals import answer_stops, hold_stops

__all__ = ["answer_stops", "hold_stops", "main"]   # bin/BatchProcess.py calls all three from here


def main() -> int:
    """The command: stops answered first, then the (much longer) imports of the command line."""
    answer_stops()
    from .cli import main as cli_main
    try:
        return cli_main(sys.argv[1:])
    finally:
        # The command is over and has said how: a stop now has nothing left to stop, and Python's
        # exit puts the default handlers back, which would make it a silent death by the signal.
        hold_stops()
