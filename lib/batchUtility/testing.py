"""Fakes for testing a worker's decisions in-process, in milliseconds (as procrastinate's
testing.InMemoryConnector): a job table in memory, a launcher that returns scripted launches without
starting any process, and a guardian and a lease keeper that start nothing.

    table = InMemoryJobTable("j", [1, 2])
    Worker(cfg, table, "j", slot, launcher=FakeLauncher(then=done()), guardian=FakeGuardian,
           lease_keeper=FakeLeaseKeeper).run()
    assert [row["state"] for row in table.rows()] == ["done", "done"]

InMemoryJobTable keeps storage.JobTable's guarantees for the operations a worker and its lease keeper
call, on the same rows and history (the same columns, the same states and attempt counts): a claim
is one pending row, longest expected first, marked running with a fresh token; a write about a claim
changes its row only while the row holds the claim's token (fencing), so an outcome that comes after
its claim was taken back changes nothing; a finish counts the attempt, a put-back (requeue) does not,
a take-back (reclaim_stale, reclaim_dead_here) counts it and clears the token. A lost claim is taken back
by storage's rule (LeaseWatch): only once its renewal (token, renewal counter, heartbeat) was seen the
same at two looks a whole lease apart on the taker's monotonic clock (`monotonic`), never by comparing
times. Times in rows are its clock's (time.time by default), as storage's are the database's.
"""
import signal
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .guardian import Guardian
from .hipe import Launch, LaunchRequest
from .model import DONE, FAILED, INTERACTIVE_PATIENCE, PENDING, RUNNING, STATES, Claim, LaunchEnd, Lease, Outcome
from .storage import DEFAULT_LEASE, NextClaim
from .storage.table import LeaseWatch, spent

COLUMNS = ("obsid", "pipelined", "state", "expected", "attempts", "token", "host", "worker", "pid", "pid_start",
           "started", "heartbeat", "lease_expires", "ended", "exit_code", "signal_no", "reason", "template", "heap_mb",
           "beats")
HISTORY_COLUMNS = ("obsid", "attempt", "host", "worker", "pid", "started", "ended", "exit_code", "signal_no",
                   "outcome", "reason", "template", "heap_mb", "cpu_s", "peak_rss_mb", "read_mb", "write_mb")


class InMemoryJobTable:
    """One job's table of obsids in memory, with the operations of storage.JobTable that a worker
    and its lease keeper call (each one atomic, under a lock), and its reads for tests. Arguments a
    database needs (patience, interrupted) are taken and ignored: nothing here waits."""

    def __init__(self, job: str = "job", obsids: Iterable[int] = (), *, expected: Optional[Mapping[int, int]] = None,
                 patience: float = INTERACTIVE_PATIENCE, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.job, self.patience, self.clock, self.monotonic = job, patience, clock, monotonic
        self._watch = LeaseWatch()   # what reclaim_stale has seen, as storage's JobTable keeps it
        self._lock = threading.Lock()
        self._rows: Dict[int, Dict[str, Any]] = {}
        self._history: Dict[str, Dict[str, Any]] = {}   # token -> the attempt (the history's key, as storage's)
        self._results: Dict[int, Dict[str, Any]] = {}
        self.calls: List[tuple] = []   # (operation, claim) of each finish and requeue asked, in order
        self.templates: Dict[str, list] = {}   # version -> [state, probing claim's token, reason] (storage.templates)
        self.add(obsids, expected)

    # ----------------------------------------------------------------- filling, and what only a test does
    def add(self, obsids: Iterable[int], expected: Optional[Mapping[int, int]] = None) -> None:
        """Pending rows for obsids not in the table yet (`new`, `new --add`)."""
        with self._lock:
            for obsid in obsids:
                if obsid not in self._rows:
                    row = dict.fromkeys(COLUMNS)
                    row.update(obsid=obsid, pipelined=0, state=PENDING, attempts=0,
                               expected=(expected or {}).get(obsid))
                    self._rows[obsid] = row

    def take_back(self, obsid: int, max_attempts: int) -> List[int]:
        """What another worker does to obsid's claim once its lease ran out: the taker made to have seen
        its present renewal a whole lease ago, then reclaim_stale (an attempt counted, the token cleared)."""
        with self._lock:
            row = self._rows[obsid]
            if row["state"] == RUNNING:
                given = self._given(row, DEFAULT_LEASE)
                self._watch.seen[obsid] = (self._renewal(row), self.monotonic() - given - 1.0)
        return self.reclaim_stale(DEFAULT_LEASE, max_attempts)

    # ----------------------------------------------------------------- what workers do
    def claim(self, host: str, worker: str, pid: int, lease: float = DEFAULT_LEASE, *, pid_start: Optional[int] = None,
              interrupted: Optional[Callable[[], bool]] = None) -> Optional[Claim]:
        """Take the next pending obsid, longest expected first (then by obsid), with a fresh token;
        None when nothing is pending."""
        with self._lock:
            return self._claim(host, worker, pid, lease, pid_start)

    def _claim(self, host: str, worker: str, pid: int, lease: float, pid_start: Optional[int]) -> Optional[Claim]:
        pending = [row for row in self._rows.values() if row["state"] == PENDING]
        if not pending:
            return None
        # ORDER BY expected DESC, obsid: NULL comes last in descending order (SQLite and MariaDB).
        row = min(pending, key=lambda r: (r["expected"] is None, -(r["expected"] or 0), r["obsid"]))
        now, token = self.clock(), uuid.uuid4().hex
        row.update(state=RUNNING, pipelined=0, token=token, beats=0, host=host[:255], worker=worker[:32], pid=pid,
                   pid_start=pid_start, started=now, heartbeat=now, lease_expires=now + lease, ended=None,
                   exit_code=None, signal_no=None, template=None)
        return Claim(row["obsid"], token, row["attempts"] + 1, lease, row["heap_mb"])

    def claim_for(self, workers: Sequence[Any], *, patience: Optional[float] = None,
                  interrupted: Optional[Callable[[], bool]] = None) -> None:
        """As JobTable.claim_for: one obsid for each NextClaim, in their order, in one step."""
        with self._lock:
            for w in workers:
                w.claim = self._claim(w.host, w.worker, w.pid, w.lease, w.pid_start)
                w.nothing_pending = w.claim is None

    def claimed_for(self, host: str, pid: int, pid_start: Optional[int], machine: str, lease: float) -> List[Claim]:
        """As JobTable.claimed_for (no machine kept here: host, pid and its start time)."""
        with self._lock:
            return [Claim(r["obsid"], r["token"], r["attempts"] + 1, lease, r["heap_mb"])
                    for r in sorted(self._rows.values(), key=lambda r: r["obsid"])
                    if r["state"] == RUNNING and (r["host"], r["pid"], r["pid_start"]) == (host, pid, pid_start)]

    def make_templates(self, interrupted: Optional[Callable[[], bool]] = None) -> None:
        """As JobTable.make_templates: here there is always room for template versions."""

    def heartbeat(self, claim: Claim) -> Lease:
        """Renew the claim's lease: HELD while the row runs under its token, else LOST."""
        with self._lock:
            row = self._held(claim, (RUNNING,))
            if row is None:
                return Lease.LOST
            now = self.clock()
            row.update(heartbeat=now, lease_expires=now + claim.lease, beats=(row.get("beats") or 0) + 1)
            return Lease.HELD

    def finish(self, claim: Claim, outcome: Outcome, max_attempts: int, *, patience: Optional[float] = None,
               interrupted: Optional[Callable[[], bool]] = None,
               results: Optional[Mapping[str, Any]] = None, then: Optional[NextClaim] = None) -> Optional[str]:
        """Record an outcome if the claim is still ours: done (its results replaced), pending while
        attempts remain, failed once they are used up; the attempt goes to the history. The new state,
        or None if the claim had been taken from us (nothing changes then). then: the next claim,
        taken at once (then.claim, then.nothing_pending), as storage's in the same transaction."""
        with self._lock:
            self.calls.append(("finish", claim))
            state = self._finish(claim, outcome, max_attempts, results)
            if then is not None:
                then.claim = self._claim(then.host, then.worker, then.pid, then.lease, then.pid_start)
                then.nothing_pending = then.claim is None
            return state

    def _finish(self, claim: Claim, outcome: Outcome, max_attempts: int,
                results: Optional[Mapping[str, Any]]) -> Optional[str]:
        state = DONE if outcome.ok else (FAILED if claim.attempt >= max_attempts else PENDING)
        row = self._held(claim, (RUNNING, state))
        if row is None:
            return None
        row.update(state=state, pipelined=int(state == DONE), attempts=row["attempts"] + (row["state"] == RUNNING),
                   ended=self.clock(),
                   heartbeat=None, lease_expires=None, exit_code=outcome.exit_code, signal_no=outcome.signal,
                   reason=outcome.reason[:255] or None, template=outcome.template or None)
        if outcome.heap_next is not None:
            row["heap_mb"] = outcome.heap_next
        self._to_history(row, claim.attempt, DONE if outcome.ok else FAILED, outcome)
        if state == DONE and results:
            self._results[claim.obsid] = dict(results)
        return state

    def requeue(self, claim: Claim, reason: str, *, outcome: str = "stopped", template: str = "",
                patience: Optional[float] = None, interrupted: Optional[Callable[[], bool]] = None,
                launched: Optional[Outcome] = None) -> bool:
        """Put a claimed obsid back to pending without counting an attempt; the history records the
        attempt as `outcome`. False if the claim had been taken from us already."""
        with self._lock:
            self.calls.append(("requeue", claim))
            row = self._held(claim, (RUNNING, PENDING))
            if row is None:
                return False
            row.update(state=PENDING, ended=self.clock(), heartbeat=None, lease_expires=None, reason=reason[:255],
                       template=template or None)
            if launched is not None and launched.heap_next is not None:
                row["heap_mb"] = launched.heap_next
            self._to_history(row, claim.attempt, outcome, launched)
            return True

    def template_gate(self, version: str, claim: Claim, *,
                      interrupted: Optional[Callable[[], bool]] = None) -> Tuple[str, str]:
        """As JobTable.template_gate (storage.templates), in memory."""
        state, token, reason = self.templates.setdefault(version, ["probing", claim.token, ""])
        if state == "runs":
            return "runs", ""
        if state == "broken":
            return "broken", reason
        if token == claim.token:
            return "probe", ""
        if not any(r["token"] == token and r["state"] == RUNNING for r in self._rows.values()):
            del self.templates[version]
        return "wait", ""

    def template_known_to_run(self, version: str) -> bool:
        return self.templates.get(version, [None])[0] == "runs"

    def template_verdict(self, version: str, state: str, reason: str = "", *, patience: Optional[float] = None,
                         interrupted: Optional[Callable[[], bool]] = None) -> None:
        if version in self.templates and (self.templates[version][0] == "probing" or state == "broken"):
            self.templates[version] = [state, None, reason]

    def template_abandon(self, version: str, claim: Claim) -> None:
        if self.templates.get(version, [None, None])[1] == claim.token:
            del self.templates[version]

    def amend_taken_back(self, claim: Claim, outcome: Outcome, fenced: bool = False, *,
                         results: Optional[Mapping[str, Any]] = None, patience: Optional[float] = None,
                         interrupted: Optional[Callable[[], bool]] = None) -> Optional[str]:
        """The late outcome of a claim taken back as `lost`: not counted; a success recorded done if
        nobody claimed the obsid since (else `late`), anything else `fenced` in the history. What
        the history now says of the attempt ('done', 'late', 'fenced'), or None if the claim was not
        taken back as lost."""
        with self._lock:
            self.calls.append(("amend", claim))
            attempt, row = self._history.get(claim.token), self._rows[claim.obsid]
            if attempt is None or attempt["outcome"] != "lost":
                return None
            note = (f"{outcome.reason[:150]}; " if outcome.reason else "") + \
                "taken back after its lease meanwhile, not counted"
            untouched = row["token"] is None and row["attempts"] == claim.attempt
            if outcome.ok and not fenced and untouched and row["state"] in (PENDING, FAILED):
                row.update(state=DONE, pipelined=1, token=claim.token, ended=self.clock(), reason=None,
                           exit_code=outcome.exit_code, signal_no=outcome.signal, template=outcome.template or None)
                attempt.update(outcome=DONE, reason="recorded late: " + note)
                if results:
                    self._results[claim.obsid] = dict(results)
                return DONE
            if untouched and row["state"] == FAILED:
                row["state"] = PENDING
            row["attempts"] = max(0, row["attempts"] - 1)
            attempt.update(outcome="fenced" if fenced or not outcome.ok else "late", reason=note)
            return attempt["outcome"]

    def reclaim_stale(self, lease: float, max_attempts: int, *,
                      interrupted: Optional[Callable[[], bool]] = None) -> List[int]:
        """Take back every running obsid whose renewal stood still for its whole lease (the row's own;
        `lease` for rows without one) since this table first saw it, by LeaseWatch's rule on the
        monotonic clock: an attempt counted, the token cleared. The obsids taken back."""
        with self._lock:
            now = self.monotonic()
            running = sorted((row for row in self._rows.values() if row["state"] == RUNNING), key=lambda r: r["obsid"])
            due = self._watch.look([(row["obsid"], *self._renewal(row), self._given(row, lease)) for row in running],
                                   now, now)
            stale = [row for row in running if row["obsid"] in due]
            for row in stale:
                self._take_back(row, f"worker lost: no heartbeat for {round(due[row['obsid']][1], 3):g} s", max_attempts)
            self._watch.forget([row["obsid"] for row in stale])
            return [row["obsid"] for row in stale]

    @staticmethod
    def _renewal(row: Dict[str, Any]) -> tuple:
        return row["token"], row.get("beats"), row["heartbeat"]

    @staticmethod
    def _given(row: Dict[str, Any], lease: float) -> float:
        """The claim's own lease (lease_expires - heartbeat, as RENEWALS reads it), else `lease`."""
        if row["lease_expires"] is not None and row["heartbeat"] is not None:
            return float(row["lease_expires"] - row["heartbeat"])
        return float(lease)

    def reclaim_dead_here(self, host: str, gone: Callable[[int, Optional[int]], bool], max_attempts: int, *,
                          interrupted: Optional[Callable[[], bool]] = None) -> List[int]:
        """Take back at once the running obsids claimed on host by a process gone(pid, pid_start) says
        is gone: an attempt counted each, as with reclaim_stale. The obsids taken back."""
        with self._lock:
            dead = [row for obsid, row in sorted(self._rows.items()) if row["state"] == RUNNING
                    and row["host"] == host[:255] and row["pid"] is not None and gone(row["pid"], row["pid_start"])]
            for row in dead:
                self._take_back(row, f"worker lost: its process {row['pid']} on {host} is gone", max_attempts)
            return [row["obsid"] for row in dead]

    def done_elsewhere(self, seconds: float, host: str, pid: int) -> int:
        """How many obsids workers other than (host, pid) finished in the last `seconds`."""
        with self._lock:
            since = self.clock() - seconds
            return sum(1 for row in self._rows.values() if row["state"] == DONE and row["ended"] >= since
                       and not (row["host"] == host and row["pid"] == pid))

    def live_running(self, lease: float) -> int:
        """How many obsids run under a live lease (`lease`: for rows without one)."""
        with self._lock:
            now = self.clock()
            return sum(1 for row in self._rows.values() if row["state"] == RUNNING
                       and self._expiry(row, lease) is not None and self._expiry(row, lease) >= now)

    def any_running(self, *, interrupted: Optional[Callable[[], bool]] = None) -> bool:
        with self._lock:
            return any(row["state"] == RUNNING for row in self._rows.values())

    def counts(self, *, interrupted: Optional[Callable[[], bool]] = None) -> Dict[str, int]:
        """How many obsids are in each state (every state present, zero or not)."""
        with self._lock:
            found = dict.fromkeys(STATES, 0)
            for row in self._rows.values():
                found[row["state"]] += 1
            return found

    def total(self) -> int:
        return len(self._rows)

    def exists(self) -> bool:
        return True

    def require(self) -> None:
        pass

    def close(self) -> None:
        pass

    # ----------------------------------------------------------------- reads, as storage's
    def rows(self) -> List[Dict[str, Any]]:
        """Every row, by obsid (copies)."""
        with self._lock:
            return [dict(row) for _, row in sorted(self._rows.items())]

    def row(self, obsid: int) -> Optional[Dict[str, Any]]:
        with self._lock:
            row = self._rows.get(obsid)
            return None if row is None else dict(row)

    def history(self, obsid: Optional[int] = None) -> List[Dict[str, Any]]:
        """Every recorded attempt (of one obsid, or all), oldest first, with storage's columns."""
        with self._lock:
            found = [{k: h[k] for k in HISTORY_COLUMNS} for h in self._history.values()
                     if obsid is None or h["obsid"] == obsid]
        return sorted(found, key=lambda h: (h["started"], h["obsid"]))

    def results(self, obsid: int) -> Dict[str, Any]:
        """What a done obsid's script recorded with batchResult."""
        with self._lock:
            return dict(self._results.get(obsid, {}))

    # ----------------------------------------------------------------- the table's own steps (lock held)
    def _held(self, claim: Claim, states: Sequence[str]) -> Optional[Dict[str, Any]]:
        """The claim's row if it still holds the claim's token in one of states (fencing), else None."""
        row = self._rows.get(claim.obsid)
        return row if row is not None and row["token"] == claim.token and row["state"] in states else None

    @staticmethod
    def _expiry(row: Dict[str, Any], lease: float) -> Optional[float]:
        if row["lease_expires"] is not None:
            return row["lease_expires"]
        return None if row["heartbeat"] is None else row["heartbeat"] + lease

    def _to_history(self, row: Dict[str, Any], attempt: int, outcome: str, launched: Optional[Outcome] = None) -> None:
        """The row's attempt in the history, keyed by its token, with the heap and cost of the launch's
        outcome: a repeat adds nothing (INSERT IGNORE)."""
        if row["token"] not in self._history:
            self._history[row["token"]] = {**{k: row.get(k) for k in HISTORY_COLUMNS}, "attempt": attempt,
                                           "outcome": outcome, **spent(launched)}

    def _take_back(self, row: Dict[str, Any], reason: str, max_attempts: int) -> None:
        """The attempt ends as `lost`: to pending, or failed once max_attempts are used; token cleared."""
        row.update(ended=self.clock(), reason=reason)
        if row["token"] not in self._history:
            self._history[row["token"]] = {**{k: row.get(k) for k in HISTORY_COLUMNS}, "attempt": row["attempts"] + 1,
                                           "exit_code": None, "signal_no": None, "template": None,
                                           "outcome": "lost", **spent(None)}
        row.update(state=FAILED if row["attempts"] + 1 >= max_attempts else PENDING, attempts=row["attempts"] + 1,
                   token=None, heartbeat=None, lease_expires=None)


# ----------------------------------------------------------------------------- the launcher
# A step of a FakeLauncher's script: a launch to return, or what makes one from the request and the
# worker's should_stop().
Step = Union[Launch, Callable[[LaunchRequest, Callable[[], int]], Launch]]


class FakeLauncher:
    """Launches nothing: each call returns the next step of its script (a launch, or what a callable
    step makes), then `then` for every later call; with no step left, AssertionError. Called as
    hipe.run_obsid is; the requests it was given are kept, in order."""

    def __init__(self, *script: Step, then: Optional[Step] = None):
        self.script, self.then = list(script), then
        self.requests: List[LaunchRequest] = []

    def __call__(self, request: LaunchRequest, should_stop: Callable[[], int], lease: Callable[[], Lease],
                 guardian: Guardian, scratch: Any) -> Launch:
        self.requests.append(request)
        step = self.script.pop(0) if self.script else self.then
        if step is None:
            raise AssertionError(f"no launch scripted for obsid {request.obsid} (launch {len(self.requests)})")
        return step if isinstance(step, Launch) else step(request, should_stop)

    @property
    def obsids(self) -> List[int]:
        """The obsids launched, in order."""
        return [request.obsid for request in self.requests]


def done(seconds: float = 0.01, results: Optional[Dict[str, Any]] = None) -> Launch:
    """HIPE exited 0 with the script run to its end."""
    return Launch(Outcome(True, "", 0), seconds, results=results)


def script_error(status: int = 1, seconds: float = 0.01) -> Launch:
    """HIPE exited with status (the script raised): the script's own fault."""
    return Launch(Outcome(False, f"HIPE exited with status {status}: Traceback", status, script_error=True), seconds)


def cannot_run(seconds: float = 0.01) -> Launch:
    """HIPE could not compile the template (a SyntaxError before its first line ran)."""
    return Launch(Outcome(False, "template cannot run: SyntaxError: invalid syntax", 1, script_error=True,
                          template_broken=True), seconds)


def killed(signum: int = signal.SIGKILL, seconds: float = 0.01) -> Launch:
    """HIPE killed by a signal this worker did not send (the OOM killer, say): worth a retry."""
    return Launch(Outcome(False, f"HIPE killed by {signal.Signals(signum).name}", None, signum), seconds)


def setup_fault(reason: str = "cannot start HIPE (hipe): No such file or directory") -> Launch:
    """HIPE could not be started here: this worker's fault, not the obsid's."""
    return Launch(Outcome(False, reason), 0.0, LaunchEnd.SETUP_FAULT)


def fenced(seconds: float = 0.01) -> Launch:
    """The guardian killed HIPE: the lease was not renewed in time."""
    return Launch(Outcome(False, "HIPE killed by the guardian: the lease was not renewed in time", None,
                          signal.SIGKILL), seconds, LaunchEnd.FENCED)


def claim_lost(table: InMemoryJobTable, max_attempts: int) -> Step:
    """Another worker takes the claim back while HIPE runs (table.take_back), and the launch ends as
    run_obsid's does when the lease keeper finds the claim lost."""
    def step(request: LaunchRequest, should_stop: Callable[[], int]) -> Launch:
        table.take_back(request.obsid, max_attempts)
        return Launch(Outcome(False, "claim lost to another worker; HIPE stopped"), 0.01, LaunchEnd.CLAIM_LOST)
    return step


def stopped(signum: int = signal.SIGTERM) -> Step:
    """Stop signal signum comes while HIPE runs: sent to this process for real (the worker's handler
    must be set, else AssertionError, not the signal's default action), and the launch ends as
    run_obsid's does when should_stop() says so."""
    def step(request: LaunchRequest, should_stop: Callable[[], int]) -> Launch:
        if not callable(signal.getsignal(signum)):
            raise AssertionError(f"no handler for {signal.Signals(signum).name}: the worker did not catch it")
        signal.raise_signal(signum)
        stop = should_stop()
        if not stop:
            raise AssertionError(f"{signal.Signals(signum).name} sent, but should_stop() says 0")
        return Launch(Outcome(False, f"stopped by {signal.Signals(stop).name}"), 0.01, LaunchEnd.STOPPED, stop)
    return step


def slow(launch: Launch, wall: float) -> Step:
    """launch, returned after `wall` seconds of real time (for --max-time)."""
    def step(request: LaunchRequest, should_stop: Callable[[], int]) -> Launch:
        time.sleep(wall)
        return launch
    return step


# ----------------------------------------------------------------------------- guardian and lease keeper
class FakeGuardian:
    """A guardian that starts no process: HIPE is never launched, so there is nothing to kill."""

    pid = 0

    def __init__(self) -> None:
        self.closed = False
        self.deadlines: List[float] = []

    def fence_at(self, deadline: float, with_launch: bool = False) -> None:
        self.deadlines.append(deadline)

    def alive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


class FakeLeaseKeeper:
    """A lease keeper without a thread: the lease is `lease` (HELD unless a test changes it); the
    claims held are kept, in order."""

    def __init__(self, guardian: Any) -> None:
        self.guardian = guardian
        self.lease = Lease.HELD
        self.held: List[Claim] = []
        self.holding: Optional[Claim] = None
        self.closed = False

    def hold(self, claim: Claim, claimed_at: float) -> None:
        self.held.append(claim)
        self.holding = claim

    def hipe_ended(self) -> None:
        pass

    def release(self) -> None:
        self.holding = None

    def state(self) -> Lease:
        return self.lease

    def close(self) -> None:
        self.closed = True
