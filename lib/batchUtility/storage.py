"""The job table: one row per obsid and what became of it, on MySQL/MariaDB or SQLite.

`JobTable` states what each operation guarantees; `MySQLJobTable` and `SQLiteJobTable` are two
dialects of the same idea, differing only in how they connect, which errors are passing ones, and a
few SQL fragments. All the project's SQL is in this file. Identifiers are judged and quoted here and
nowhere else (`check_identifier`, `quote`); every value is a parameter.

Row life: pending -> running (claimed, with a fresh token) -> done | failed | pending (a retry).
`pipelined` is kept for the original's users: 1 means done, nothing else.
Every write a worker makes about its obsid names the claim's token (fencing): once its claim was
reclaimed or reset, the token no longer matches and the write changes nothing.
Times are the database's clock in epoch seconds, so hosts with skewed clocks agree on leases.
"""
import logging
import os
import random
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import BadInput, BatchError, DatabaseUnavailable

log = logging.getLogger(__name__)

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATES = (PENDING, RUNNING, DONE, FAILED)
HISTORY_SUFFIX = "__attempts"   # job names may not contain "__", so this never names a job
MAX_JOB_NAME = 48
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}\Z")
_CHUNK = 500                    # obsids per IN (...) list


def check_identifier(name, what="job name") -> str:
    """Return `name` if it may name a job (or a master table); else raise BadInput saying why."""
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_JOB_NAME or "__" in name:
        raise BadInput(f"{what} {name!r} is not valid: use at most {MAX_JOB_NAME} letters, digits and "
                       "single underscores, starting with a letter")
    return name


@dataclass(frozen=True)
class Claim:
    """An obsid this worker owns until it finishes, requeues, or its lease runs out."""
    obsid: int
    token: str
    attempt: int     # 1 on the first try


@dataclass(frozen=True)
class Outcome:
    """What became of one launch of HIPE."""
    ok: bool
    reason: str = ""
    exit_code: Optional[int] = None
    signal: Optional[int] = None


_ROW_COLUMNS = """
  pipelined TINYINT NOT NULL DEFAULT 0,
  state VARCHAR(7) NOT NULL DEFAULT 'pending',
  expected INT NULL,
  attempts INT NOT NULL DEFAULT 0,
  token CHAR(32) NULL,
  host VARCHAR(255) NULL,
  worker VARCHAR(32) NULL,
  pid INT NULL,
  started DOUBLE NULL,
  heartbeat DOUBLE NULL,
  ended DOUBLE NULL,
  exit_code INT NULL,
  signal_no INT NULL,
  reason VARCHAR(255) NULL"""
_HISTORY_COLUMNS = """
  token CHAR(32) NOT NULL PRIMARY KEY,
  obsid BIGINT NOT NULL,
  attempt INT NOT NULL,
  host VARCHAR(255) NULL,
  worker VARCHAR(32) NULL,
  pid INT NULL,
  started DOUBLE NULL,
  ended DOUBLE NULL,
  exit_code INT NULL,
  signal_no INT NULL,
  outcome VARCHAR(8) NOT NULL,
  reason VARCHAR(255) NULL"""
# Copies the job row of a claim into the history; parameters: attempt, outcome, obsid, token.
_HISTORY_FROM_ROW = ("{insert_ignore} INTO {h} (token, obsid, attempt, host, worker, pid, started, ended,"
                     " exit_code, signal_no, outcome, reason) SELECT token, obsid, {p}, host, worker, pid,"
                     " started, ended, exit_code, signal_no, {p}, reason FROM {t} WHERE obsid = {p} AND token = {p}")
_CLEARED = ("pipelined = 0, attempts = 0, token = NULL, host = NULL, worker = NULL, pid = NULL, started = NULL,"
            " heartbeat = NULL, ended = NULL, exit_code = NULL, signal_no = NULL, reason = NULL")


class JobTable:
    """One job's table of obsids, on one connection that is re-opened after it is lost.

    Every operation is one transaction, retried whole on passing errors (deadlock, lock wait,
    lost connection, SQLITE_BUSY) for up to `patience` seconds, after which DatabaseUnavailable
    is raised; anything else raises BatchError naming the database and what was being done.
    """

    # Dialect fragments, set by each subclass.
    p = "%s"                 # parameter placeholder
    now = ""                 # the database's clock, epoch seconds
    insert_ignore = ""       # INSERT that skips rows whose key exists
    pk_type = "BIGINT"       # obsid primary key type
    table_options = ""
    skip_locked = ""         # appended to a SELECT that locks rows for update, skipping locked ones
    Error = Exception        # the driver's base error class

    def __init__(self, job: str, settings, patience: float = 10.0, create: bool = False):
        self.job = check_identifier(job)
        self.settings = settings
        self.patience = patience
        self.create_database = create
        self.t = self.quote(job)
        self.h = self.quote(job + HISTORY_SUFFIX)
        self.conn = None
        # Asked between retries: a worker told to stop must not sit out a long database outage.
        self.interrupted: Callable[[], bool] = lambda: False
        self._transaction(lambda cur: None, "connecting")

    # ----------------------------------------------------------------- identifiers, transactions
    @classmethod
    def quote(cls, name: str) -> str:
        """The one place an identifier enters SQL: validated, then quoted."""
        if not _NAME.match(name):
            raise BadInput(f"{name!r} is not a valid SQL name")
        return cls._quote_char + name + cls._quote_char

    def sql(self, text: str, **names) -> str:
        """Fill a statement's table names and dialect fragments (never values)."""
        return text.format(t=self.t, h=self.h, p=self.p, now=self.now, insert_ignore=self.insert_ignore,
                           skip_locked=self.skip_locked, **names)

    def _transaction(self, work: Callable, what: str, patience: Optional[float] = None, write: bool = True):
        """Run work(cursor) as one transaction and commit; retry it whole on passing errors."""
        patience = self.patience if patience is None else patience
        deadline = time.monotonic() + patience
        delay, warned = 0.05, False
        while True:
            try:
                if self.conn is None:
                    self.conn = self._connect()
                cur = self.conn.cursor()
                self._begin(cur, write)
                result = work(cur)
                self.conn.commit()
                return result
            except self.Error as e:
                self._rollback()
                if not self._is_transient(e):
                    if self.conn is None:
                        raise BadInput(f"cannot use {self.settings.describe()}: {_one_line(e)}") from None
                    raise BatchError(f"{self.settings.describe()}: {what}: {_one_line(e)}") from None
                if self._is_connection_error(e):
                    self.close()
                if time.monotonic() + delay > deadline or self.interrupted():
                    waited = f"{patience:.0f} s" if not self.interrupted() else "a stop signal"
                    raise DatabaseUnavailable(f"{self.settings.describe()}: gave up {what} after "
                                              f"{waited}: {_one_line(e)}") from None
                if not warned and patience > 1:
                    log.warning("database trouble while %s (%s); retrying for up to %.0f s", what, _one_line(e), patience)
                    warned = True
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)
            except BaseException:
                self._rollback()  # e.g. BadInput found half-way: leave nothing changed
                raise

    def _rollback(self):
        try:
            if self.conn is not None:
                self.conn.rollback()
        except Exception:  # the connection may be the thing that broke; it is re-opened next time
            self.close()

    def close(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _db_now(self, cur) -> float:
        cur.execute("SELECT " + self.now)
        return float(cur.fetchone()[0])

    # ----------------------------------------------------------------- dialect hooks
    _quote_char = '"'

    def _connect(self):
        raise NotImplementedError

    def _begin(self, cur, write: bool):
        pass

    def _is_transient(self, e) -> bool:
        raise NotImplementedError

    def _is_connection_error(self, e) -> bool:
        return False

    def _columns(self, cur, table: str) -> Optional[List[str]]:
        """The column names of `table`, lower case, or None if there is no such table."""
        raise NotImplementedError

    def _pick_pending(self, cur) -> Optional[Tuple[int, int]]:
        """Lock and return (obsid, attempts) of the next pending row no other transaction holds.

        SQLite needs no row lock: its BEGIN IMMEDIATE already holds the database's only write lock."""
        cur.execute(self.sql("SELECT obsid, attempts FROM {t} WHERE state = 'pending'"
                             " ORDER BY expected DESC, obsid LIMIT 1{skip_locked}"))
        return cur.fetchone()

    # ----------------------------------------------------------------- the job table's life
    def exists(self) -> bool:
        """Whether the job's table exists (whatever its shape)."""
        return self._transaction(lambda cur: self._columns(cur, self.job) is not None, "looking for the job", write=False)

    def require(self):
        """Raise BadInput unless the job's table exists and is a job table of this tool."""
        def check(cur):
            columns = self._columns(cur, self.job)
            if columns is None:
                raise BadInput(f"no job '{self.job}' in {self.settings.describe()}: "
                               f"create it with: BatchProcess.py {self.job} new [FILE]")
            if "token" not in columns or self._columns(cur, self.job + HISTORY_SUFFIX) is None:
                raise BadInput(f"table '{self.job}' in {self.settings.describe()} is not a job table of this tool "
                               f"(columns: {', '.join(columns)}); it was left untouched")
        self._transaction(check, "looking for the job", write=False)

    def create(self, obsids: Optional[Sequence[int]] = None, master: str = "", add: bool = False) -> int:
        """Create the job's table holding `obsids`, or every obsid of table `master` when obsids is None.

        With add, the job may exist already, and only obsids not yet in it are inserted. When the
        master table exists, its pipetime becomes each obsid's expected duration, so that long
        obsids are claimed first. All or nothing: on any error a table this call created is
        dropped again. Returns how many obsids were added.
        """
        if master:
            check_identifier(master, "master table name")
            if master == self.job:
                raise BadInput(f"job name '{self.job}' is the master table's name; choose another")
        existed = self.exists()
        if existed and not add:
            raise BadInput(f"job '{self.job}' exists already ({self.total()} obsids): use --add to add new "
                           f"obsids, or `BatchProcess.py {self.job} wipe` first")
        if existed:
            self.require()
        master_columns = self._transaction(lambda cur: self._columns(cur, master), "reading the master table",
                                           write=False) if master else None
        if obsids is None and (master_columns is None or "obsid" not in master_columns):
            raise BadInput(f"master table '{master}' " + ("has no column 'obsid'" if master_columns else "not found")
                           + f" in {self.settings.describe()} ([sql] table in batch.cfg)")
        expected = "pipetime" if master_columns and "pipetime" in master_columns else None
        q = self.quote(master) if master else None

        def fill(cur):
            before = self._count(cur)
            if obsids is None:
                cur.execute(self.sql("{insert_ignore} INTO {t} (obsid, expected) SELECT obsid, {e} FROM {m}"
                                     " WHERE obsid IS NOT NULL", m=q, e=expected or "NULL"))
            else:
                insert = self.sql("{insert_ignore} INTO {t} (obsid) VALUES ({p})")
                for i in range(0, len(obsids), 50_000):
                    cur.executemany(insert, [(o,) for o in obsids[i:i + 50_000]])
                if expected:
                    cur.execute(self.sql("UPDATE {t} SET expected = (SELECT m.pipetime FROM {m} m"
                                         " WHERE m.obsid = {t}.obsid) WHERE expected IS NULL", m=q))
            return self._count(cur) - before

        if not existed:
            self._transaction(self._create_tables, "creating the job table")
        try:
            return self._transaction(fill, "filling the job table")
        except BaseException:
            if not existed:
                self.drop()
            raise

    def _create_tables(self, cur):
        claim_index = self.quote(self.job + "__claim")
        history_index = self.quote(self.job + "__attempts_obsid")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {self.t} (\n  obsid {self.pk_type} NOT NULL PRIMARY KEY,"
                    f"{_ROW_COLUMNS}\n){self.table_options}")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {self.h} ({_HISTORY_COLUMNS}\n){self.table_options}")
        self._create_index(cur, claim_index, self.t, "state, expected DESC, obsid")
        self._create_index(cur, history_index, self.h, "obsid")

    def _create_index(self, cur, name, table, columns):
        cur.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})")

    def drop(self):
        """Drop the job's table and its history, and nothing else."""
        def drop(cur):
            cur.execute(self.sql("DROP TABLE IF EXISTS {h}"))
            cur.execute(self.sql("DROP TABLE IF EXISTS {t}"))
        self._transaction(drop, "dropping the job table")

    # ----------------------------------------------------------------- what workers do
    def claim(self, host: str, worker: str, pid: int) -> Optional[Claim]:
        """Atomically take the next pending obsid for this worker, longest expected first.

        No two callers, in any process or on any host, ever get the same row: the row is locked
        (MySQL: FOR UPDATE SKIP LOCKED, so claimers pass each other instead of queueing; SQLite:
        one writer at a time) and marked running with a token that only this claim knows.
        Returns None when nothing is pending.
        """
        token = uuid.uuid4().hex

        def take(cur):
            row = self._pick_pending(cur)
            if row is None:
                return None
            obsid, attempts = int(row[0]), int(row[1])
            cur.execute(self.sql("UPDATE {t} SET state = 'running', pipelined = 0, token = {p}, host = {p},"
                                 " worker = {p}, pid = {p}, started = {now}, heartbeat = {now}, ended = NULL,"
                                 " exit_code = NULL, signal_no = NULL WHERE obsid = {p} AND state = 'pending'"),
                        (token, host[:255], worker[:32], pid, obsid))
            if cur.rowcount != 1:
                raise BatchError(f"claim of obsid {obsid} lost a race it cannot lose; please report this")
            return Claim(obsid, token, attempts + 1)
        return self._transaction(take, "claiming an obsid")

    def heartbeat(self, claim: Claim) -> Optional[bool]:
        """Refresh the claim's lease. True: still ours; False: taken from us; None: database unreachable.

        Never waits: a worker keeps its HIPE running through a database outage.
        """
        def beat(cur):
            cur.execute(self.sql("UPDATE {t} SET heartbeat = {now} WHERE obsid = {p} AND token = {p}"
                                 " AND state = 'running'"), (claim.obsid, claim.token))
            return cur.rowcount == 1
        try:
            return self._transaction(beat, "refreshing a lease", patience=0)
        except DatabaseUnavailable:
            return None

    def finish(self, claim: Claim, outcome: Outcome, max_attempts: int) -> Optional[str]:
        """Record an outcome for a claim, if the claim is still ours (else nothing changes).

        Success makes the obsid done; a failure makes it pending again while attempts remain,
        failed when they are used up. The attempt is added to the history. Returns the new state,
        or None if the claim had been taken from us. Safe to repeat after a lost connection.
        """
        state = DONE if outcome.ok else (FAILED if claim.attempt >= max_attempts else PENDING)

        def record(cur):
            cur.execute(self.sql("UPDATE {t} SET state = {p}, pipelined = {p}, attempts = {p}, ended = {now},"
                                 " heartbeat = NULL, exit_code = {p}, signal_no = {p}, reason = {p}"
                                 " WHERE obsid = {p} AND token = {p}"),
                        (state, int(state == DONE), claim.attempt, outcome.exit_code, outcome.signal,
                         outcome.reason[:255] or None, claim.obsid, claim.token))
            if cur.rowcount != 1:
                return None
            cur.execute(self.sql(_HISTORY_FROM_ROW),
                        (claim.attempt, DONE if outcome.ok else FAILED, claim.obsid, claim.token))
            return state
        return self._transaction(record, f"recording the outcome of obsid {claim.obsid}")

    def requeue(self, claim: Claim, reason: str) -> bool:
        """Put a claimed obsid back to pending without counting an attempt (the worker was stopped).

        Returns False if the claim had been taken from us already.
        """
        def put_back(cur):
            cur.execute(self.sql("UPDATE {t} SET state = 'pending', ended = {now}, heartbeat = NULL, reason = {p}"
                                 " WHERE obsid = {p} AND token = {p}"), (reason[:255], claim.obsid, claim.token))
            if cur.rowcount != 1:
                return False
            cur.execute(self.sql(_HISTORY_FROM_ROW), (claim.attempt, "stopped", claim.obsid, claim.token))
            return True
        return self._transaction(put_back, f"putting obsid {claim.obsid} back")

    def reclaim_stale(self, lease: float, max_attempts: int) -> List[int]:
        """Take back every running obsid whose lease ran out (its worker is dead or cut off).

        Each costs an attempt and goes back to pending, or to failed once max_attempts are used;
        its token is cleared, so the lost worker can no longer record anything for it.
        Returns the obsids taken back.
        """
        def reclaim(cur):
            cutoff = self._db_now(cur) - lease
            cur.execute(self.sql("SELECT obsid FROM {t} WHERE state = 'running' AND heartbeat < {p}"
                                 " ORDER BY obsid{lock}", lock=self._lock_rows), (cutoff,))
            stale = [int(r[0]) for r in cur.fetchall()]
            reason = f"worker lost: no heartbeat for {lease:g} s"
            for part in _chunks(stale):
                marks = ", ".join([self.p] * len(part))
                cur.execute(self.sql("UPDATE {t} SET ended = {now}, reason = {p} WHERE obsid IN (" + marks + ")"),
                            (reason, *part))
                cur.execute(self.sql("{insert_ignore} INTO {h} (token, obsid, attempt, host, worker, pid, started,"
                                     " ended, outcome, reason) SELECT token, obsid, attempts + 1, host, worker, pid,"
                                     " started, ended, 'lost', reason FROM {t} WHERE obsid IN (" + marks + ")"), part)
                cur.execute(self.sql("UPDATE {t} SET state = CASE WHEN attempts + 1 >= {p} THEN 'failed'"
                                     " ELSE 'pending' END, attempts = attempts + 1, token = NULL, heartbeat = NULL"
                                     " WHERE obsid IN (" + marks + ")"), (max_attempts, *part))
            return stale
        return self._transaction(reclaim, "reclaiming obsids of lost workers")

    _lock_rows = ""  # how reclaim_stale locks the rows it reads (MySQL: FOR UPDATE)

    # ----------------------------------------------------------------- what users do
    def reset(self, lease: float, only_failed: bool = False, obsids: Optional[Sequence[int]] = None) -> Tuple[int, int]:
        """Put obsids back to pending with their attempts cleared (the history is kept).

        All of them, only failed ones, or the listed ones (each must be in the job, else BadInput
        and nothing changes). Obsids running under a live lease are left alone: resetting them
        would run them twice at once. Returns (how many were reset, how many were left running).
        """
        def reset(cur):
            alive = self._db_now(cur) - lease
            where = "(state <> 'running' OR heartbeat IS NULL OR heartbeat < {p})"
            if only_failed:
                where += " AND state = 'failed'"
            if obsids is None:
                cur.execute(self.sql("UPDATE {t} SET state = 'pending', " + _CLEARED + " WHERE " + where), (alive,))
                changed = cur.rowcount
            else:
                missing = [o for o in obsids if o not in self._present(cur, obsids)]
                if missing:
                    raise BadInput(f"{len(missing)} obsid(s) not in job '{self.job}', e.g. {missing[0]}; nothing was reset")
                changed = 0
                for part in _chunks(obsids):
                    cur.execute(self.sql("UPDATE {t} SET state = 'pending', " + _CLEARED + " WHERE " + where
                                         + " AND obsid IN (" + ", ".join([self.p] * len(part)) + ")"), (alive, *part))
                    changed += cur.rowcount
            cur.execute(self.sql("SELECT COUNT(*) FROM {t} WHERE state = 'running' AND heartbeat >= {p}"), (alive,))
            return changed, int(cur.fetchone()[0])
        return self._transaction(reset, "resetting obsids")

    def _present(self, cur, obsids) -> set:
        found = set()
        for part in _chunks(list(obsids)):
            cur.execute(self.sql("SELECT obsid FROM {t} WHERE obsid IN (" + ", ".join([self.p] * len(part)) + ")"), part)
            found.update(int(r[0]) for r in cur.fetchall())
        return found

    def _count(self, cur) -> int:
        cur.execute(self.sql("SELECT COUNT(*) FROM {t}"))
        return int(cur.fetchone()[0])

    def total(self) -> int:
        return self._transaction(self._count, "counting obsids", write=False)

    def counts(self) -> Dict[str, int]:
        """How many obsids are in each state (every state present, zero or not)."""
        def count(cur):
            cur.execute(self.sql("SELECT state, COUNT(*) FROM {t} GROUP BY state"))
            return {**dict.fromkeys(STATES, 0), **{s: int(n) for s, n in cur.fetchall()}}
        return self._transaction(count, "counting obsids", write=False)

    def failures(self, limit: int = 10) -> List[Tuple[int, int, str]]:
        """The first failed obsids: (obsid, attempts, reason)."""
        def first(cur):
            cur.execute(self.sql("SELECT obsid, attempts, reason FROM {t} WHERE state = 'failed'"
                                 " ORDER BY obsid LIMIT {p}"), (limit,))
            return [(int(o), int(a), r or "") for o, a, r in cur.fetchall()]
        return self._transaction(first, "reading failures", write=False)

    def by_host(self) -> List[Tuple[str, int, int, float]]:
        """Per host that finished obsids: (host, done, failed, seconds its final attempts took)."""
        def hosts(cur):
            cur.execute(self.sql("SELECT host, SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END),"
                                 " SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), SUM(ended - started)"
                                 " FROM {t} WHERE state IN ('done', 'failed') GROUP BY host ORDER BY host"))
            return [(h or "?", int(d), int(f), float(s or 0)) for h, d, f, s in cur.fetchall()]
        return self._transaction(hosts, "summarising hosts", write=False)

    def history(self, obsid: Optional[int] = None) -> List[dict]:
        """Every recorded attempt (of one obsid, or all), oldest first."""
        def read(cur):
            where = " WHERE obsid = {p}" if obsid is not None else ""
            cur.execute(self.sql("SELECT obsid, attempt, host, worker, pid, started, ended, exit_code, signal_no,"
                                 " outcome, reason FROM {h}" + where + " ORDER BY started, obsid"),
                        (obsid,) if obsid is not None else ())
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        return self._transaction(read, "reading the history", write=False)

    def rows(self) -> List[dict]:
        """Every row of the job table, by obsid (for reports and tests)."""
        def read(cur):
            cur.execute(self.sql("SELECT * FROM {t} ORDER BY obsid"))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        return self._transaction(read, "reading the job table", write=False)

    def row(self, obsid: int) -> Optional[dict]:
        """The row of one obsid, or None if it is not in the job (for `status --obsid`)."""
        def read(cur):
            cur.execute(self.sql("SELECT * FROM {t} WHERE obsid = {p}"), (obsid,))
            found = cur.fetchone()
            return dict(zip([d[0] for d in cur.description], found)) if found else None
        return self._transaction(read, f"reading obsid {obsid}", write=False)


def _chunks(items, size=_CHUNK):
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


def _one_line(e) -> str:
    return " ".join(str(e).split())


class SQLiteJobTable(JobTable):
    """The embedded default: one database file on one machine, many worker processes."""

    p = "?"
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    insert_ignore = "INSERT OR IGNORE"
    pk_type = "INTEGER"          # INTEGER PRIMARY KEY is SQLite's rowid: no second index
    Error = sqlite3.Error

    def _connect(self):
        path = self.settings.path
        if not path.parent.is_dir():
            raise BadInput(f"cannot use {self.settings.describe()}: folder {path.parent} does not exist")
        if not self.create_database and not path.exists():
            raise BadInput(f"no job '{self.job}': {self.settings.describe()} does not exist yet "
                           f"(create a job with: BatchProcess.py {self.job} new [FILE])")
        # isolation_level=None: transactions are begun explicitly, so a claim's write lock is taken
        # at BEGIN IMMEDIATE and not half-way through (which could deadlock two claimers).
        conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")   # readers (status) never block the workers
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _begin(self, cur, write):
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def _is_transient(self, e):
        return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))

    def _columns(self, cur, table):
        cur.execute("SELECT name FROM pragma_table_info(?)", (table,))
        names = [r[0].lower() for r in cur.fetchall()]
        return names or None


class MySQLJobTable(JobTable):
    """MySQL or MariaDB, shared by every worker on every host."""

    p = "%s"
    now = "UNIX_TIMESTAMP(NOW(6))"
    insert_ignore = "INSERT IGNORE"
    table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    _lock_rows = " FOR UPDATE"
    _quote_char = "`"
    # Lock wait, deadlock, server shutting down / gone / unreachable / lost, too many connections.
    TRANSIENT = {1205, 1213, 1053, 1040, 1927, 2002, 2003, 2006, 2013, 2055, 4031}
    CONNECTION = {1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031}

    def __init__(self, *args, **kwargs):
        import MySQLdb  # imported here so that SQLite users need no MySQL client library
        self._driver = MySQLdb
        self.Error = MySQLdb.Error
        super().__init__(*args, **kwargs)

    def _connect(self):
        from MySQLdb.constants import CLIENT
        s = self.settings
        options = {"host": s.host, "user": s.user, "database": s.db, "charset": "utf8mb4",
                       "connect_timeout": 10, "autocommit": False,
                       "client_flag": CLIENT.FOUND_ROWS,  # rowcount = rows matched, so repeated writes still count
                       "init_command": "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"}
        if s.port:
            options["port"] = s.port
        if s.socket:
            options["unix_socket"] = s.socket
        if s.password:
            options["password"] = s.password
        # MySQL's own option file, as the mysql client reads it: it may hold the password (so that
        # batch.cfg need not), the port or the socket. What batch.cfg says takes precedence.
        option_file = s.option_file or os.path.expanduser("~/.my.cnf")
        if os.path.isfile(option_file):
            options["read_default_file"] = option_file
        return self._driver.connect(**options)

    def _code(self, e):
        return e.args[0] if e.args and isinstance(e.args[0], int) else None

    def _is_transient(self, e):
        return self._code(e) in self.TRANSIENT or isinstance(e, self._driver.InterfaceError)

    def _is_connection_error(self, e):
        return self._code(e) in self.CONNECTION or isinstance(e, self._driver.InterfaceError)

    def _columns(self, cur, table):
        cur.execute("SELECT LOWER(column_name) FROM information_schema.columns WHERE table_schema = DATABASE()"
                    " AND table_name = %s ORDER BY ordinal_position", (table,))
        names = [r[0] for r in cur.fetchall()]
        return names or None

    def _create_index(self, cur, name, table, columns):
        # MySQL has no CREATE INDEX IF NOT EXISTS; a retried create finds the index there already.
        cur.execute("SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE()"
                    " AND table_name = %s AND index_name = %s", (table.strip("`"), name.strip("`")))
        if cur.fetchone() is None:
            cur.execute(f"CREATE INDEX {name} ON {table} ({columns})")


def open_table(settings, job: str, patience: float = 10.0, create: bool = False) -> JobTable:
    """The job table of `job` on the backend `settings` names ([sql] of batch.cfg)."""
    cls = SQLiteJobTable if settings.backend == "sqlite" else MySQLJobTable
    return cls(job, settings, patience=patience, create=create)
