"""The worker loop of `run`: claim an obsid, launch HIPE on it, record the outcome; until none is left.

One worker is one process (one MPI slot). Workers never talk to each other: the job table is the
only coordination. A worker that dies leaves its obsid running under a lease that stops being
refreshed; any later worker takes it back (`JobTable.reclaim_stale`).
"""
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from . import hipe, report
from .errors import BadInput, DatabaseUnavailable
from .storage import RUNNING

logger = logging.getLogger(__name__)

# SIGUSR2 is how bin/BatchProcess_mpi.sh stops its ranks: mpirun forwards it to every rank on every
# host, whereas on SIGTERM or SIGINT mpirun kills them too soon for them to put their obsids back.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)
WAIT_POLL = 5.0  # seconds between looks at the table while waiting for obsids running elsewhere
STOP_PATIENCE = 10.0  # seconds a stopping worker waits for the database to put its obsid back


class _Context(logging.LoggerAdapter):
    """Prefixes every message with host, slot and (while one runs) obsid."""

    def process(self, msg, kwargs):
        obsid = self.extra.get("obsid")
        where = f"{self.extra['host']} slot {self.extra['slot']} pid {os.getpid()}" + (f" obsid={obsid}" if obsid else "")
        return f"[{where}] {msg}", kwargs


class Worker:
    def __init__(self, cfg, table, job: str, slot, out=None):
        self.cfg, self.table, self.job, self.slot = cfg, table, job, slot
        self.out = out or sys.stdout
        self.dir = cfg.job_dir(job)
        self.template = self.dir / f"{job}.py"
        self.log = _Context(logger, {"host": slot.host, "slot": slot.name, "obsid": None})
        self.stop_signal = 0
        self.processed = self.done = self.failed = 0

    def check_ready(self):
        """Raise BadInput (changing nothing) unless the job's template and HIPE can be used."""
        if not self.template.is_file():
            raise BadInput(f"template {self.template} not found: write the job's HIPE script there "
                           f"(`BatchProcess.py {self.job} new` copies the example)")
        try:
            self.template.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BadInput(f"template {self.template} cannot be read: {e}") from None
        command = self.cfg.hipe.command[0] if self.cfg.hipe.command else ""
        if not command or not shutil.which(command):
            raise BadInput(f"HIPE command {command!r} not found on PATH ([hipe] command in {self.cfg.path})")
        for sub in ("log", "output"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)

    def run(self) -> int:
        """Process obsids until none is left or a stop signal arrives.

        Returns 0 if every obsid this worker ran succeeded, 1 if any failed, 3 if the database
        stayed away too long, 128+N after stop signal N (its obsid put back to pending).
        """
        self.check_ready()
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        self.table.interrupted = lambda: bool(self.stop_signal)
        started = time.monotonic()
        try:
            self._loop()
            status = 1 if self.failed else 0
        except DatabaseUnavailable as e:
            self.log.error("%s; stopping. Nothing is lost: an obsid left running is taken back after its lease.", e)
            status = DatabaseUnavailable.exit_status
        finally:
            try:  # summary first: bin/BatchProcess_mpi.sh repeats its stop signal, which must not cut it off
                self._say(report.slot_summary(self.slot, self.processed, self.done, self.failed,
                                              time.monotonic() - started))
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
        return 128 + self.stop_signal if self.stop_signal else status

    def _say(self, line):
        # One write per line: under mpirun many ranks share one output, and print() writes the
        # newline separately, so with PYTHONUNBUFFERED lines of different ranks got mixed.
        self.out.write(line + "\n")
        self.out.flush()

    def _on_signal(self, signum, frame):
        # Only note it: the loop stops HIPE, puts the obsid back and leaves at a safe point.
        self.stop_signal = signum

    def _loop(self):
        run = self.cfg.run
        self._reclaim()
        while not self.stop_signal:
            claim = self.table.claim(self.slot.host, self.slot.name, os.getpid())
            if claim is not None:
                self._process(claim)
                continue
            if self._reclaim():
                continue
            # Nothing pending. Obsids still running elsewhere may yet come back (a worker dies,
            # a failure is retried): wait for them rather than leave them to a later run.
            if not run.wait_for_running or self.table.counts()[RUNNING] == 0:
                break
            self._sleep(min(run.heartbeat, WAIT_POLL))

    def _reclaim(self) -> bool:
        taken = self.table.reclaim_stale(self.cfg.run.lease, self.cfg.run.max_attempts)
        if taken:
            self.log.warning("took back %d obsid(s) of lost workers: %s", len(taken),
                             " ".join(map(str, taken[:10])) + (" ..." if len(taken) > 10 else ""))
        return bool(taken)

    def _sleep(self, seconds):
        end = time.monotonic() + seconds
        while not self.stop_signal and time.monotonic() < end:
            time.sleep(min(hipe.POLL, end - time.monotonic()))

    def _process(self, claim):
        self.processed += 1
        self.log.extra["obsid"] = claim.obsid
        self._say(f".....  [Slot {self.slot.rank}/{self.slot.size} on {self.slot.host}] "
                  f"[#{self.processed}, obsid={claim.obsid}]")
        try:
            template = self.template.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            launch = hipe.Launch(hipe.Outcome(False, f"cannot read template {self.template}: {e}"), 0.0,
                                 not_started=True)
        else:
            launch = hipe.run_obsid(self.cfg.hipe, template, self.job, claim.obsid, self.dir / "output",
                                    self.dir / "log", lambda: self.stop_signal, lambda: self._heartbeat(claim),
                                    self.cfg.run.heartbeat)
        try:
            self._record(claim, launch)
        finally:
            self.log.extra["obsid"] = None

    @contextlib.contextmanager
    def _briefly(self, seconds):
        """A stop should be quick: the database gets `seconds`, not the usual patience (the lease
        takes the obsid back all the same if it is away), and the stop signal no longer cuts the
        wait short."""
        saved = self.table.patience, self.table.interrupted
        self.table.patience, self.table.interrupted = min(saved[0], seconds), (lambda: False)
        try:
            yield
        finally:
            self.table.patience, self.table.interrupted = saved

    def _heartbeat(self, claim):
        alive = self.table.heartbeat(claim)
        if alive is None:
            self.log.warning("database unreachable; HIPE keeps running, the lease will be refreshed when it is back")
        elif alive is False:
            self.log.error("claim was taken back (lease of %g s ran out); stopping HIPE", self.cfg.run.lease)
        return alive

    def _record(self, claim, launch):
        outcome = launch.outcome
        if launch.stopped_by:
            try:
                with self._briefly(STOP_PATIENCE):
                    self.table.requeue(claim, outcome.reason)
                self.log.warning("%s: HIPE stopped, obsid back to pending", outcome.reason)
            except DatabaseUnavailable as e:
                self.log.error("%s; obsid stays claimed until its lease runs out", e)
            return
        if launch.not_started:
            # HIPE was removed or its template deleted mid-run: not the obsid's fault. Put it back
            # uncounted and stop, rather than fail every obsid of the job in turn in a few seconds.
            self.table.requeue(claim, outcome.reason)
            raise BadInput(f"{outcome.reason}; obsid {claim.obsid} put back to pending and worker stopped")
        if launch.claim_lost:
            return  # the obsid is another worker's now: neither done nor failed by this one
        state = self.table.finish(claim, outcome, self.cfg.run.max_attempts)
        if state is None:
            self.log.error("outcome not recorded: the claim had been taken back (lease %g s)", self.cfg.run.lease)
        elif outcome.ok:
            self.done += 1
            self.log.info("done in %.1f s", launch.seconds)
        else:
            self.failed += 1
            retry = f", will be retried (attempt {claim.attempt} of {self.cfg.run.max_attempts})" if state != "failed" else ""
            self.log.error("failed after %.1f s: %s%s (log: %s)", launch.seconds, outcome.reason, retry,
                           Path(self.dir, "log", f"{claim.obsid}.stderr"))
