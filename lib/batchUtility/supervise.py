"""Supervising a launcher's child (mpirun or srun): started in a process group of its own, stop
signals passed on to it as SIGUSR2, ended when it outlives its job or hangs once stopping, never
left running unsupervised.

    stop = Stop(PROG); stop.install()            # first: no stop signal is lost
    ...checks...
    status = run(command, LostHostWatch(...), stop, "mpirun", relay=...)
    stop.uninstall()

The child must pass SIGUSR2 on to every worker (mpirun and srun do); a worker treats it as SIGTERM.
"""
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Callable, List, Optional

from . import signals
from .errors import BatchError
from .frontend import exit_status_of
from .model import PENDING, RUNNING
from .procfs import has_children, process_state
from .storage import open_table

REPEAT = 2.0       # seconds between SIGUSR2s to the child once stopping (see Stop)
WATCH_POLL = 5.0   # seconds between looks at the job table for a lost host (see LostHostWatch)
TICK = 0.2         # the supervising loop's longest nap: how late a stop signal is passed on at most
END_PATIENCE = 15.0  # seconds a child that outlived its job gets after SIGTERM, then after SIGKILL
HUNG_AFTER = 10.0  # seconds a stopping child with no process left under it gets, then SIGKILL (see HangWatch)
STOP_DEADLINE = 60.0  # seconds a stopping child gets to end at all, then it is ended (see HangWatch)


class Stop:
    """What SIGTERM, SIGINT and SIGHUP do, caught from the start so that no stop is lost.

    mpirun cannot pass SIGTERM or SIGINT on: on either it kills the ranks itself (SIGKILL one
    second later, too soon for them to put their obsids back), and ess_base_forward_signals
    refuses SIGTERM. So the child runs in a process group of its own (a Ctrl-C in the terminal
    reaches the launcher only), and the launcher turns TERM, INT and HUP into SIGUSR2 to the child,
    which forwards it to every worker on every host; the worker treats SIGUSR2 as it treats
    SIGTERM. A stop that comes before the child is being started means it never starts.

    The handler only takes note (and says so with one os.write, which cannot collide with a print
    it interrupted): the supervising loop does the signalling, so that no Popen method is ever
    entered twice at once.
    """

    def __init__(self, prog: str):
        self.prog = prog          # the launcher's name, as its lines start
        self.status = 0           # 128+N once stop signal N came (the last one counts)
        self.launching = False    # from just before the child is started: stop it rather than exit
        self.caught = ()          # the stop signals handled here (not those ignored when the launcher started)

    def install(self):
        self.caught = tuple(signals.catch(self._on_signal))   # nohup's SIGHUP stays ignored
        # The launcher's shell script holds these signals back while Python starts: one that came
        # meanwhile is delivered now, to the handler. (Unblocked before any child inherits the mask.)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals.STOP_SIGNALS)

    def uninstall(self):
        # As the shell's `trap - TERM INT HUP`: from here on a stop signal ends the launcher at once.
        for sig in self.caught:
            signal.signal(sig, signal.SIG_DFL)

    def _on_signal(self, signum, frame):
        self.status = 128 + signum
        name = signal.Signals(signum).name
        if not self.launching:
            say(f"{self.prog}: {name}: stopped before any worker was started")
            raise SystemExit(self.status)
        say(f"{self.prog}: {name}: every worker puts its running obsid back to pending and stops")


def say(line: str) -> None:
    """One line on stderr, safe in a signal handler (one os.write)."""
    os.write(sys.stderr.fileno(), (line + "\n").encode(errors="replace"))


class LostHostWatch:
    """Ends a child that outlives its job.

    Open MPI 4.1 with --enable-recovery lets the other ranks run on when a host is lost (its daemon
    killed or cut off), but mpirun then waits for that host's ranks for good, even once the other
    ranks have finished the job. So once the job has had nothing pending or running for `grace`
    seconds (the workers leave within seconds of that) and the child is still there, it is ended.
    """

    def __init__(self, sql, job: str, grace: float, call_timeout: float):
        self.sql, self.job, self.grace, self.call_timeout = sql, job, grace, call_timeout
        self.table = None
        self.idle_since: Optional[float] = None
        self.next_look = time.monotonic()

    def outlived(self, now: float) -> bool:
        """Whether the child has outlived the job by `grace` seconds; looks at the table every WATCH_POLL s."""
        if now < self.next_look:
            return False
        self.next_look = now + WATCH_POLL
        counts = self._counts()
        if counts is None or counts[PENDING] or counts[RUNNING]:
            self.idle_since = None
            return False
        self.idle_since = now if self.idle_since is None else self.idle_since
        return now - self.idle_since >= self.grace

    def _counts(self):
        # One try a look (patience 0), never the retry loop: the supervising loop must not sit in a
        # database outage while a stop signal waits to be passed on. The database away is no reason
        # to end the child: the workers wait for it.
        try:
            if self.table is None:
                self.table = open_table(self.sql, self.job, 0.0, call_timeout=self.call_timeout)
            return self.table.counts()
        except BatchError as e:
            logging.debug("lost-host watch: %s", e)
            self.close()
            return None

    def close(self):
        if self.table is not None:
            self.table.close()
            self.table = None


class HangWatch:
    """Ends a child that hangs once stopping.

    Open MPI 4.1's mpirun can deadlock for good when a rank dies while it connects to mpirun's PMIx
    server (in MPI_Init): SIGUSR2 kills a rank that has no handler yet, so a stop that comes while
    the ranks start can do that. Seen: mpirun's main thread waits in the PMIx server's
    deregister_client while the PMIx thread waits for a lock, with no rank left ("PMIX ERROR:
    UNREACHABLE in ptl_base_connection_hdlr.c"); mpirun then ignores every signal but SIGKILL. So a
    stopping child with no process left under it for HUNG_AFTER s is killed (nothing of it is left
    to orphan), and one still there STOP_DEADLINE s after the stop is ended as `end` does (the
    workers have long had time to put their obsids back: a HIPE stop and a database wait).
    """

    def __init__(self, child: subprocess.Popen, hangs: str = ""):
        self.child = child
        self.hangs = hangs   # said after "has had no worker left ... yet does not end", e.g. " (Open MPI hangs so at times)"
        self.stopping_since: Optional[float] = None
        self.childless_since: Optional[float] = None

    def hung(self, now: float) -> Optional[str]:
        """Why the child is to be ended now, else None; called every REPEAT s once stopping."""
        self.stopping_since = now if self.stopping_since is None else self.stopping_since
        if now - self.stopping_since >= STOP_DEADLINE:
            return f"still running {STOP_DEADLINE:g} s after the stop"
        if has_children(self.child.pid):
            self.childless_since = None
            return None
        self.childless_since = now if self.childless_since is None else self.childless_since
        if now - self.childless_since >= HUNG_AFTER:
            return f"has had no worker left for {HUNG_AFTER:g} s yet does not end{self.hangs}"
        return None


def frozen_childless(child: subprocess.Popen) -> bool:
    """Whether the child, stopped (SIGSTOP: it cannot start a worker meanwhile), has no child: then
    SIGKILL orphans nothing. Else it is let go on (SIGCONT)."""
    if child.poll() is not None:
        return True  # gone and reaped: its pid may be another process's by now
    child.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and process_state(child.pid)[0] not in ("T", "Z", None):
        time.sleep(0.01)
    if process_state(child.pid)[0] == "T" and not has_children(child.pid):
        return True
    child.send_signal(signal.SIGCONT)
    return False


def _own_process_group() -> dict:
    # The child gets a process group of its own (as `set -m` gave it in the shell): a Ctrl-C in the
    # terminal goes to the launcher's group only, and the launcher decides what the child gets.
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}  # the launcher has no threads, so preexec_fn is safe here


def supervise(child: subprocess.Popen, watch: LostHostWatch, stop: Stop, name: str,
              hangs: Optional[str] = None, patience: float = END_PATIENCE) -> int:
    """Wait for the child (called `name` in the launcher's lines), passing stop signals on and ending
    it if it outlives the job (SIGTERM, SIGKILL patience s later) or (hangs not None) hangs once
    stopping, which is then said with why and hangs; its status (0 when the launcher ended it
    because the job itself was finished)."""
    job, grace = watch.job, watch.grace
    hang = None if hangs is None else HangWatch(child, hangs)
    next_usr2 = None  # when SIGUSR2 is due (again), once stopping
    try:
        while child.poll() is None:
            now = time.monotonic()
            if stop.status and (next_usr2 is None or now >= next_usr2):
                why = hang and hang.hung(now)
                if why:
                    print(f"{stop.prog}: {name} {why}: ending it", file=sys.stderr, flush=True)
                    end(child, term=not frozen_childless(child))
                    break
                # Workers still starting have no handler yet (SIGUSR2 ends them before they claim
                # anything) or do not exist yet (mpirun forwards a signal only to the ranks it has
                # started): so the signal is repeated every REPEAT s until the child ends, and no
                # worker goes on to run the job.
                child.send_signal(signal.SIGUSR2)
                next_usr2 = now + REPEAT
            elif not stop.status and watch.outlived(now):
                print(f"{stop.prog}: job {job} has nothing left to run, yet {name} still waits {grace:g} s later "
                      f"for workers that are gone (a lost host?): ending {name}", file=sys.stderr, flush=True)
                end(child, patience=patience)
                return 0
            try:
                child.wait(timeout=TICK)
            except subprocess.TimeoutExpired:
                pass
    finally:
        watch.close()
    return exit_status_of(child.returncode)


def end(child: subprocess.Popen, term: bool = True, patience: float = END_PATIENCE) -> None:
    """SIGTERM (unless term is false), then SIGKILL, patience s apart; returns once the child is
    gone (reaped)."""
    for send in (child.terminate, child.kill)[0 if term else 1:]:
        send()  # a no-op once Popen has reaped the child: never a signal to a reused pid
        try:
            child.wait(timeout=patience)
            return
        except subprocess.TimeoutExpired:
            continue
    child.wait()  # SIGKILL always ends it in the end; no zombie left behind


def stop_and_wait(child: subprocess.Popen) -> None:
    """Stop the workers as a stop signal would and wait for the child: for when the launcher itself
    fails while the child runs, which must not leave it and the workers running unsupervised."""
    while child.poll() is None:
        child.send_signal(signal.SIGUSR2)
        try:
            child.wait(timeout=REPEAT)
        except subprocess.TimeoutExpired:
            pass


def run(command: List[str], watch: LostHostWatch, stop: Stop, name: str, hangs: Optional[str] = None,
        relay: Optional[Callable] = None, patience: float = END_PATIENCE) -> int:
    """Start the child and supervise it to its end; its status as supervise() gives it.

    relay(stderr, fd, stopping), if given, copies the child's stderr (a pipe) to fd: a thread, with
    close(); without it the child writes to the launcher's stderr itself. Its stdout is the launcher's."""
    stop.launching = True  # from here on a stop signal stops the workers: the child is (being) started
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE if relay else None,
                                 **_own_process_group())
    except OSError as e:  # as the shell had it: the status is 127 (not found) or 126 (not runnable)
        print(f"{stop.prog}: {command[0]}: {e.strerror}", file=sys.stderr, flush=True)
        return 127 if isinstance(e, FileNotFoundError) else 126
    copier = None
    try:
        if relay is not None:
            copier = relay(child.stderr, sys.stderr.fileno(), lambda: bool(stop.status))   # a thread: may fail to start
        # A stop that came while the child was being started is passed on at supervise's first turn.
        return supervise(child, watch, stop, name, hangs, patience)
    except BaseException:
        stop_and_wait(child)
        raise
    finally:
        if copier is not None:
            copier.close()
