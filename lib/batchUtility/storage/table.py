"""The job table: one row per obsid and what became of it.

Row life: pending -> running (claimed, with a fresh token) -> done | failed | pending (a retry).
`pipelined` is kept for the original's users: 1 means done, nothing else.
Every write a worker makes about its obsid names the claim's token (fencing): once its claim was
reclaimed or reset, the token no longer matches and the write changes nothing.
The lease belongs to the claim: the row's `lease_expires` is set from the claiming worker's own
[run] lease at the claim and at every heartbeat, and whoever takes obsids back (a worker, `reset`)
goes by it, never by a lease of its own: a host with another batch.cfg cannot cut a claim short.
Times in the table are the database's clock in epoch seconds (what `status` shows); no claim is
taken back by them. A claim is taken back only on evidence that holds across machines and clocks:
- its worker's process is gone, seen by a process of the same machine and PID namespace (host name,
  boot id and PID namespace all recorded at the claim, pid with its start time: reclaim_dead_here);
- or its renewal counter (`beats`, one more at each heartbeat) stood still for a whole lease, as
  the taker's own monotonic clock measures it (reclaim_stale): a clock stepped forward or back on
  any machine, the database server's included, cannot make that shorter.
"""
import dataclasses
import logging
import time
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import BadInput, BatchError, DatabaseUnavailable, JobExists, JobMissing, NotAJobTable
from ..model import DONE, FAILED, HISTORY_SUFFIX, INTERACTIVE_PATIENCE, PENDING, SQL_NAME, Claim, Lease, Outcome, check_identifier
from ..obsids import WHAT_AN_OBSID_IS, as_obsid
from ..procfs import machine_identity
from ..results import as_row as result_row
from .durations import LearnedDurations
from .engine import Engine
from .reads import Reads
from .statements import (
    ADD_COLUMN,
    ADDED_COLUMNS,
    ATTEMPT_RECORDED,
    CLAIM,
    CLAIMED_BY,
    CLAIMED_FOR,
    COUNT_LIVE_RUNNING,
    CREATE_CLAIM_INDEX,
    CREATE_ENDED_INDEX,
    CREATE_HISTORY_INDEX,
    CREATE_HISTORY_STARTED_INDEX,
    CREATE_HISTORY_TABLE,
    CREATE_HOSTS_INDEX,
    CREATE_JOB_TABLE,
    CREATE_RESULTS_TABLE,
    DONE_ELSEWHERE,
    DROP_HISTORY_TABLE,
    DROP_JOB_TABLE,
    DROP_RESULTS_TABLE,
    EXPECTED_FROM_MASTER,
    FINISH,
    HEARTBEAT,
    HISTORY_AMEND,
    HISTORY_FROM_ROW,
    HOSTS_INDEX,
    INSERT_FROM_MASTER,
    INSERT_OBSID,
    LAPSED,
    LATE_CLAIM,
    LATE_DONE,
    LOST_MARK,
    LOST_RELEASE,
    LOST_TO_HISTORY,
    MASTER_OBSIDS,
    PICK_PENDING,
    PIPETIME_NOT_A_NUMBER,
    PRESENT,
    RENEWALS,
    REQUEUE,
    RESET_ALL,
    RESET_LISTED,
    RESULTS_DELETE,
    RESULTS_DELETE_ALL,
    RESULTS_DELETE_LISTED,
    RESULTS_INSERT,
    RESULTS_SUFFIX,
    RUNNING_ON_HOST,
    STALE,
    UNCHARGE,
    UNKNOWN_PENDING,
    in_list,
)
from .templates import TemplateGate

log = logging.getLogger(__name__)

DEFAULT_LEASE = 300.0          # seconds, as [run] lease's default

# What a taker has seen of a running claim: its renewal (token, beats, heartbeat), and when it
# first saw that renewal (time.monotonic(), taken after the read that saw it).
Renewal = Tuple[Any, Any, Any]


class LeaseWatch:
    """The running claims a taker has looked at, and since when each has shown the same renewal.

    A claim is due (may be taken back) when the same renewal was seen at two looks at least its
    lease apart, measured from the end of the first look to the start of the last one by this
    process's monotonic clock: no heartbeat committed in between. Its owner's guardian has then
    killed HIPE (at FENCE_SHARE x lease after the last renewal began, by the owner's own clock).
    Wall clocks play no part, so no clock step on any machine can shorten a lease.
    """

    def __init__(self) -> None:
        self.seen: Dict[int, Tuple[Renewal, float]] = {}

    def look(self, rows: Sequence[Tuple[Any, ...]], began: float, ended: float) -> Dict[int, Tuple[Renewal, float]]:
        """Remember the running rows (obsid, token, beats, heartbeat, lease) read between the
        monotonic times began and ended; forget the claims no longer running. Returns the due
        claims: obsid -> (the renewal seen, its lease)."""
        seen: Dict[int, Tuple[Renewal, float]] = {}
        due: Dict[int, Tuple[Renewal, float]] = {}
        for obsid, token, beats, heartbeat, given in rows:
            renewal = (token, beats, heartbeat)
            before = self.seen.get(int(obsid))
            if before is not None and before[0] == renewal:
                seen[int(obsid)] = before
                if began - before[1] >= float(given):
                    due[int(obsid)] = (renewal, float(given))
            else:
                seen[int(obsid)] = (renewal, ended)
        self.seen = seen
        return due

    def forget(self, obsids: Sequence[int]) -> None:
        for obsid in obsids:
            self.seen.pop(obsid, None)


@dataclasses.dataclass
class NextClaim:
    """A worker's next claim, asked of finish() so that the outcome and the next obsid's claim are one
    transaction (one commit; on MySQL one round trip). The worker's identity as for claim(); finish()
    fills in `claim` (the obsid claimed, None if none) and `nothing_pending` (the transaction saw no
    pending obsid: the worker need not ask claim() again before it looks for lost claims)."""
    host: str
    worker: str
    pid: int
    lease: float = DEFAULT_LEASE
    pid_start: Optional[int] = None
    machine: Optional[str] = None
    claim: Optional[Claim] = None
    nothing_pending: bool = False
    asked_at: float = 0.0   # the worker's time.monotonic() before the transaction began: the lease runs from it
    tokens: List[str] = dataclasses.field(default_factory=list)   # one per try, as in claim()

    def values(self) -> Dict[str, Any]:
        """CLAIM's values for a fresh token (remembered, for a retry to look for)."""
        token = uuid.uuid4().hex
        self.tokens.append(token)
        machine = machine_identity() if self.machine is None else self.machine
        return {"token": token, "host": self.host[:255], "worker": self.worker[:32], "pid": self.pid,
                "pid_start": self.pid_start, "machine": machine[:80] or None, "lease": self.lease}

    def took(self, picked: Optional[Tuple[int, int, int, Optional[int]]]) -> None:
        """What _pick_and_claim returned for the last token."""
        self.claim, self.nothing_pending = None, picked is None
        if picked is not None:
            obsid, attempts, claimed, heap = picked
            if claimed != 1:
                raise BatchError(f"claim of obsid {obsid} lost a race it cannot lose; please report this")
            self.claim = Claim(obsid, self.tokens[-1], attempts + 1, self.lease, heap)

    def found(self, table: "JobTable", cur: Any) -> bool:
        """After a try whose COMMIT got no answer: whether it committed, as a row still running under
        one of its tokens shows (then that is the claim)."""
        for earlier in self.tokens:
            row = table._execute(cur, CLAIMED_BY, {"token": earlier}).fetchone()
            if row is not None:
                claim = Claim(int(row[0]), earlier, int(row[1]) + 1, self.lease, _heap(row[2]))
                self.claim, self.nothing_pending = claim, False
                return True
        self.claim, self.nothing_pending = None, False
        return False


class JobTable(LearnedDurations, TemplateGate, Reads, Engine):
    """One job's table of obsids, on one connection that is re-opened after it is lost.

    Every operation is one transaction, retried whole on passing errors (deadlock, lock wait,
    lost connection, SQLITE_BUSY) for up to `patience` seconds, after which DatabaseUnavailable
    is raised; anything else raises BatchError naming the database and what was being done.
    The operations a worker calls take `patience=` and `interrupted=` (asked between retries:
    a worker told to stop must not sit out a long outage); the constructor's are the defaults.
    """

    # ----------------------------------------------------------------- indexes
    def _has_index(self, cur: Any, index: str, table: str) -> bool:
        return self._execute(cur, self.index_exists, {"table": table, "index": index}).fetchone() is not None

    def _create_index(self, cur: Any, text: str, index: str, table: str) -> None:
        # Where CREATE INDEX has no IF NOT EXISTS, a retried create may find the index there already.
        if not self._has_index(cur, index, table):
            try:
                self._execute(cur, text, index=self.quote(index))
            except self.Error as e:
                # Two `new --add` at once (cron): the other one made the index since we looked.
                if not self._is_duplicate_index(e):
                    raise

    def _is_duplicate_index(self, e: Exception) -> bool:
        return False

    # ----------------------------------------------------------------- the job table's life
    def exists(self, patience: Optional[float] = None) -> bool:
        """Whether the job's table exists (whatever its shape); patience: as in _transaction."""
        return self._transaction(lambda cur: self._columns(cur, self.job) is not None, "looking for the job", write=False,
                                 patience=patience)

    def require(self) -> None:
        """Raise JobMissing or NotAJobTable unless the job's table exists and is a job table of this tool."""
        def check(cur):
            columns = self._columns(cur, self.job)
            if columns is None:
                raise JobMissing(self.job, self.settings.describe())
            history = self._columns(cur, self.job + HISTORY_SUFFIX)
            if "token" not in columns or history is None:
                raise NotAJobTable(self.job, self.settings.describe(), columns)
            missing = self._missing_columns({"job_table": columns, "history_table": history})
            return missing, self._columns(cur, self.job + RESULTS_SUFFIX) is not None and self._has_index(
                cur, self.job + HOSTS_INDEX, self.job)
        missing, complete = self._transaction(check, "looking for the job", write=False)
        if missing:
            self._transaction(self._add_columns, "adding new columns to the job table")
        if not complete:
            # A job made before results or the operator's indexes existed: add what it lacks, once
            # (MariaDB builds the indexes without blocking writers; its cost: tests/bench/RESULTS.md).
            log.info("adding the results table and the status indexes to job '%s' (made by an earlier version)", self.job)
            self._transaction(self._create_operator_tables, "adding the results table and the status indexes")

    def _require_made(self, patience: float = INTERACTIVE_PATIENCE) -> None:
        """require(), allowing for a job another `new --add` is making this very moment (two cron
        lines at once): its table is there, its history table may come a moment later (MySQL
        commits each CREATE TABLE on its own)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return self.require()
            except NotAJobTable as e:
                if "token" not in e.columns or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def _create_operator_tables(self, cur: Any) -> None:
        self._execute(cur, CREATE_RESULTS_TABLE)
        self._create_index(cur, CREATE_ENDED_INDEX, self.job + "__ended", self.job)
        self._create_index(cur, CREATE_HISTORY_STARTED_INDEX, self.job + "__attempts_started", self.job + HISTORY_SUFFIX)
        self._create_index(cur, CREATE_HOSTS_INDEX, self.job + HOSTS_INDEX, self.job)

    def _missing_columns(self, present: Dict[str, List[str]]) -> List[Tuple[str, str, str]]:
        return [(table, column, definition) for table, added in ADDED_COLUMNS.items()
                for column, definition in added if column not in present[table]]

    def _add_columns(self, cur: Any) -> None:
        """Give a job table of an older version the columns it lacks; idempotent, so that several
        workers starting at once may all try (a column another added meanwhile is skipped)."""
        present = {"job_table": self._columns(cur, self.job) or [],
                   "history_table": self._columns(cur, self.job + HISTORY_SUFFIX) or []}
        for table, column, definition in self._missing_columns(present):
            names = {"table": getattr(self, table), "column": self.quote(column), "definition": definition}
            try:
                self._execute(cur, ADD_COLUMN, **names)
            except self.Error:
                if column not in (self._columns(cur, self.job if table == "job_table" else self.job + HISTORY_SUFFIX) or []):
                    raise
                log.debug("column %s was added by another worker meanwhile", column)

    def create(self, obsids: Optional[Sequence[int]] = None, master: str = "", add: bool = False) -> int:
        """Create the job's table holding `obsids`, or every obsid of table `master` when obsids is None.

        With add, the job may exist already, and only obsids not yet in it are inserted (without
        add, an existing job raises JobExists). When the master table exists, its pipetime becomes
        each obsid's expected duration, so that long obsids are claimed first; obsids it gives none
        for expect what their earlier successful attempts took, in any job of the database. All or nothing: on
        any error a table this call created is dropped again. Returns how many obsids were added.
        """
        if master:
            check_identifier(master, "master table name")
            if master == self.job:
                raise BadInput(f"job name '{self.job}' is the master table's name; choose another")
        existed = self.exists()
        if existed and not add:
            raise JobExists(self.job, self.total())
        if existed:
            self._require_made()
        master_columns = self._transaction(lambda cur: self._columns(cur, master), "reading the master table",
                                           write=False) if master else None
        if obsids is None and (master_columns is None or "obsid" not in master_columns):
            why = "has no column 'obsid'" if master_columns else "not found"
            raise BadInput(f"master table '{master}' {why} in {self.settings.describe()} ([sql] table in batch.cfg)")
        # A pipetime that is not a number ('', 'abc': the column may be text) becomes NULL, unknown.
        expected = (self.number_or_null.format(value="m.pipetime", most=2**31 - 1)
                    if master_columns and "pipetime" in master_columns else None)
        master_table = self.quote(master) if master else ""
        if obsids is None:
            self._transaction(lambda cur: self._check_master_obsids(cur, master, master_table), "reading the master table",
                              write=False)

        def not_numbers(cur):
            if not expected:
                return 0
            return int(self._execute(cur, PIPETIME_NOT_A_NUMBER, master_table=master_table, expected=expected).fetchone()[0])

        def fill(cur):
            before, bad_before = self._count(cur), not_numbers(cur)
            if obsids is None:
                self._execute(cur, INSERT_FROM_MASTER, master_table=master_table, expected=expected or "NULL")
            else:
                insert = self.statement(INSERT_OBSID)
                for start in range(0, len(obsids), 50_000):
                    cur.executemany(insert, [{"obsid": o} for o in obsids[start:start + 50_000]])
                if expected:
                    self._execute(cur, EXPECTED_FROM_MASTER, master_table=master_table, expected=expected)
            # Those still without a duration expect what the site learned of them (durations.py).
            if self._execute(cur, UNKNOWN_PENDING).fetchone() is not None:
                self._expect_learned(cur)
            return self._count(cur) - before, not_numbers(cur) - bad_before

        if not existed:
            try:
                self._transaction(self._create_tables, "creating the job table")
            except BatchError:
                if not self.exists():
                    raise
                if not add:   # another `new` of this job created it a moment ago: it is theirs
                    raise JobExists(self.job, self.total()) from None
                # Another `new --add` (a second cron line) made it a moment ago: add to it, never drop it.
                existed = True
                self._require_made()
        try:
            self._learn_histories()
            added, not_a_number = self._transaction(fill, "filling the job table")
        except BaseException:
            if not existed:
                self.drop()
            raise
        if not_a_number:
            log.warning("%d obsid(s) added have a pipetime in master table '%s' that is not a number ('' or text): "
                        "their durations count as unknown", not_a_number, master)
        return added

    # A master table's pipetime {value} as a number of seconds (at most {most}, the job's INT), or NULL
    # when it is not one: each dialect says it (sqlite.py, mysql.py).
    number_or_null = "{value}"

    def _check_master_obsids(self, cur: Any, master: str, master_table: str) -> None:
        """Raise BadInput at the master table's first value that is not an obsid, as for a file's
        lines: the database would turn 'abc' into 0 and '1342191756abc' into 1342191756."""
        self._execute(cur, MASTER_OBSIDS, master_table=master_table)
        while True:
            rows = cur.fetchmany(10_000)
            if not rows:
                return
            for (value,) in rows:
                if as_obsid(value) is None:
                    raise BadInput(f"master table '{master}' in {self.settings.describe()}: obsid {value!r} is not an "
                                   f"obsid ({WHAT_AN_OBSID_IS}); nothing was created")

    def _history_tables(self, cur: Any, known: Sequence[str] = ()) -> List[str]:
        """Every job history in the database: JOB__attempts with the columns this tool gives it, but
        those of the jobs `known` (not looked at)."""
        names = [r[0] for r in self._execute(cur, self.table_names).fetchall()]
        candidates = [n for n in names if n.endswith(HISTORY_SUFFIX) and SQL_NAME.match(n)
                      and "__" not in n[:-len(HISTORY_SUFFIX)] and n[:-len(HISTORY_SUFFIX)] not in known]
        columns = self._columns_of_histories(cur, candidates)
        return [n for n in candidates if {"obsid", "outcome", "started", "ended"} <= columns.get(n, set())]

    def _columns_of_histories(self, cur: Any, names: List[str]) -> Dict[str, set]:
        """The column names (lower case) of each of the tables `names` (MySQL: in one query, not one
        query of information_schema per earlier job)."""
        return {n: set(self._columns(cur, n) or ()) for n in names}

    def _create_tables(self, cur: Any) -> None:
        self._execute(cur, CREATE_JOB_TABLE)
        self._execute(cur, CREATE_HISTORY_TABLE)
        self._create_index(cur, CREATE_CLAIM_INDEX, self.job + "__claim", self.job)
        self._create_index(cur, CREATE_HISTORY_INDEX, self.job + "__attempts_obsid", self.job + HISTORY_SUFFIX)
        self._create_operator_tables(cur)

    def drop(self) -> None:
        """Drop the job's table, its history and its results, and nothing else."""
        self._make_durations()

        def drop(cur):
            self._forget_learned_from(cur)
            self._execute(cur, DROP_RESULTS_TABLE)
            self.drop_templates(cur)
            self._execute(cur, DROP_HISTORY_TABLE)
            self._execute(cur, DROP_JOB_TABLE)
        self._transaction(drop, "dropping the job table")

    # ----------------------------------------------------------------- what workers do
    def claim(self, host: str, worker: str, pid: int, lease: float = DEFAULT_LEASE, *, pid_start: Optional[int] = None,
              machine: Optional[str] = None, interrupted: Optional[Callable[[], bool]] = None) -> Optional[Claim]:
        """Atomically take the next pending obsid for this worker, longest expected first.

        No two callers, in any process or on any host, ever get the same row: the row is locked
        (MySQL: FOR UPDATE SKIP LOCKED, so claimers pass each other instead of queueing; SQLite:
        BEGIN IMMEDIATE holds the database's only write lock) and marked running with a token
        that only this claim knows. The row's lease runs out `lease` seconds after the claim unless
        heartbeats renew it. Returns None when nothing is pending.

        Each try has a fresh token; a try whose COMMIT got no answer (the connection broke) may have
        committed all the same, so the next try first looks for a row holding an earlier token.
        machine: the claiming process's machine and PID namespace (procfs.machine_identity(), this
        process's when None), with which reclaim_dead_here tells whether it can see the pid.
        """
        tokens: List[str] = []
        machine = machine_identity() if machine is None else machine

        def take(cur):
            for earlier in tokens:
                row = self._execute(cur, CLAIMED_BY, {"token": earlier}).fetchone()
                if row is not None:
                    return Claim(int(row[0]), earlier, int(row[1]) + 1, lease, _heap(row[2]))
            token = uuid.uuid4().hex
            tokens.append(token)
            picked = self._pick_and_claim(cur, {"token": token, "host": host[:255], "worker": worker[:32], "pid": pid,
                                                "pid_start": pid_start, "machine": machine[:80] or None,
                                                "lease": lease}, commit=True)
            if picked is None:
                return None
            obsid, attempts, claimed, heap = picked
            if claimed != 1:
                raise BatchError(f"claim of obsid {obsid} lost a race it cannot lose; please report this")
            return Claim(obsid, token, attempts + 1, lease, heap)
        return self._transaction(take, "claiming an obsid", interrupted=interrupted)

    def claim_for(self, workers: Sequence[NextClaim], *, patience: Optional[float] = None,
                  interrupted: Optional[Callable[[], bool]] = None) -> None:
        """Atomically take one pending obsid for each of several workers, in one transaction (one
        commit), in their order, longest expected first: the first obsids of the workers `run -j`
        has just forked, claimed by their parent in their names (host, worker, pid, its start time),
        so that their slots start together rather than queue on SQLite's write lock one claim each.
        Fills in each NextClaim's claim as finish() does; nothing_pending for those left without.

        The claims are the workers' as if each had made its own (their tokens, leases and history);
        the guarantees are claim()'s, and a try whose COMMIT got no answer is found by its tokens on
        the next try. Should the claims be made but their news not reach the workers, each worker
        finds its own with claimed_for()."""
        def take(cur):
            # Each worker that tried looks for its tokens: all found, or none (the last try did not commit).
            found = [w.found(self, cur) for w in workers if w.tokens]
            if any(found):
                return   # the last try committed: the claims found are the workers', the others got none
            exhausted = False
            for w in workers:
                if exhausted:
                    w.claim, w.nothing_pending = None, True
                    continue
                w.took(self._pick_and_claim(cur, w.values()))
                exhausted = w.nothing_pending
        self._transaction(take, "claiming the workers' first obsids", patience=patience, interrupted=interrupted)

    def claimed_for(self, host: str, pid: int, pid_start: Optional[int], machine: str, lease: float) -> List[Claim]:
        """The running claims made in this process's name (host, pid and its start time, machine) that it
        was not told of: claim_for()'s, when its caller could not hand them over. Only that process can
        match all four, so it alone may take them up. A read, one try within the patience."""
        def look(cur):
            rows = self._execute(cur, CLAIMED_FOR, {"host": host[:255], "pid": pid, "pid_start": pid_start,
                                                    "machine": machine[:80] or None}).fetchall()
            return [Claim(int(obsid), token, int(attempts) + 1, lease, _heap(heap)) for obsid, token, attempts, heap in rows]
        return self._transaction(look, "looking for claims made in this worker's name", write=False)

    def _pick_and_claim(self, cur: Any, values: Dict[str, Any],
                        commit: bool = False) -> Optional[Tuple[int, int, int, Optional[int]]]:
        """Lock the next pending row and claim it with `values` (CLAIM's, the obsid aside): (obsid,
        attempts so far, rows CLAIM changed, the heap it is known to need), or None if nothing is
        pending. commit: as in _execute_together (here the transaction commits after the work, which
        must end with this)."""
        row = self._execute(cur, PICK_PENDING).fetchone()
        if row is None:
            return None
        claimed = self._execute(cur, CLAIM, {**values, "obsid": int(row[0])}).rowcount
        return int(row[0]), int(row[1]), claimed, _heap(row[2])

    def _together_then_claim(self, cur: Any, statements: Sequence[Tuple[str, Optional[Dict[str, Any]]]],
                             values: Dict[str, Any]) -> Tuple[List[Any], Optional[Tuple[int, int, int, Optional[int]]]]:
        """The statements (as _execute_together's), then _pick_and_claim(values), which commits: each
        statement's (rowcount, rows), and the claim's answer. MySQL sends them all in one round trip."""
        return self._execute_together(cur, statements), self._pick_and_claim(cur, values, commit=True)

    def heartbeat(self, claim: Claim) -> Lease:
        """Renew the claim's lease (for the claim's own lease seconds): HELD (still ours), LOST (taken
        from us) or UNKNOWN (database unreachable).

        Never waits longer than one call: a worker keeps its HIPE running through a short outage.
        """
        def beat(cur):
            self._execute(cur, HEARTBEAT, {"obsid": claim.obsid, "token": claim.token, "lease": claim.lease})
            return Lease.HELD if cur.rowcount == 1 else Lease.LOST
        try:
            return self._transaction(beat, "refreshing a lease", patience=0)
        except DatabaseUnavailable:
            return Lease.UNKNOWN

    def holds(self, claim: Claim) -> bool:
        """Whether the claim's row still holds its token, running: a read, so that a server refusing
        writes (a read-only replica a fail-over reached) still answers. One try, as a heartbeat's."""
        def look(cur):
            return self._execute(cur, CLAIMED_BY, {"token": claim.token}).fetchone() is not None
        return self._transaction(look, "checking a claim", write=False, patience=0)

    def finish(self, claim: Claim, outcome: Outcome, max_attempts: int, *, patience: Optional[float] = None,
               interrupted: Optional[Callable[[], bool]] = None,
               results: Optional[Mapping[str, Any]] = None, then: Optional[NextClaim] = None) -> Optional[str]:
        """Record an outcome for a claim, if the claim is still ours (else nothing changes).

        Success makes the obsid done and replaces its results with `results` (name: number or
        string), in the same transaction; a failure makes it pending again while attempts remain,
        failed when they are used up, and writes no result. The attempt is added to the history.
        Returns the new state, or None if the claim had been taken from us. Safe to repeat after a
        lost connection.

        then: the worker's next claim, taken in the same transaction as the outcome, after it, as claim()
        takes one (so one commit per obsid; on MySQL, without results, one round trip): its answer in
        then.claim. A try whose COMMIT reply was lost committed both or neither: the retry looks for
        the claim by its tokens, then for the outcome by the history row, as claim() and finish() alone do.
        """
        state = DONE if outcome.ok else (FAILED if claim.attempt >= max_attempts else PENDING)
        row = {"obsid": claim.obsid, "token": claim.token}
        attempt_outcome = DONE if outcome.ok else FAILED
        tries = []
        if state == DONE:
            self._make_durations(f"recording the outcome of obsid {claim.obsid}", patience=patience, interrupted=interrupted)

        def record(cur):
            # The next claim committed with the outcome, or neither did: a row running under one of
            # its tokens says both did (the outcome recorded, or found already taken back).
            if tries and then is not None and then.found(self, cur):
                return state if self._execute(cur, ATTEMPT_RECORDED, {**row, "outcome": attempt_outcome}).fetchone() \
                    else None
            # As in requeue: a failure put back to pending by a try whose COMMIT reply was lost may be
            # another worker's claim by now; our history row says that our outcome was recorded.
            if tries and self._execute(cur, ATTEMPT_RECORDED, {**row, "outcome": attempt_outcome}).fetchone():
                return state
            tries.append(True)
            with_results = state == DONE and bool(results)
            # The history's key is the claim's token: when FINISH changes nothing (the claim was taken
            # back, or recorded already), HISTORY_FROM_ROW finds no row holding the token, or one whose
            # attempt the history has already.
            outcome_statements = [
                (FINISH, {**row, "state": state, "pipelined": int(state == DONE), "attempt": claim.attempt,
                          "exit_code": outcome.exit_code, "signal_no": outcome.signal,
                          "reason": outcome.reason[:255] or None, "template": outcome.template or None,
                          "heap_next": outcome.heap_next}),
                (HISTORY_FROM_ROW, {**row, "attempt": claim.attempt, "outcome": attempt_outcome, **spent(outcome)})]
            if state == DONE:   # what it took, for the next jobs of this obsid: in the same transaction
                outcome_statements.append(self._learn_claim(claim.obsid, claim.token))
            if then is not None and not with_results:
                ((finished, _), *_), picked = self._together_then_claim(cur, outcome_statements, then.values())
                then.took(picked)
                return state if finished == 1 else None
            (finished, _), *_ = self._execute_together(cur, outcome_statements,
                                                      commit=not with_results and then is None)
            # Only done rows have results, and a row becomes done only here: without results there are
            # none to replace. With results, a finish repeated after a lost COMMIT reply replaces its own.
            if finished == 1 and with_results:
                self._execute(cur, RESULTS_DELETE, {"obsid": claim.obsid})
                cur.executemany(self.statement(RESULTS_INSERT),
                                [result_row(claim.obsid, name, value) for name, value in results.items()])
            if then is not None:
                then.took(self._pick_and_claim(cur, then.values(), commit=True))
            return state if finished == 1 else None
        return self._transaction(record, f"recording the outcome of obsid {claim.obsid}", patience=patience,
                                 interrupted=interrupted)

    def requeue(self, claim: Claim, reason: str, *, outcome: str = "stopped", template: str = "",
                patience: Optional[float] = None, interrupted: Optional[Callable[[], bool]] = None,
                launched: Optional[Outcome] = None) -> bool:
        """Put a claimed obsid back to pending without counting an attempt (the worker was stopped, or
        the fault was the worker's, not the obsid's); the history records the attempt as `outcome`,
        with the heap and cost of `launched` (the launch's own outcome), and the row the heap its next
        run gets (launched.heap_next), if any.

        Returns False if the claim had been taken from us already. Safe to repeat after a lost connection.
        """
        row = {"obsid": claim.obsid, "token": claim.token}
        tries = []

        def put_back(cur):
            if tries and self._execute(cur, ATTEMPT_RECORDED, {**row, "outcome": outcome}).fetchone():
                return True
            tries.append(True)
            # As in finish: HISTORY_FROM_ROW adds nothing when REQUEUE changes nothing.
            (requeued, _), _ = self._execute_together(cur, [
                (REQUEUE, {**row, "reason": reason[:255], "template": template or None,
                           "heap_next": launched.heap_next if launched else None}),
                (HISTORY_FROM_ROW, {**row, "attempt": claim.attempt, "outcome": outcome, **spent(launched)})],
                commit=True)
            return requeued == 1
        return self._transaction(put_back, f"putting obsid {claim.obsid} back", patience=patience,
                                 interrupted=interrupted)

    def amend_taken_back(self, claim: Claim, outcome: Outcome, fenced: bool = False, *,
                         results: Optional[Mapping[str, Any]] = None, patience: Optional[float] = None,
                         interrupted: Optional[Callable[[], bool]] = None) -> Optional[str]:
        """The late outcome of a claim that was taken back as `lost` meanwhile (its worker frozen, or cut
        off from the database, for longer than its lease): the attempt was the tool's fault, never
        the obsid's, so its charge is undone, and its history row says what became of it.

        A success (fenced False, outcome.ok) is recorded done, with its results, if nobody claimed
        the obsid since it was taken back; else the history says `late` (it succeeded, its
        products are there, and the obsid ran again). A fenced attempt (its guardian killed HIPE) or a
        failure becomes `fenced`. Either way the attempt is no longer counted: one attempt fewer, and
        an obsid failed by that very take-back is pending again. Returns what the history now says
        of the attempt ('done': recorded here, 'late', 'fenced'), or None if the claim was not taken
        back as lost (reset, wiped: nothing changes)."""
        row = {"obsid": claim.obsid, "token": claim.token}
        word = "fenced" if fenced or not outcome.ok else "late"
        note = (f"{outcome.reason[:150]}; " if outcome.reason else "") + \
            "taken back after its lease meanwhile, not counted"
        if word == "late":
            self._make_durations(f"amending the late outcome of obsid {claim.obsid}", patience=patience,
                                 interrupted=interrupted)

        def amend(cur):
            found = self._execute(cur, LATE_CLAIM, row).fetchone()
            if found is None or found[0] != "lost":
                return None
            _, state, token, attempts = found
            values = {**row, "attempt": claim.attempt, "exit_code": outcome.exit_code, "signal_no": outcome.signal,
                      "template": outcome.template or None}
            # LATE_DONE checks again what it read (a claim may come between): it changes one row or none.
            if word == "late" and token is None and int(attempts) == claim.attempt and state in (PENDING, FAILED) \
                    and self._execute(cur, LATE_DONE, values).rowcount == 1:
                self._execute(cur, HISTORY_AMEND, {**values, "outcome": DONE, "reason": "recorded late: " + note})
                self._execute(cur, *self._learn_claim(claim.obsid, claim.token))
                if results:
                    self._execute(cur, RESULTS_DELETE, {"obsid": claim.obsid})
                    cur.executemany(self.statement(RESULTS_INSERT),
                                    [result_row(claim.obsid, name, value) for name, value in results.items()])
                return DONE
            self._execute(cur, UNCHARGE, values)
            self._execute(cur, HISTORY_AMEND, {**values, "outcome": word, "reason": note[:255]})
            return word
        return self._transaction(amend, f"amending the late outcome of obsid {claim.obsid}", patience=patience,
                                 interrupted=interrupted)

    _watch: Optional[LeaseWatch] = None   # what this table's reclaim_stale has seen so far

    def reclaim_stale(self, lease: float, max_attempts: int, *,
                      interrupted: Optional[Callable[[], bool]] = None) -> List[int]:
        """Take back every running obsid whose renewal stood still for its whole lease since this
        table first saw it (its worker is dead, frozen or cut off): see LeaseWatch. So a claim is
        taken back only by a caller that looks again, at least a lease after its first look (a
        waiting worker looks about once a second). Wall clocks play no part.

        The lease is the row's own (from its claiming worker); `lease` only serves rows claimed by
        an older version, which have none. Each costs an attempt and goes back to pending, or to
        failed once max_attempts are used; its token is cleared, so the lost worker can no longer
        record anything for it. The due rows are locked and read again, and only those still
        unchanged taken back; rows another transaction holds locked are skipped (MySQL: SKIP
        LOCKED), so a worker frozen inside a transaction never stalls this one.
        Returns the obsids taken back.
        """
        watch = self._watch = self._watch or LeaseWatch()

        def look(cur):
            began = time.monotonic()
            rows = self._execute(cur, RENEWALS, {"lease": lease}).fetchall()
            return watch.look(rows, began, time.monotonic())
        due = self._transaction(look, "looking at the leases of running obsids", write=False, interrupted=interrupted)
        if not due:
            return []

        def reclaim(cur):
            still: List[int] = []
            for listed, params in in_list(sorted(due)):
                for obsid, token, beats, heartbeat, _ in self._execute(cur, STALE, {**params, "lease": lease},
                                                                       obsids=listed).fetchall():
                    if (token, beats, heartbeat) == due[int(obsid)][0]:
                        still.append(int(obsid))
            by_lease: Dict[float, List[int]] = {}
            for obsid in still:
                by_lease.setdefault(round(due[obsid][1], 3), []).append(obsid)
            for given, stale in sorted(by_lease.items()):
                self._take_back(cur, stale, f"worker lost: no heartbeat for {given:g} s", max_attempts)
            return sorted(still)
        taken = self._transaction(reclaim, "reclaiming obsids of lost workers", interrupted=interrupted)
        watch.forget(taken)
        return taken

    def lapsed(self, lease: float) -> Tuple[int, float]:
        """How many running obsids look lost by the database's clock (their lease_expires passed),
        and the longest lease among them: what `reset --stale` watches. Never a reason to take a
        claim back by itself: a clock stepped forward would make a live claim look lost."""
        def count(cur):
            n, longest = self._execute(cur, LAPSED, {"db_now": self._db_now(cur), "lease": lease}).fetchone()
            return int(n), float(longest or 0.0)
        return self._transaction(count, "looking at the leases of running obsids", write=False)

    def done_elsewhere(self, seconds: float, host: str, pid: int) -> int:
        """How many obsids workers other than (host, pid) finished in the last `seconds`."""
        def count(cur):
            return int(self._execute(cur, DONE_ELSEWHERE, {"seconds": seconds, "host": host, "pid": pid}).fetchone()[0])
        return self._transaction(count, "counting other workers' successes", write=False)

    def live_running(self, lease: float) -> int:
        """How many obsids run under a live lease (`lease`: for rows of an older version only)."""
        def count(cur):
            return int(self._execute(cur, COUNT_LIVE_RUNNING, {"db_now": self._db_now(cur), "lease": lease}).fetchone()[0])
        return self._transaction(count, "counting running obsids", write=False)

    def reclaim_dead_here(self, host: str, gone: Callable[[int, Optional[int]], bool], max_attempts: int, *,
                          machine: Optional[str] = None, interrupted: Optional[Callable[[], bool]] = None) -> List[int]:
        """Take back at once the running obsids claimed on this machine by a process that is gone:
        claimed under host name `host` and under the same machine identity (boot id and PID
        namespace: procfs.machine_identity(), this process's when None), by a pid whose start time
        was recorded, and gone(pid, pid_start) says that process is gone (procfs.process_gone).
        Anything else (another machine or container of the same host name, a claim of an older
        version) is left to its lease. Each costs an attempt, as with reclaim_stale. Returns the
        obsids taken back."""
        machine = (machine_identity() if machine is None else machine)[:80]

        def reclaim(cur):
            if not machine:
                return []
            rows = self._execute(cur, RUNNING_ON_HOST, {"host": host[:255]}).fetchall()
            dead = [(int(obsid), pid) for obsid, pid, start, theirs in rows
                    if theirs == machine and pid is not None and start is not None and gone(int(pid), int(start))]
            for obsid, pid in dead:
                self._take_back(cur, [obsid], f"worker lost: its process {pid} on {host} is gone", max_attempts)
            return [obsid for obsid, _ in dead]
        return self._transaction(reclaim, "reclaiming obsids of dead workers of this host", interrupted=interrupted)

    def _take_back(self, cur: Any, obsids: Sequence[int], reason: str, max_attempts: int) -> None:
        """The obsids' attempts end as `lost`: to pending, or failed once max_attempts are used; tokens cleared."""
        for listed, params in in_list(obsids):
            self._execute(cur, LOST_MARK, {**params, "reason": reason}, obsids=listed)
            self._execute(cur, LOST_TO_HISTORY, params, obsids=listed)
            self._execute(cur, LOST_RELEASE, {**params, "max_attempts": max_attempts}, obsids=listed)

    # ----------------------------------------------------------------- what users do
    def reset(self, lease: float, only_failed: bool = False, obsids: Optional[Sequence[int]] = None) -> Tuple[int, int]:
        """Put obsids back to pending with their attempts cleared (the history is kept).

        All of them, only failed ones, or the listed ones (each must be in the job, else BadInput
        and nothing changes). Running obsids are left alone, whatever the clocks say of their leases:
        resetting them would run them twice at once (reclaim_dead_here and reclaim_stale take back
        those of lost workers). Returns (how many were reset, how many were left running under a
        live lease by the database's clock).
        """
        def reset(cur):
            which = {"only_failed": int(only_failed)}
            # A reset obsid is no longer done, so it has no results; obsids left running have none.
            if obsids is None:
                changed = self._execute(cur, RESET_ALL, which).rowcount
                if not only_failed:
                    self._execute(cur, RESULTS_DELETE_ALL)
            else:
                missing = [o for o in obsids if o not in self._present(cur, obsids)]
                if missing:
                    raise BadInput(f"{len(missing)} obsid(s) not in job '{self.job}', e.g. {missing[0]}; nothing was reset")
                changed = 0
                for listed, params in in_list(obsids):
                    changed += self._execute(cur, RESET_LISTED, {**which, **params}, obsids=listed).rowcount
                    if not only_failed:
                        self._execute(cur, RESULTS_DELETE_LISTED, params, obsids=listed)
            running = self._execute(cur, COUNT_LIVE_RUNNING, {"db_now": self._db_now(cur), "lease": lease}).fetchone()[0]
            return changed, int(running)
        return self._transaction(reset, "resetting obsids")

    def _present(self, cur: Any, obsids: Sequence[int]) -> set:
        found = set()
        for listed, params in in_list(obsids):
            found.update(int(r[0]) for r in self._execute(cur, PRESENT, params, obsids=listed).fetchall())
        return found


def spent(outcome: Optional[Outcome]) -> Dict[str, Any]:
    """HISTORY_FROM_ROW's values of what an attempt was given and cost (all None: not known)."""
    cost = outcome.cost if outcome is not None else None
    return {"heap_mb": outcome.heap_mb if outcome is not None else None,
            "cpu_s": cost.cpu_s if cost else None, "peak_rss_mb": cost.peak_rss_mb if cost else None,
            "read_mb": cost.read_mb if cost else None, "write_mb": cost.write_mb if cost else None}


def _heap(value: Any) -> Optional[int]:
    return None if value is None else int(value)
