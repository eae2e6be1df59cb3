"""How BatchProcess.py starts (bin/BatchProcess.py, and the command `pip install` makes): a stop
signal (Ctrl-C, SIGTERM, SIGHUP) that arrives while Python still imports and prepares the command
stops it with one line and exit status 128+N, never a KeyboardInterrupt traceback.

Imported before anything else, so it imports only what Python has loaded already. bin/BatchProcess.py
holds the stop signals (blocked) from before Python starts, as bin/BatchProcess_mpi.sh does;
answer_stops() takes them over here.
"""
import os
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def stop_line(signum: int) -> str:
    """The one line of a command stopped with no obsid running (a worker says its own)."""
    return f"BatchProcess.py: stopped by {signal.Signals(signum).name} with no obsid running"


def _stop_at_once(signum, frame):
    # Nothing has started that needs putting back: a worker sets its own handlers before it claims
    # an obsid, and restores this one once its obsid is back. os._exit: no Python code left to interrupt.
    try:
        os.write(2, (stop_line(signum) + "\n").encode())
    finally:
        os._exit(128 + signum)


def catch(handler, signals=STOP_SIGNALS) -> dict:
    """Set handler for each of signals except the ignored ones; the previous handlers, to put back.

    A command started with a stop signal ignored was asked not to stop on it: nohup ignores
    SIGHUP, and a script's background job (`cmd &`) starts with SIGINT ignored. Every part of the
    command (start-up, run -j, each worker, the MPI launcher) keeps ignoring it, as the shell's
    trap does with a signal ignored on entry."""
    return {s: signal.signal(s, handler) for s in signals if signal.getsignal(s) is not signal.SIG_IGN}


def answer_stops() -> None:
    """From now on a stop signal stops the command at once, with one line (except those ignored:
    see catch()); a stop held meanwhile is answered now."""
    catch(_stop_at_once)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def hold_stops() -> None:
    """Hold the stop signals (blocked) across an exec: the next Python answers one sent meanwhile."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def answers_stops(signum: int) -> bool:
    """Whether signum is still answered by stopping at once (no command has set its own handler)."""
    return signal.getsignal(signum) is _stop_at_once


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
