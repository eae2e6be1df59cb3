"""The stop signals, and how each part of the command answers them: at once with one line (while
nothing runs that needs putting back), or by a handler of its own (a worker, `run -j`, a launcher).

A command started with a stop signal ignored was asked not to stop on it: nohup ignores SIGHUP,
and a script's background job (`cmd &`) starts with SIGINT ignored. catch() leaves such a signal
ignored in every part of the command, as the shell's trap does with a signal ignored on entry.

Imports only os and signal: the entry point (startup) imports it before anything else.
"""
import os
import signal

# What stops the command: Ctrl-C, SIGTERM (a scheduler, kill), SIGHUP (the terminal went away).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What stops a worker: those, and SIGUSR2, which a launcher sends in their stead because mpirun
# forwards it to every rank (see supervise.Stop).
WORKER_STOP_SIGNALS = (*STOP_SIGNALS, signal.SIGUSR2)


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
    """Set handler for each of signals except the ignored ones; the previous handlers, to put back."""
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
