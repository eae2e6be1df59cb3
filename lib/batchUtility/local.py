"""`run --jobs N`: N workers on this host from one command, at most N per host and job.

The parent checks the job once, then forks one worker per free slot: everything is imported and
checked before the fork, so a worker starts at almost no cost; each waits until the last is forked,
so that the first ones do not slow the parent's forks down and the slots start together. Each worker is slot r/N in its
lines and SUMMARY, opens its own database connection (its one: claims, heartbeats and outcomes
share it) and runs the usual worker loop. The run needs N connections, one more for the progress
line; when the server would not give that many, one warning line says so before the fork.

The cap: slot r of job JOB on host H is the lock file jobs/JOB/.slots/H.r.lock, held (flock) by
the worker running in it for as long as it lives; the kernel frees it when the worker ends, however
it ends (even SIGKILL). A `run -j N` started while some slots are held starts workers in the free
ones only, and none when all N are held (a crontab line firing again while the last run goes on).

Ctrl-C or SIGTERM, SIGHUP to the parent reach every worker: each stops its HIPE and puts its obsid
back to pending, as a single worker does. At the end the parent prints one job-wide summary.

On a terminal the parent also shows the job's progress on one line below the workers' lines
(relay.py); piped, with -q or with -v (which logs every SQL statement) it does not.
"""
import contextlib
import fcntl
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import procfs, report, signals, workdir
from .errors import BadInput, BatchError, worst_passed_on
from .first_claims import FirstClaims
from .frontend import COMMAND, job_exit_status, node_line, summary_heading
from .gate import Gate
from .relay import TerminalRelay
from .slot import Slot, host_name
from .storage import ConnectionRoom, open_table
from .worker import Worker

log = logging.getLogger(__name__)

SLOT_DIR = ".slots"
PUMP_EVERY = 0.25      # seconds: how soon the parent relaying workers' lines notices a worker ended
FIGURES_CALL_TIMEOUT = 5.0   # seconds one reading of the progress line's figures may take
SLOT_FOLDER_PATIENCE = 10.0   # seconds a `run -j` waits for another one to finish looking at the slots


def slot_lock_path(job_dir: Path, host: str, rank: int) -> Path:
    return job_dir / SLOT_DIR / f"{host}.{rank}.lock"


def take_free_slots(job_dir: Path, host: str, size: int) -> Dict[int, int]:
    """Lock every free slot 1..size of this host: {rank: locked file descriptor}.

    The lock files are opened as workdir.open_to_write opens a name the tool owns: no link followed,
    never blocking, anything but a regular file (a link planted there, dangling or not, a FIFO...)
    replaced by a new lock file; a regular one is opened as it is (a live worker may hold it). The
    folder is the tool's too: a link in its place is replaced by a folder, never followed. Replacing
    is done holding a lock on the folder itself, so two `run -j` starting together cannot both replace
    one name and each lock a file of its own."""
    folder = job_dir / SLOT_DIR
    try:
        if folder.is_symlink():
            with contextlib.suppress(FileNotFoundError):   # another `run -j` did it meanwhile
                folder.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        guard = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise BadInput(f"cannot use {folder} for the slot locks: {e.strerror}") from None
    taken: Dict[int, int] = {}
    try:
        _lock_folder(guard, folder)
        for rank in range(1, size + 1):
            path = slot_lock_path(job_dir, host, rank)
            try:
                fd = workdir.open_to_write(path, replace=True, truncate=False)
            except OSError as e:
                raise BadInput(f"cannot open the slot lock {path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:   # a live worker holds it
                os.close(fd)
                continue
            taken[rank] = fd
    except BaseException:
        for fd in taken.values():
            os.close(fd)
        raise
    finally:
        os.close(guard)   # and with it the folder's lock
    return taken


def read_connection_room(table) -> Optional[ConnectionRoom]:
    """The server's connection limits (None on SQLite, or when the server would not say)."""
    try:
        return table.connection_room()
    except BatchError as e:
        log.debug("could not read the server's connection limits: %s", e)
        return None


def warn_if_short_of_connections(room: Optional[ConnectionRoom], needed: int, sql, why: str,
                                 prog: str = "BatchProcess.py", at_least: bool = False) -> bool:
    """One line on stderr when the server would not give the `needed` connections now; the run goes on
    (a worker refused a connection waits for one, within [run] db_patience). Whether it warned."""
    if room is None or needed <= room.free():
        return False
    print(f"{prog}: warning: this run needs {'at least ' if at_least else ''}{needed} connections to "
          f"{sql.describe()} ({why}), but the server would give only {room.free()} now ({room.describe()}): "
          "the workers beyond wait for a free one; raise max_connections or the user's MAX_USER_CONNECTIONS "
          "(docs/many-hosts.md)", file=sys.stderr, flush=True)
    return True


def _lock_folder(guard: int, folder: Path) -> None:
    """Hold the slot folder's own lock (flock on the folder) while slots are looked at, waiting at most
    SLOT_FOLDER_PATIENCE seconds. Where the file system cannot lock a folder (NFS), go on without."""
    deadline = time.monotonic() + SLOT_FOLDER_PATIENCE
    while True:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise BadInput(f"another `run` has held the lock of {folder} for {SLOT_FOLDER_PATIENCE:g} s: "
                               "is it stopped (Ctrl-Z)?") from None
            time.sleep(0.01)
        except OSError:
            return


def _close(fd: Optional[int]) -> None:
    if fd is not None:
        os.close(fd)


class LocalRun:
    """One `run -j N`: the slots it got, the workers it forked, and how they ended."""

    def __init__(self, cfg, job: str, size: int, quiet: bool = False, out=None, worker_options=None):
        self.cfg, self.job, self.size, self.quiet = cfg, job, size, quiet
        self.out = out or sys.stdout
        self.worker_options = dict(worker_options or {})
        max_time = self.worker_options.get("max_time")
        if max_time is not None:   # one window for all the workers, from now
            self.worker_options["claim_until"] = time.monotonic() + max_time
        self.host = host_name(os.environ)   # as workers record it in their claims
        self.children: Dict[int, int] = {}   # pid -> rank
        self.stop_signal = 0
        self.relay: Optional[TerminalRelay] = None
        self.first_rank = 1   # the slot the parent's own lines (its reclaim pass) name
        self.gate: Optional[Gate] = None   # the workers wait at it until all are forked (_start_and_wait)
        self.first_claims: Optional[FirstClaims] = None   # their first obsids, claimed by this parent

    def run(self) -> int:
        table = open_table(self.cfg.sql, self.job, self.cfg.run.db_patience)
        try:
            table.require()
            self._say_node(table)
            # Template and HIPE checked once, here: a bad setup is one line and exit 2, not N. What
            # was lost taken back once too: the workers, forked right after, start with their claims.
            Worker(self.cfg, table, self.job, Slot(self.first_rank, self.size, self.host)).prepare()
            room = read_connection_room(table)
        finally:
            table.close()   # no connection may cross the fork
        procfs.load_prctl()   # once here, not in each worker at its first launch
        slots = self._take_slots(room)
        if not slots:
            return 0
        previous = signals.catch(self._on_signal, signals.WORKER_STOP_SIGNALS)
        try:
            statuses = self._start_and_wait(slots)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self._finish(statuses)

    def _say_node(self, table) -> None:
        """Which node of a host list answered, once for the run as every command says it (-q: not)."""
        line = node_line(table)
        if line:
            logging.getLogger(COMMAND).info(line)

    def _take_slots(self, room) -> Dict[int, Optional[int]]:
        """The slots to fork a worker in: {rank: its lock's file descriptor}, the free ones of 1..size."""
        slots: Dict[int, Optional[int]] = dict(take_free_slots(self.cfg.job_dir(self.job), self.host, self.size))
        if slots:
            progress = 1 if self._shows_progress() else 0
            warn_if_short_of_connections(room, len(slots) + progress, self.cfg.sql,
                                         "one per worker" + (", one for the progress line" if progress else ""))
        if not slots:
            if not self.quiet:
                self._say(f"{self.size} worker(s) of job {self.job} already run on {self.host}: none started")
        elif len(slots) < self.size and not self.quiet:
            self._say(f"{self.size - len(slots)} worker(s) of job {self.job} already run on {self.host}: "
                      f"starting {len(slots)} (slot {', '.join(str(r) for r in slots)} of {self.size})")
        return slots

    def _say(self, line):
        self.out.write(line + "\n")
        self.out.flush()

    def _on_signal(self, signum, frame):
        self.stop_signal = signum
        for pid in self.children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _shows_progress(self) -> bool:
        return (not self.quiet and self.out is sys.stdout and sys.stdout.isatty()
                and not logging.getLogger().isEnabledFor(logging.DEBUG))

    def _figures(self):
        """The progress line's figures: counts and pace. A connection of its own each time (at most
        once a second): the relay reads them in a thread, and the final ones in the main thread."""
        table = open_table(self.cfg.sql, self.job, patience=0, call_timeout=FIGURES_CALL_TIMEOUT)
        try:
            figures = table.pace_figures(report.RATE_WINDOW, report.WORKERS_WINDOW)
        finally:
            table.close()
        return figures["counts"], report.pace_of(figures)

    def _start_and_wait(self, slots: Dict[int, Optional[int]]) -> List[int]:
        sys.stdout.flush()
        sys.stderr.flush()
        if self._shows_progress():
            self.relay = TerminalRelay(self._figures)
        unforked = dict(slots)
        not_started: List[int] = []
        # The parent's objects out of the collector's reach: a worker's collections would otherwise
        # write to every inherited object's header, copying most of the parent's pages in each worker.
        gc.freeze()
        # A gate: each worker waits until the parent has forked the last one and opened it (gate.py).
        # Else the workers forked first, starting up, take the CPU from the parent still forking the
        # others, and the last worker starts long after the first (tests/bench/RESULTS.md).
        self.gate = Gate(len(slots))
        self.first_claims = FirstClaims(len(slots))
        try:
            try:
                self._fork_workers(slots, unforked, not_started)
            finally:
                self.gate.open()
                self.first_claims.forked()
        finally:
            # Once ready, the workers wait for the first obsids this parent claims for all in one transaction.
            self.first_claims.claim(self.cfg, self.job, dict(self.children), self.size, self.host,
                                    lambda: bool(self.stop_signal), self.worker_options.get("claim_until"))
        if self.relay is None:
            return not_started + self._wait()
        self.relay.start()
        try:
            return not_started + self._wait()
        finally:
            self.relay.finish(final_figures=not self.stop_signal)   # after a stop, no summary follows either

    def _fork_workers(self, slots: Dict[int, Optional[int]], unforked: Dict[int, Optional[int]],
                      not_started: List[int]) -> None:
        for rank, fd in slots.items():
            del unforked[rank]
            if self.stop_signal:
                _close(fd)
                continue
            try:
                pid = os.fork()
            except OSError as e:   # the node is at its process limit (EAGAIN) or out of memory
                # The workers started run the job; the others are not tried again (they would fail
                # alike), and the run's status says so.
                for left in (fd, *unforked.values()):
                    _close(left)
                others = f" and the {len(unforked)} after it" if unforked else ""
                print(f"BatchProcess.py: error: [{self.host}] cannot start the worker of slot {rank}/{self.size}{others}: "
                      f"fork: {e.strerror}", file=sys.stderr)
                not_started.append(2)
                break
            if pid == 0:
                self.gate.in_worker()
                self.first_claims.in_worker()
                self.children = {}   # a signal in the worker must not reach its siblings
                if self.relay is not None:
                    self.relay.in_worker()
                for other_fd in unforked.values():
                    _close(other_fd)   # the slots of workers still to be forked are theirs
                os._exit(self._worker(rank, fd))
            _close(fd)   # the worker's copy alone holds the slot from now on
            self.children[pid] = rank
            if self.stop_signal:   # it came during the fork: _on_signal did not know this worker yet
                self._on_signal(self.stop_signal, None)

    def _wait(self) -> List[int]:
        """Wait for every worker (relaying their lines meanwhile, on a terminal); their exit statuses."""
        statuses = []
        while self.children:
            if self.relay is not None:
                self.relay.pump(PUMP_EVERY)
            try:
                pid, wait_status = os.waitpid(-1, 0 if self.relay is None else os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:   # none ended yet
                continue
            self.children.pop(pid, None)
            statuses.append(os.waitstatus_to_exitcode(wait_status))
        return statuses

    def _worker(self, rank: int, lock_fd: Optional[int]) -> int:
        """The forked worker in slot rank/size; its return value is its exit status."""
        status = 1
        try:
            self._pass_the_gate()
            # Until the worker takes the signals over, the parent's handler stays: in this copy it only
            # records a stop (self.children is empty here), which the worker then acts on. Not SIG_DFL:
            # a signal caught but not yet handled when a handler becomes SIG_DFL is dropped by Python.
            if self.stop_signal:
                return 128 + self.stop_signal
            if lock_fd is not None:
                os.ftruncate(lock_fd, 0)
                os.write(lock_fd, f"{os.getpid()}\n".encode())
            # The worker's one connection, its lease keeper's heartbeats included: each call bounded as
            # a worker's (a third of the lease), as `run`'s are.
            table = open_table(self.cfg.sql, self.job, self.cfg.run.db_patience, call_timeout=self.cfg.run.call_timeout)
            slot = Slot(rank, self.size, self.host)
            worker = Worker(self.cfg, table, self.job, slot, out=self.out, stopped_before=lambda: self.stop_signal,
                            prepared=True, first_claim=lambda: self.first_claims.take(table, slot, self.cfg.run.lease),
                            **self.worker_options)
            status = worker.run()
        except BatchError as e:
            print(f"BatchProcess.py: error: [{self.host} slot {rank}/{self.size}] {e}", file=sys.stderr)
            status = e.exit_status
        except BaseException:
            logging.getLogger(__name__).exception("worker in slot %d/%d crashed", rank, self.size)
            status = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(status)
        return status

    def _pass_the_gate(self) -> None:
        """Wait until the parent has forked every worker (a stop signal meanwhile is only noted; the
        parent, stopping, forks no more and opens the gate)."""
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.wait()

    def _finish(self, statuses: List[int]) -> int:
        if self.stop_signal:
            return 128 + self.stop_signal
        table = open_table(self.cfg.sql, self.job, self.cfg.run.db_patience)
        try:
            counts = table.counts()
            status = job_exit_status(counts)
            if not self.quiet:   # -q: the failures this run met were logged as errors already
                self._say(summary_heading(self.job))
                self._say(report.status_text(self.job, counts, table.failures(), table.by_host()))
        finally:
            table.close()
        worst = worst_passed_on(statuses)
        return status if worst is None else worst
