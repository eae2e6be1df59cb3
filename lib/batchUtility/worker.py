"""The worker loop of `run`: claim an obsid, launch HIPE on it, record the outcome; until none is left.

One worker is one process (one MPI slot). Workers never talk to each other: the job table is the
only coordination. A worker that dies leaves its obsid running under a lease that stops being
refreshed; any later worker takes it back (`JobTable.reclaim_stale`).
"""
import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, TextIO, Tuple, Union

from . import hipe, memory, report, signals, workdir
from .config import Config, HipeSettings
from .errors import BadInput, BatchError, BlackHole, DatabaseUnavailable, NoRoom, SetupBroken, TemplateMissing
from .guardian import Guardian, GuardianLost
from .lease import LeaseKeeper
from .model import DONE, FAILED, INTERACTIVE_PATIENCE, PENDING, Claim, LaunchEnd, Lease, Outcome
from .procfs import process_gone, process_start
from .slot import Slot
from .storage import JobTable, NextClaim

logger = logging.getLogger(__name__)

# SIGUSR2 is how bin/BatchProcess_mpi.sh stops its ranks: mpirun forwards it to every rank on every
# host, whereas on SIGTERM or SIGINT mpirun kills them too soon for them to put their obsids back.
STOP_SIGNALS = signals.WORKER_STOP_SIGNALS
# Waiting for obsids running elsewhere: the first look after WAIT_FIRST seconds, then doubling up to
# WAIT_POLL. So a worker leaves, or takes an obsid put back to pending, within about a second, and
# looks at the table at most once a second once it has waited a little.
WAIT_FIRST = 0.25
WAIT_POLL = 1.0
STOP_PATIENCE = INTERACTIVE_PATIENCE  # seconds a stopping worker waits for the database to put its obsid back
# A black hole: this many failed attempts in a row, each within QUICK_FAILURE seconds, while other
# workers succeed, mean this worker's host is broken; it stops rather than fail the whole job.
BLACK_HOLE_FAILURES = 5
QUICK_FAILURE = 10.0
# The template is run only once it has stayed unchanged this many seconds (a file being written in
# place is not run half); while it has not, the worker looks again every TEMPLATE_LOOK seconds.
TEMPLATE_QUIET = 2.0
TEMPLATE_LOOK = 0.2
# A worker whose next HIPE's heap does not fit in the memory it has now looks again this often.
ROOM_LOOK = 1.0
GATE_LOOK = 0.2   # seconds between looks while another worker's first launch of the template compiles it
GATE_FIRST_LOOK = 0.025   # the first of them, doubled up to GATE_LOOK: a HIPE that compiles at once is not waited 0.2 s for

# What runs one obsid: hipe.run_obsid's signature (request, should_stop, lease, guardian, scratch).
Launcher = Callable[[hipe.LaunchRequest, Callable[[], int], Callable[[], Lease], Guardian, Path], hipe.Launch]


class _Context(logging.LoggerAdapter):
    """Prefixes every message with host, slot and (while one runs) obsid."""

    def process(self, msg, kwargs):
        obsid = self.extra.get("obsid")
        where = f"{self.extra['host']} slot {self.extra['slot']} pid {os.getpid()}" + (f" obsid={obsid}" if obsid else "")
        return f"[{where}] {msg}", kwargs


def template_path(cfg: Config, job: str) -> Path:
    """The job's HIPE script template: jobs/JOB/JOB.py."""
    return cfg.job_dir(job) / f"{job}.py"


def check_ready(cfg: Config, job: str) -> None:
    """Raise BadInput (changing nothing but creating the job's log and output folders) unless the
    job's template and HIPE can be used."""
    template = template_path(cfg, job)
    try:
        with open(workdir.open_to_read(template), encoding="utf-8") as f:   # no link followed, never blocking
            text = f.read()
    except FileNotFoundError:
        raise TemplateMissing(job, template) from None
    except OSError as e:
        # A link is refused as any planted file is (workdir.open_to_read); say what to do instead.
        hint = " (put the script itself there, not a link to it)" if isinstance(e, workdir.NotAFile) \
            and e.errno == errno.ELOOP else ""
        raise BadInput(f"template {template} cannot be read: {e.strerror}{hint}") from None
    except UnicodeDecodeError as e:
        raise BadInput(f"template {template} cannot be read: {e}") from None
    if not has_statement(text):
        # HIPE would run it to its end at once: every obsid counted done with nothing done.
        raise BadInput(f"template {template} holds no statement (only blank lines and comments): "
                       "write the job's HIPE script there")
    command = cfg.hipe.command[0] if cfg.hipe.command else ""
    if not command or not shutil.which(command):
        raise BadInput(f"HIPE command {command!r} not found on PATH ([hipe] command in {cfg.path})")
    for sub in ("log", "output"):
        folder = cfg.job_dir(job) / sub
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"cannot create {folder}: {e.strerror}") from None
        check_writable(folder, "folder")
    check_writable(workdir.temporary_folder(), "TMPDIR")


def has_statement(script: str) -> bool:
    """Whether a script holds anything but blank lines and comments."""
    return any(line.strip() and not line.strip().startswith("#") for line in script.splitlines())


def check_writable(folder: Path, what: str) -> None:
    """Raise BadInput unless a page can be written in folder (not read-only, not full, not gone);
    each launch checks log/ and output/ again (workdir.check_room)."""
    try:
        workdir.check_room(folder)
    except OSError as e:
        raise BadInput(f"{what} {folder} is not writable: {e.strerror}") from None


class Worker:
    """One worker process: claims obsids of one job, launches HIPE on each, records what became of it."""

    def __init__(self, cfg: Config, table: Optional[JobTable], job: str, slot: Slot, out: Optional[TextIO] = None,
                 quiet: bool = False, max_time: Optional[float] = None, claim_until: Optional[float] = None,
                 stopped_before: Optional[Callable[[], int]] = None, *, launcher: Launcher = hipe.run_obsid,
                 guardian: Callable[[], Guardian] = Guardian,
                 lease_keeper: Optional[Callable[[Guardian], LeaseKeeper]] = None, prepared: bool = False,
                 first_claim: Optional[Callable[[], Optional[NextClaim]]] = None):
        """quiet: print no obsid lines and no SUMMARY (-q); max_time: seconds after which no obsid is
        claimed any more, or claim_until: the same as a time.monotonic() value (`run -j` sets it once
        for all its workers); stopped_before: the stop signal that came before run() took the
        signals over (a forked worker's first moments), or 0; prepared: prepare() was called on this
        job just before this worker started (`run -j` calls it once, before it forks its workers), so
        run() neither checks the job again nor makes the first reclaim pass; first_claim: what hands
        this worker its first claim, made for it by its parent (`run -j`, first_claims.py), called once
        its guardian and lease keeper run: a NextClaim as finish() fills one in, or None to claim its own.

        The collaborators, real unless given (batchUtility.testing has fakes): table, the job's
        table; launcher, what runs one obsid (hipe.run_obsid); guardian, what starts the guardian
        (Guardian), and lease_keeper, what starts the lease keeper given the guardian (a LeaseKeeper
        sharing the table's one database connection). Both are started when run() starts and closed when it
        ends, in that order: the guardian is forked while the worker has a single thread."""
        self.stopped_before = stopped_before or (lambda: 0)
        self.launcher = launcher
        self.start_guardian = guardian
        self.start_lease_keeper = lease_keeper or self._lease_keeper
        self.cfg, self.table, self.job, self.slot = cfg, table, job, slot
        self.out = out or sys.stdout
        self.quiet = quiet
        self.max_time = max_time
        self.claim_until = claim_until if claim_until is not None else (
            time.monotonic() + max_time if max_time is not None else None)
        self.dir = cfg.job_dir(job)
        self.template = template_path(cfg, job)
        self.log = _Context(logger, {"host": slot.host, "slot": slot.name, "obsid": None})
        self.stop_signal = 0
        self.stop_said = False   # whether the line saying what the stop did with the obsid was logged
        self.processed = 0   # how many obsids (not attempts) this worker has run: the last n of `[#n, obsid=X]`
        # obsid -> its n, for the obsids this worker did not see end done or failed (a retry keeps its
        # number); only those, so that a worker's memory does not grow with every obsid it runs
        self.numbers_back: Dict[int, int] = {}
        self.attempts = self.done = self.failed = 0
        self.script_errors = 0   # of the worker's first attempts, all ended by script errors so far
        self.halted = False
        self.pid_start = process_start(os.getpid())
        self.guardian: Optional[Guardian] = None
        self.scratch: Optional[Path] = None
        self.keeper: Optional[LeaseKeeper] = None
        self.quick_failures, self.failing_since = 0, 0.0
        self.prepared = prepared
        self.first_claim = first_claim
        self.template_version, self.template_changed = "", False
        self.template_settled: Optional[tuple] = None   # the last snapshot of the template read whole
        self.next: Optional[NextClaim] = None   # the claim taken with the last outcome, not run yet
        self.template_runs: set = set()   # versions of the template known to compile (storage.templates)
        self.template_compiled = ""   # the version this worker saw compile but could not say so yet
        self._telling: Optional[threading.Thread] = None   # saying "runs" while HIPE runs (_template_runs_soon)
        self.claimed_at = 0.0   # time.monotonic() before the current claim: the history's start

    def check_ready(self) -> None:
        """See check_ready()."""
        check_ready(self.cfg, self.job)

    def prepare(self) -> None:
        """What every worker does before its first claim, done once for the workers of a `run -j`
        (forked right after, with prepared=True): the job checked, and the obsids of dead workers of
        this host and of lost ones taken back. 64 workers each doing it queued on SQLite's write
        lock before their first claim (tests/bench/RESULTS.md)."""
        self.check_ready()
        self.table.make_templates()   # so that the workers' first looks at the template's verdict are reads
        self._reclaim()

    def _stopping(self) -> bool:
        """Asked by the table between retries: a worker told to stop does not sit out an outage."""
        return bool(self.stop_signal)

    def run(self) -> int:
        """Process obsids until none is left or a stop signal arrives.

        Returns 0 if every obsid this worker ran succeeded, 1 if any failed, 3 if the database
        stayed away too long, 128+N after stop signal N (its obsid put back to pending).
        """
        if not self.prepared:
            self.check_ready()
        previous = signals.catch(self._on_signal, STOP_SIGNALS)
        self.stop_signal = self.stop_signal or self.stopped_before()
        started = time.monotonic()
        try:
            self._make_scratch()
            self._start_guard()
            self._loop()
            if self.stop_signal and not self.stop_said:   # one line per stopped worker, obsid or none
                self.log.warning("stopped by %s with no obsid running: worker stopping", signal.Signals(self.stop_signal).name)
            status = 1 if self.failed else 0
        except DatabaseUnavailable as e:
            self.log.error("%s; stopping. Nothing is lost: an obsid left running is taken back after its lease.", e)
            status = DatabaseUnavailable.exit_status
        finally:
            try:  # summary first: bin/BatchProcess_mpi.sh repeats its stop signal, which must not cut it off
                if not self.quiet:
                    self._say(report.slot_summary(self.slot, self.processed, self.done, self.failed,
                                                  time.monotonic() - started, self.attempts))
            finally:
                self._stop_guard()
                if self.scratch is not None:
                    shutil.rmtree(self.scratch, ignore_errors=True)
                for s, handler in previous.items():
                    signal.signal(s, handler)
        return 128 + self.stop_signal if self.stop_signal else status

    def _make_scratch(self) -> None:
        """The temporary folder of this worker's launches (workdir.make_scratch), removed when it ends."""
        try:
            self.scratch = workdir.make_scratch(self.job)
        except OSError as e:
            raise BadInput(f"cannot create a temporary folder in {workdir.temporary_folder()}: {e.strerror}") from None

    def _start_guard(self) -> None:
        """The guardian (kills HIPE if this worker dies or cannot renew its lease in time) and the
        heartbeat thread, sharing the worker's database connection."""
        try:
            self.guardian = self.start_guardian()
        except GuardianLost as e:
            raise BadInput(f"cannot run: {e}") from None
        self.keeper = self.start_lease_keeper(self.guardian)

    def _lease_keeper(self, guardian: Guardian) -> LeaseKeeper:
        """The real lease keeper: its heartbeat thread renews the lease through the worker's own table,
        sharing its one database connection (one connection per worker)."""
        return LeaseKeeper(self.table, guardian, self.cfg.run.heartbeat, say=self.log,
                           stopping=lambda: self.stop_signal)

    def _stop_guard(self) -> None:
        if self.keeper is not None:
            self.keeper.close()
        if self.guardian is not None:
            self.guardian.close()

    def _say(self, line: str) -> None:
        # One write per line: under mpirun many ranks share one output, and print() writes the
        # newline separately, so with PYTHONUNBUFFERED lines of different ranks got mixed.
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):
            # `run | head`: nobody reads any more. The work goes on (its record is the job table),
            # and what is left in the buffer goes nowhere rather than into a traceback at exit.
            self.out = open(os.devnull, "w")
            try:
                os.dup2(self.out.fileno(), sys.stdout.fileno())
            except (OSError, ValueError):
                pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only note it: the loop stops HIPE, puts the obsid back and leaves at a safe point.
        self.stop_signal = signum

    def _loop(self) -> None:
        try:
            if self.first_claim is not None:   # inside: a claim handed over is put back if not run
                self.warm_up()
                self.next = self.first_claim()
            self._claim_loop()
        finally:
            self._put_back_next()

    def warm_up(self) -> None:
        """Before this worker says it is ready for the first claim its parent makes for it
        (first_claims.py): what its first launch would do first and needs no claim for. Then, once
        the claims are handed over, only the launch itself is left, and the slots of a `run -j`
        start their HIPEs close together (issue 21; tests/bench/RESULTS.md). Nothing is decided
        here but what the launch's gate would say of a version known to run: the launch reads the
        template and checks its folders again, and says what fails; what fails here is left undone."""
        memory.room()   # finds this worker's memory cgroups, once
        try:
            data, snapshot = _template_snapshot(self.template)
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return
        if snapshot is None or not has_statement(text):
            return
        hipe.warm_up(self.scratch, text, self.dir / "output", self.dir / "log")
        version = version_of(text)
        if self.table.template_known_to_run(version):
            self.template_runs.add(version)   # its first launch goes without asking

    def _claim_loop(self) -> None:
        run = self.cfg.run
        if not self.prepared:
            self.table.make_templates(interrupted=self._stopping)   # here, not between a claim and its HIPE
            self._reclaim()
        wait = WAIT_FIRST
        while not self.stop_signal and not self.halted and not self._out_of_time():
            following, self.next = self.next, None
            if following is not None and following.claim is not None:   # taken with the last outcome
                claim, claimed_at = following.claim, following.asked_at
            elif following is not None and following.nothing_pending:
                claim = None
            else:
                claimed_at = time.monotonic()   # the lease runs from before the claim's transaction began
                claim = self.table.claim(self.slot.host, self.slot.name, os.getpid(), run.lease,
                                         pid_start=self.pid_start, interrupted=self._stopping)
            if claim is not None:
                self.log.debug("claimed obsid %d (attempt %d)", claim.obsid, claim.attempt)
                self._process(claim, claimed_at)
                wait = WAIT_FIRST
                continue
            self.log.debug("nothing pending")
            if self._reclaim():
                continue
            # Nothing pending. Obsids still running elsewhere may yet come back (a worker dies,
            # a failure is retried): wait for them rather than leave them to a later run.
            if not run.wait_for_running or not self.table.any_running(interrupted=self._stopping):
                break
            self.log.debug("nothing pending, obsids still running elsewhere: next look in %.2f s", wait)
            # A worker holding no claim gives its connection up while it waits: on a server short of
            # connections, the workers holding claims keep theirs (the next look connects again, and
            # waits for a free connection if there is none).
            self.table.close()
            self._sleep(wait)
            wait = min(wait * 2, WAIT_POLL)

    def _next_claim(self, outcome: Outcome) -> Optional[NextClaim]:
        """What to claim next with a success's outcome (one transaction, one commit per obsid), or None:
        after a failure (black hole and halt_after judge it first), and in a worker that stops or is
        out of --max-time, which claims nothing more."""
        if not outcome.ok or self.stop_signal or self.halted or (
                self.claim_until is not None and time.monotonic() >= self.claim_until):
            return None
        return NextClaim(self.slot.host, self.slot.name, os.getpid(), self.cfg.run.lease, self.pid_start,
                         asked_at=time.monotonic())

    def _put_back_next(self) -> None:
        """A claim taken with the last outcome that the worker will not run (a stop came meanwhile):
        back to pending uncounted, its attempt in the history as `stopped`."""
        following, self.next = self.next, None
        if following is None or following.claim is None:
            return
        why = f"stopped by {signal.Signals(self.stop_signal).name}" if self.stop_signal else "worker stopping"
        done = self._requeue(following.claim, f"{why} before it started")
        if isinstance(done, DatabaseUnavailable):
            self.log.error("%s; obsid %d, claimed with the last outcome, stays claimed until its lease runs out",
                           done, following.claim.obsid)

    def _out_of_time(self) -> bool:
        if self.claim_until is None or time.monotonic() < self.claim_until:
            return False
        self.log.info("--max-time %s reached: stopped claiming; what is left stays pending for the next run",
                      _seconds(self.max_time))
        return True

    def _reclaim(self) -> bool:
        """Take back the obsids of dead workers of this host at once, and of lost workers after their lease."""
        run = self.cfg.run
        dead_here = self.table.reclaim_dead_here(self.slot.host, process_gone, run.max_attempts,
                                                 interrupted=self._stopping)
        lost = self.table.reclaim_stale(run.lease, run.max_attempts, interrupted=self._stopping)
        for taken, whose in ((dead_here, "dead workers of this host"), (lost, "lost workers")):
            if taken:
                self.log.warning("took back %d obsid(s) of %s: %s", len(taken), whose,
                                 " ".join(map(str, taken[:10])) + (" ..." if len(taken) > 10 else ""))
        return bool(dead_here or lost)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stop_signal and time.monotonic() < end:
            time.sleep(min(hipe.POLL, end - time.monotonic()))

    def _process(self, claim: Claim, claimed_at: float) -> None:
        number = self.numbers_back.pop(claim.obsid, 0)
        if not number:
            self.processed += 1
            number = self.processed
        self.attempts += 1
        self.log.extra["obsid"] = claim.obsid
        try:
            self.keeper.hold(claim, claimed_at)
            self.claimed_at = claimed_at
            if not self.quiet:
                self._say(f".....  [Slot {self.slot.rank}/{self.slot.size} on {self.slot.host}] "
                          f"[#{number}, obsid={claim.obsid}]")
            try:
                launch = self._launch(claim)
            finally:
                self.keeper.hipe_ended()   # from here on a failed renewal does not say HIPE runs on
            if self._record(claim, launch) not in (DONE, FAILED):   # it may come back to this worker
                self.numbers_back[claim.obsid] = number
        except NoRoom as e:
            self._put_back(claim, str(e)[:255], "memory")
            raise
        except (DatabaseUnavailable, SetupBroken, BlackHole):
            raise
        except (BatchError, OSError, GuardianLost) as e:
            # Anything else on the way from claim to record is this worker's fault, not the obsid's:
            # the obsid goes back uncounted, and the worker stops with one line.
            self._put_back(claim, _one_line(e), "setup")
            raise SetupBroken(_one_line(e), claim.obsid) from None
        finally:
            self.keeper.release()
            self.log.extra["obsid"] = None

    def _launch(self, claim: Claim) -> hipe.Launch:
        try:
            template = self._read_template()
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else e
            return hipe.Launch(Outcome(False, f"cannot read template {self.template}: {why}"), 0.0,
                               LaunchEnd.SETUP_FAULT)
        if template is None:   # a stop came while the template was being written
            return hipe.Launch(Outcome(False, f"stopped by {signal.Signals(self.stop_signal).name}"), 0.0,
                               LaunchEnd.STOPPED, self.stop_signal)
        if not has_statement(template):   # being rewritten in place, say: never count that as a success
            return hipe.Launch(Outcome(False, f"template {self.template} holds no statement now"), 0.0,
                               LaunchEnd.SETUP_FAULT)
        version = self._template_version(template)
        settings = self._heap_for(claim)
        if not self._wait_for_room(claim, settings.memory_mb):
            return hipe.Launch(Outcome(False, f"stopped by {signal.Signals(self.stop_signal).name}"), 0.0,
                               LaunchEnd.STOPPED, self.stop_signal)
        refused, probe = self._template_gate(claim, version)
        if refused is not None:
            return refused
        request = hipe.LaunchRequest(settings, template, self.job, claim.obsid, self.dir / "output",
                                     self.dir / "log", template_path=self.template,
                                     on_compiled=(lambda: self._template_runs_soon(version)) if probe else None)
        launch = self.launcher(request, lambda: self.stop_signal, self.keeper.state, self.guardian, self.scratch)
        if probe:
            self._probe_verdict(claim, version, launch)
        return dataclasses.replace(launch, outcome=dataclasses.replace(launch.outcome, template=version))

    def _heap_for(self, claim: Claim) -> HipeSettings:
        """[hipe] with the heap this obsid gets: [hipe] memory, or the bigger heap its earlier runs
        were found to need (the row's heap_mb), never beyond [hipe] max_memory."""
        hipe_cfg = self.cfg.hipe
        heap = min(max(hipe_cfg.memory_mb, claim.heap_mb or 0), hipe_cfg.max_memory_mb)
        return hipe_cfg if heap == hipe_cfg.memory_mb else dataclasses.replace(hipe_cfg, memory=memory.setting(heap))

    def _wait_for_room(self, claim: Claim, heap_mb: int) -> bool:
        """Wait until a heap of heap_mb MiB fits in the memory this worker may use now (memory.room:
        MemAvailable, and its cgroup's limit minus usage), saying so once, rather than start a JVM the
        OOM killer would take; False if a stop came meanwhile. A heap more than this worker could
        ever have raises NoRoom: waiting would be for good."""
        said = False
        while True:
            room = memory.room()
            if not room.most or heap_mb <= room.free:   # (no /proc/meminfo: nothing to go by)
                if said:
                    self.log.info("%d MiB free now: starting HIPE", room.free)
                return True
            if heap_mb > room.most:
                raise NoRoom(claim.obsid, memory.setting(heap_mb), room.most, room.most_from)
            if not said:
                said = True
                self.log.warning("waiting for memory: HIPE's heap of %s does not fit in the %d MiB free (%s); "
                                 "looking again every %g s", memory.setting(heap_mb), room.free, room.free_from, ROOM_LOOK)
            self._sleep(ROOM_LOOK)
            if self.stop_signal:
                return False

    def _template_gate(self, claim: Claim, version: str) -> Tuple[Optional[hipe.Launch], bool]:
        """Whether this claim may launch the template's version (storage.templates): (None, probe)
        to launch it, probe saying whether this launch is the version's probe; or (the launch's end,
        False) without launching: the version cannot run (the job is halted), or a stop came while
        another worker's probe was under way."""
        said, look = False, GATE_FIRST_LOOK
        while version not in self.template_runs:
            what, why = self.table.template_gate(version, claim, interrupted=self._stopping)
            if what == "runs":
                self.template_runs.add(version)
            elif what == "probe":
                return None, True
            elif what == "broken":
                return hipe.Launch(Outcome(False, f"job halted: the template cannot run{': ' + why if why else ''}",
                                           script_error=True, template=version, template_broken=True), 0.0), False
            else:
                if not said:
                    said = True
                    self.log.debug("waiting for another worker's first launch of template version %s to compile it",
                                   version)
                self._sleep(look)
                look = min(look * 2, GATE_LOOK)
                if self.stop_signal:
                    return hipe.Launch(Outcome(False, f"stopped by {signal.Signals(self.stop_signal).name}"), 0.0,
                                       LaunchEnd.STOPPED, self.stop_signal), False
        return None, False

    def _template_runs_soon(self, version: str) -> None:
        """HIPE compiled the probed version: say so in a thread of its own. Even one try can block
        for the read timeout on a frozen server, and the main thread must stay free meanwhile to stop
        HIPE on a signal, its timeout or a lost lease."""
        telling = threading.Thread(target=self._tell_runs, args=(version,), name="template-verdict", daemon=True)
        try:
            telling.start()
        except RuntimeError as e:   # no thread to be had (a node at its process limit): said once HIPE has ended
            self.template_compiled = version
            self.log.debug("%s: the template's verdict waits for the end of the launch", e)
            return
        self._telling = telling

    def _tell_runs(self, version: str) -> None:
        try:
            self._template_runs(version)
        except BatchError as e:   # said again once HIPE has ended, where an error stops the worker (_probe_verdict)
            self.template_compiled = version
            self.log.debug("%s: the template's verdict waits for the end of the launch", e)

    def _template_runs(self, version: str) -> None:
        """HIPE compiled the version this worker probes: the other workers may launch it now. One
        try (patience 0): while HIPE runs, a database away must not hold up the watch over HIPE. It
        is tried again once the launch has ended; unanswered then too, the probe is given up once
        this claim no longer runs, and the next claim probes the version again."""
        try:
            self.table.template_verdict(version, "runs", patience=0, interrupted=_never)
            self.template_runs.add(version)
        except DatabaseUnavailable as e:   # the others wait on meanwhile
            self.template_compiled = version
            self.log.debug("%s: the template's verdict waits for the end of the launch", e)

    def _probe_verdict(self, claim: Claim, version: str, launch: hipe.Launch) -> None:
        """The job-wide verdict after a probe: broken, runs (it ran to its end, or compiled), or none
        (stopped, fenced, lost before HIPE compiled it: the next claim probes)."""
        if self._telling is not None:
            # Its one try is bounded (the connection's wait and read timeout); waited for at most one
            # call's timeout: after a stop on a frozen server, the obsid's put-back comes first.
            self._telling.join(timeout=self.cfg.run.call_timeout)
            self._telling = None
        if launch.outcome.template_broken:
            self.table.template_verdict(version, "broken", launch.outcome.reason, interrupted=self._stopping)
        elif version in self.template_runs:
            return
        elif launch.outcome.ok or self.template_compiled == version:
            self._template_runs(version)
        else:
            # One try: unanswered, the probe is given up all the same once this claim no longer
            # runs (the next look at the gate finds its prober gone).
            with contextlib.suppress(DatabaseUnavailable):
                self.table.template_abandon(version, claim)

    def _read_template(self) -> Optional[str]:
        """The template's text, read whole: a snapshot is taken only when the file's size, mtime,
        ctime and inode (and the name's) are the same before and after the read, and the file has not
        changed for TEMPLATE_QUIET seconds (its mtime that old, or the same snapshot seen for that long
        by this worker's monotonic clock: a file server's clock may be ahead). Otherwise the worker
        waits and reads again, saying so once. A template written in place the slow way (truncated,
        half written, the rest later: `cp` over NFS, an editor saving in chunks) never runs half,
        and the hash recorded with the attempt names what really ran. None if a stop came meanwhile.
        The file is opened by workdir.open_to_read: no link followed, never blocking."""
        said = False
        last, since = None, 0.0
        while True:
            data, snapshot = _template_snapshot(self.template)
            now = time.monotonic()
            if snapshot is not None:
                if snapshot != last:
                    last, since = snapshot, now
                unchanged_for = max(time.time() - snapshot[3] / 1e9, now - since)
                if snapshot == self.template_settled or unchanged_for >= TEMPLATE_QUIET:
                    self.template_settled = snapshot
                    return data.decode("utf-8")
            if not said:
                said = True
                self.log.info("template %s is being written (it changed less than %g s ago): waiting until it has "
                              "stayed unchanged for %g s before running it", self.template, TEMPLATE_QUIET,
                              TEMPLATE_QUIET)
            self._sleep(TEMPLATE_LOOK)
            if self.stop_signal:
                return None

    def _template_version(self, text: str) -> str:
        """The template's content hash, recorded with each attempt; a change mid-run is said once."""
        version = version_of(text)
        if self.template_version and version != self.template_version and not self.template_changed:
            self.template_changed = True
            self.log.warning("template %s changed while this worker ran (version %s, now %s): later obsids run "
                             "the new version; `status --obsid` tells which version ran each attempt",
                             self.template, self.template_version, version)
        self.template_version = self.template_version or version
        return version

    def _record(self, claim: Claim, launch: hipe.Launch) -> Optional[str]:
        """Tell the table what became of the claim, according to how the launch ended; the obsid's
        state now if this worker recorded it (else None)."""
        given = launch.outcome.heap_mb
        if given and given > self.cfg.hipe.memory_mb:   # the heap it was found to need stays its own
            launch = dataclasses.replace(launch, outcome=dataclasses.replace(launch.outcome, heap_next=given))
        if launch.end is LaunchEnd.FINISHED and launch.outcome.template_broken:
            return self._halt_broken(claim, launch)
        if launch.end is LaunchEnd.STOPPED:
            self._put_back_stopped(claim, launch)
        elif launch.end is LaunchEnd.SETUP_FAULT:
            # HIPE could not be started here (HIPE or the template gone, no file descriptors, no
            # memory, a full disk...) or ended with its log disk full: not the obsid's fault. Put it
            # back uncounted and stop, rather than fail every obsid of the job in turn in a few
            # seconds (a black hole).
            self._put_back(claim, launch.outcome.reason, "setup", launched=launch.outcome)
            raise SetupBroken(launch.outcome.reason, claim.obsid)
        elif launch.end is LaunchEnd.FENCED:
            # The lease could not be renewed in time (the database or this worker frozen, or cut off):
            # the guardian killed HIPE. Not the obsid's fault: back to pending uncounted, if still ours.
            # The database may be away a while yet (that is why HIPE was fenced): waited for within
            # db_patience, not a stop's patience, so that the lease does not take it back counted.
            done = self._requeue(claim, launch.outcome.reason, outcome="fenced", template=launch.outcome.template,
                                 patience=self.table.patience, interrupted=self._stopping, launched=launch.outcome)
            if isinstance(done, DatabaseUnavailable):
                self.log.error("%s; %s; obsid stays claimed until its lease runs out", launch.outcome.reason, done)
            elif done:
                self.log.warning("%s; obsid back to pending", launch.outcome.reason)
                return PENDING
            else:
                return self._late(claim, launch, fenced=True)
        elif launch.end is LaunchEnd.FINISHED and launch.outcome.out_of_memory and not launch.outcome.ok:
            return self._out_of_memory(claim, launch)
        elif launch.end is LaunchEnd.CLAIM_LOST:   # another worker's now: HIPE stopped, the attempt not counted
            self._late(claim, launch, fenced=True)
        else:
            return self._finish(claim, launch)
        return None

    def _out_of_memory(self, claim: Claim, launch: hipe.Launch) -> Optional[str]:
        """HIPE ran out of memory (Java's OutOfMemoryError, or the kernel's OOM killer): below [hipe]
        max_memory the obsid goes back to pending uncounted, not a script error, its heap doubled
        (up to max_memory) for its next run; at max_memory it fails, the reason naming the heap it
        needs and the setting to raise. The row keeps the heap it needs either way."""
        outcome, settings = launch.outcome, self.cfg.hipe
        given = outcome.heap_mb or settings.memory_mb
        if given < settings.max_memory_mb:
            bigger = min(2 * given, settings.max_memory_mb)
            reason = f"out of memory with a {memory.setting(given)} heap, to run again with {memory.setting(bigger)}: " \
                     f"{outcome.out_of_memory}"
            done = self._requeue(claim, reason[:255], outcome="memory", template=outcome.template,
                                 launched=dataclasses.replace(outcome, heap_next=bigger))
            if isinstance(done, DatabaseUnavailable):
                self.log.error("%s; %s; obsid stays claimed until its lease runs out", reason, done)
            elif done:
                self.log.warning("%s (after %.1f s; [hipe] max_memory %s); obsid back to pending", reason,
                                 launch.seconds, settings.max_memory or settings.memory)
                return PENDING
            else:
                self.log.warning("%s; the obsid had been taken back meanwhile", reason)
            return None
        reason = (f"out of memory with a {memory.setting(given)} heap (raise [hipe] max_memory, now "
                  f"{settings.max_memory or settings.memory}, to {memory.setting(2 * given)} or more): "
                  f"{outcome.out_of_memory}")
        failed = dataclasses.replace(outcome, reason=reason[:255], script_error=True, heap_next=2 * given)
        return self._finish(claim, dataclasses.replace(launch, outcome=failed))


    def _halt_broken(self, claim: Claim, launch: hipe.Launch) -> Optional[str]:
        """The template cannot run (found by this launch, or by another worker's: the job is halted):
        the obsid goes back to pending uncounted, and this worker stops."""
        outcome = launch.outcome
        self.halted = True
        ran = not outcome.reason.startswith("job halted")
        back = self._put_back(claim, outcome.reason, "broken" if ran else "halted", outcome.template)
        self.log.error("%s; the job is halted on every worker and host, obsid %s back to pending uncounted. Fix "
                       "%s: the next `run` tries the new version once before the others do",
                       outcome.reason, "put" if back else "not put", self.template)
        return PENDING if back else None

    def _put_back(self, claim: Claim, reason: str, outcome: str, template: str = "",
                  launched: Optional[Outcome] = None) -> bool:
        """Requeue uncounted; whether it was put back (False: taken back meanwhile, or the database
        did not answer, which is logged). launched: the launch's outcome, with its heap and cost."""
        done = self._requeue(claim, reason, outcome=outcome, template=template, launched=launched)
        if isinstance(done, DatabaseUnavailable):
            self.log.error("%s; obsid stays claimed until its lease runs out", done)
            return False
        return done

    def _put_back_stopped(self, claim: Claim, launch: hipe.Launch) -> None:
        reason = launch.outcome.reason
        self.stop_said = True
        done = self._requeue(claim, reason, launched=launch.outcome)
        if isinstance(done, DatabaseUnavailable):
            self.log.error("%s: HIPE stopped; %s; the obsid stays claimed until its lease runs out: worker stopping",
                           reason, done)
        elif done:
            self.log.warning("%s: HIPE stopped, obsid put back to pending: worker stopping", reason)
        else:
            self.log.warning("%s: HIPE stopped; the obsid had been taken back meanwhile (its lease of %g s ran out, "
                             "or the job was wiped): worker stopping", reason, self.cfg.run.lease)

    def _requeue(self, claim: Claim, reason: str, patience: Optional[float] = None,
                 interrupted: Optional[Callable[[], bool]] = None, **kw: Any) -> Union[bool, DatabaseUnavailable]:
        # A put-back should be quick (a stop above all): the database gets STOP_PATIENCE, not the run's
        # patience (the lease takes the obsid back all the same if it is away), and a stop signal no
        # longer cuts the wait short.
        try:
            return self.table.requeue(claim, reason, patience=patience or min(self.table.patience, STOP_PATIENCE),
                                      interrupted=interrupted or _never, **kw)
        except DatabaseUnavailable as e:
            return e

    def _finish(self, claim: Claim, launch: hipe.Launch) -> Optional[str]:
        outcome, run = launch.outcome, self.cfg.run
        # A script error would only fail again: the obsid fails at once, unless retry_errors says otherwise.
        retried = not outcome.script_error or run.retry_errors
        limit = run.max_attempts if retried else claim.attempt
        following = self._next_claim(outcome)
        if following is None:
            state = self.table.finish(claim, outcome, limit, interrupted=self._stopping, results=launch.results)
        else:
            state = self.table.finish(claim, outcome, limit, interrupted=self._stopping, results=launch.results,
                                      then=following)
            self.next = following
        if state is None:
            state = self._late(claim, launch)
            if state != DONE:
                return None
        # As the history counts it (claim to outcome recorded), then HIPE's own part of it.
        took = f"{time.monotonic() - self.claimed_at:.1f} s (HIPE {launch.seconds:.1f} s)"
        if outcome.ok:
            self.done += 1
            self.quick_failures = 0
            self.log.info("done in %s", took)
        else:
            if state == FAILED:
                self.failed += 1
            retry = f", will be retried (attempt {claim.attempt} of {run.max_attempts})" if state != FAILED else ""
            self.log.error("failed after %s: %s%s (log: %s)", took, outcome.reason, retry,
                           Path(self.dir, "log", f"{claim.obsid}.stderr"))
            self._judge_failure(launch)
        self._halt_if_hopeless(outcome)
        return state

    def _late(self, claim: Claim, launch: hipe.Launch, fenced: bool = False) -> Optional[str]:
        """The claim was taken back while this worker could not reach the database (or was frozen):
        the attempt is not charged to the obsid, and a success nobody ran again since is recorded
        done (JobTable.amend_taken_back). What the history now says of the attempt ('done': recorded
        here), or None."""
        outcome, lease = launch.outcome, self.cfg.run.lease
        try:
            state = self.table.amend_taken_back(claim, outcome, fenced, results=launch.results,
                                                interrupted=self._stopping)
        except BatchError as e:   # the database away again, or the job wiped (its tables gone)
            self.log.error("outcome not recorded: the obsid was taken back meanwhile, and %s", _one_line(e))
            return None
        if state is None:
            self.log.error("outcome not recorded: the obsid is no longer this worker's (it was reset, or the job "
                           "was wiped)")
        elif state == DONE:
            self.log.warning("its lease of %g s ran out and the obsid was taken back meanwhile, but nobody ran "
                             "it since: recorded done", lease)
        elif fenced or not outcome.ok:
            self.log.warning("%s; the obsid had been taken back meanwhile (its lease of %g s ran out): "
                             "the attempt is not counted", outcome.reason, lease)
        else:
            self.log.error("outcome not recorded: its lease of %g s ran out and the obsid was taken back and "
                           "claimed again meanwhile; the attempt is not counted (history: late)", lease)
        return state

    def _judge_failure(self, launch: hipe.Launch) -> None:
        """Stop if this worker looks like a black hole: quick failures in a row while others succeed."""
        if launch.seconds >= QUICK_FAILURE:
            self.quick_failures = 0
            return
        if self.quick_failures == 0:
            self.failing_since = time.monotonic() - launch.seconds
        self.quick_failures += 1
        if self.quick_failures % BLACK_HOLE_FAILURES:
            return
        elsewhere = self.table.done_elsewhere(time.monotonic() - self.failing_since + 1.0, self.slot.host, os.getpid())
        if elsewhere:
            raise BlackHole(self.quick_failures, QUICK_FAILURE, elsewhere, launch.outcome.reason)

    def _halt_if_hopeless(self, outcome: Outcome) -> None:
        """Stop when the worker's first halt_after attempts all ended in script errors: the template
        (or the setup it relies on) most likely cannot work, and every further obsid would fail too."""
        k = self.cfg.run.halt_after
        if not k or self.script_errors < 0:
            return
        if not outcome.script_error:
            self.script_errors = -1   # one attempt got through: the template can work
            return
        self.script_errors += 1
        if self.script_errors >= k:
            self.halted = True
            self.log.error("the first %d attempts of this worker all failed with script errors, so the template "
                           "probably cannot work: worker stopped. Fix %s, then `BatchProcess.py %s reset --failed`",
                           k, self.template, self.job)


def version_of(template: str) -> str:
    """The template's version: its content hash, recorded with each attempt."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:12]


def _template_snapshot(path: Path) -> Tuple[bytes, Optional[tuple]]:
    """The file's bytes, and (device, inode, size, mtime_ns, ctime_ns) if those were the same before the
    read, after it and for the name afterwards, and the bytes read were the whole size; else None."""
    fd = workdir.open_to_read(path)
    try:
        before = os.fstat(fd)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return data, None

    def key(st: os.stat_result) -> tuple:
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
    whole = key(before) == key(after) == key(named) and len(data) == after.st_size
    return data, key(after) if whole else None


def _never() -> bool:
    return False


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:g}{unit}"
    return f"{seconds:g}s"
