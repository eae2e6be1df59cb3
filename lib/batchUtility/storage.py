"""The job table: one row per obsid and what became of it, on MySQL/MariaDB or SQLite.

`JobTable` states what each operation guarantees; `MySQLJobTable` and `SQLiteJobTable` are two
dialects of the same idea. All the project's SQL is in this file, each statement whole and named
below, with named parameters (`:obsid`; MySQL's driver gets `%(obsid)s`). Every difference between
the dialects is in its class: its block of attributes, and its hooks (connections, errors, and on
MySQL a worker's claim and outcome sent as one multi-statement each, its COMMIT included: one round
trip each). Identifiers are judged and quoted here and nowhere else (`model.check_identifier`,
`JobTable.quote`); every value is a parameter.

Row life: pending -> running (claimed, with a fresh token) -> done | failed | pending (a retry).
`pipelined` is kept for the original's users: 1 means done, nothing else.
Every write a worker makes about its obsid names the claim's token (fencing): once its claim was
reclaimed or reset, the token no longer matches and the write changes nothing.
The lease belongs to the claim: the row's `lease_expires` is set from the claiming worker's own
[run] lease at the claim and at every heartbeat, and whoever takes obsids back (a worker, `reset`)
goes by it, never by a lease of its own: a host with another batch.cfg cannot cut a claim short.
Times are the database's clock in epoch seconds, so hosts with skewed clocks agree on leases.
"""
import logging
import math
import os
import random
import re
import sqlite3
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .errors import BadInput, BatchError, DatabaseUnavailable, JobExists, JobMissing, NotAJobTable
from .model import (DONE, FAILED, HISTORY_SUFFIX, INTERACTIVE_PATIENCE, PENDING, SQL_NAME, STATES, Claim, Lease,
                    Outcome, check_identifier)
from .obsids import WHAT_AN_OBSID_IS, as_obsid
from .results import as_row as result_row

log = logging.getLogger(__name__)

_CHUNK = 500                    # obsids per IN (...) list
RESULTS_SUFFIX = "__results"    # the job's results table (job names may not contain "__")
STREAM_ROWS = 2000              # rows fetched at a time when streaming (history, results)
DEFAULT_LEASE = 300.0          # seconds, as [run] lease's default
DEFAULT_CALL_TIMEOUT = 60.0     # seconds one database call may block, for commands (`run` derives its own from the lease)
_PARAMETER = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")
Together = Tuple[int, List[Any]]   # what one statement of JobTable._execute_together gave: rowcount, rows

# ----------------------------------------------------------------------------- the statements
# Braces name identifiers and dialect fragments, filled by JobTable.statement(); colons name values.
# {job_table} is the job's table, {history_table} its attempts, {now} the database's clock.

# Plain CREATE TABLE: of two `new` of one job at the same moment, one fails (JobExists).
CREATE_JOB_TABLE = """CREATE TABLE {job_table} (
  obsid {obsid_type} NOT NULL PRIMARY KEY,
  pipelined TINYINT NOT NULL DEFAULT 0,
  state VARCHAR(7) NOT NULL DEFAULT 'pending',
  expected INT NULL,
  attempts INT NOT NULL DEFAULT 0,
  token CHAR(32) NULL,
  host VARCHAR(255) NULL,
  worker VARCHAR(32) NULL,
  pid INT NULL,
  pid_start BIGINT NULL,
  started DOUBLE NULL,
  heartbeat DOUBLE NULL,
  lease_expires DOUBLE NULL,
  ended DOUBLE NULL,
  exit_code INT NULL,
  signal_no INT NULL,
  reason VARCHAR(255) NULL,
  template VARCHAR(16) NULL
){table_options}"""

CREATE_HISTORY_TABLE = """CREATE TABLE {history_table} (
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
  reason VARCHAR(255) NULL,
  template VARCHAR(16) NULL
){table_options}"""

CREATE_CLAIM_INDEX = "{create_index} {index} ON {job_table} (state, expected DESC, obsid)"
CREATE_HISTORY_INDEX = "{create_index} {index} ON {history_table} (obsid)"
# Columns added since the first release: `require()` adds each one a table lacks (ALTER TABLE ADD
# COLUMN), so jobs created by an older version keep working. A later column is one more line here.
ADDED_COLUMNS = {
    "job_table": (("lease_expires", "DOUBLE NULL"), ("template", "VARCHAR(16) NULL"),
                  # the claiming worker's process start time (ticks since boot): see slot.process_start
                  ("pid_start", "BIGINT NULL")),
    "history_table": (("template", "VARCHAR(16) NULL"),),
}
ADD_COLUMN = "ALTER TABLE {table} ADD COLUMN {column} {definition}"
DROP_HISTORY_TABLE = "DROP TABLE IF EXISTS {history_table}"
DROP_JOB_TABLE = "DROP TABLE IF EXISTS {job_table}"

INSERT_FROM_MASTER = """{insert_ignore} INTO {job_table} (obsid, expected)
  SELECT obsid, {expected} FROM {master_table} WHERE obsid IS NOT NULL"""
INSERT_OBSID = "{insert_ignore} INTO {job_table} (obsid) VALUES (:obsid)"
MASTER_OBSIDS = "SELECT obsid FROM {master_table} WHERE obsid IS NOT NULL"
EXPECTED_FROM_MASTER = """UPDATE {job_table}
  SET expected = (SELECT m.pipetime FROM {master_table} m WHERE m.obsid = {job_table}.obsid)
  WHERE expected IS NULL"""
# An obsid without a pipetime (a job made from a file) expects what its successful attempts took in
# an earlier job's history {earlier_history}: so that long obsids are still claimed first. Only pending
# rows: a finished row is left exactly as its run left it.
EXPECTED_FROM_HISTORY = """UPDATE {job_table}
  SET expected = (SELECT ROUND(AVG(h.ended - h.started)) FROM {earlier_history} h
                  WHERE h.obsid = {job_table}.obsid AND h.outcome = 'done')
  WHERE expected IS NULL AND state = 'pending'
    AND obsid IN (SELECT obsid FROM {earlier_history} WHERE outcome = 'done')"""

DB_NOW = "SELECT {now}"
COUNT_ALL = "SELECT COUNT(*) FROM {job_table}"

# Lock (MySQL: skipping rows other claimers hold) the next pending row, longest expected first.
# MySQL claims in one round trip: FORGET_PICKED; PICK_PENDING; CLAIM; PICKED, the picked row passed
# from one statement to the next in session variables ({picked_into}, {picked_obsid}).
PICK_PENDING = """SELECT obsid, attempts{picked_into} FROM {job_table} WHERE state = 'pending'
  ORDER BY expected DESC, obsid LIMIT 1{skip_locked}"""
CLAIM = """UPDATE {job_table}
  SET state = 'running', pipelined = 0, token = :token, host = :host, worker = :worker, pid = :pid,
      pid_start = :pid_start, started = {now}, heartbeat = {now}, lease_expires = {now} + :lease, ended = NULL,
      exit_code = NULL, signal_no = NULL, template = NULL
  WHERE obsid = {picked_obsid} AND state = 'pending'"""
COMMIT = "COMMIT"   # the last of the statements of a transaction sent in one round trip (MySQL)
FORGET_PICKED = "SET @picked_obsid = NULL, @picked_attempts = NULL"   # a SELECT ... INTO finding no row sets nothing
PICKED = "SELECT @picked_obsid, @picked_attempts"
# A claim retried after a lost reply to its COMMIT may have been taken after all: found by its token.
CLAIMED_BY = """SELECT obsid, attempts FROM {job_table} WHERE token = :token AND state = 'running'"""
HEARTBEAT = """UPDATE {job_table} SET heartbeat = {now}, lease_expires = {now} + :lease
  WHERE obsid = :obsid AND token = :token AND state = 'running'"""
# Finish and requeue change their claim's row only while it runs, or repeat what they did (a repeat
# after a lost COMMIT reply finds the state it gave): a claim recorded done or failed stays so (a
# put-back after a finish that did commit). Only `reset` makes a done row pending again, and it deletes
# its results: so only done rows have results.
FINISH = """UPDATE {job_table}
  SET state = :state, pipelined = :pipelined, attempts = :attempt, ended = {now}, heartbeat = NULL,
      lease_expires = NULL, exit_code = :exit_code, signal_no = :signal_no, reason = :reason, template = :template
  WHERE obsid = :obsid AND token = :token AND state IN ('running', :state)"""
REQUEUE = """UPDATE {job_table}
  SET state = 'pending', ended = {now}, heartbeat = NULL, lease_expires = NULL, reason = :reason, template = :template
  WHERE obsid = :obsid AND token = :token AND state IN ('running', 'pending')"""
# An outcome of this claim that committed (its history row, written in the same transaction): a retry
# after a lost COMMIT reply finds it, though the obsid may have been claimed again since (a new token).
ATTEMPT_RECORDED = "SELECT 1 FROM {history_table} WHERE token = :token AND obsid = :obsid AND outcome = :outcome"
# Copies the job row of a claim into the history, as attempt :attempt that ended as :outcome.
HISTORY_FROM_ROW = """{insert_ignore} INTO {history_table}
  (token, obsid, attempt, host, worker, pid, started, ended, exit_code, signal_no, outcome, reason, template)
  SELECT token, obsid, :attempt, host, worker, pid, started, ended, exit_code, signal_no, :outcome, reason, template
  FROM {job_table} WHERE obsid = :obsid AND token = :token"""

# A running row's lease is its own (lease_expires); rows claimed by an older version have none, and
# go by the reader's :lease. Each row also tells the lease it was given, for the reason recorded.
EXPIRY = "COALESCE(lease_expires, heartbeat + :lease)"
STALE = """SELECT obsid, COALESCE(lease_expires - heartbeat, :lease) FROM {job_table}
  WHERE state = 'running' AND {expiry} < :db_now ORDER BY obsid{lock_rows}"""
# The running rows of one host, whose workers' processes can be looked at directly.
RUNNING_ON_HOST = """SELECT obsid, pid, pid_start FROM {job_table} WHERE state = 'running' AND host = :host
  ORDER BY obsid{lock_rows}"""
LOST_MARK = "UPDATE {job_table} SET ended = {now}, reason = :reason WHERE obsid IN ({obsids})"
LOST_TO_HISTORY = """{insert_ignore} INTO {history_table}
  (token, obsid, attempt, host, worker, pid, started, ended, outcome, reason)
  SELECT token, obsid, attempts + 1, host, worker, pid, started, ended, 'lost', reason
  FROM {job_table} WHERE obsid IN ({obsids})"""
LOST_RELEASE = """UPDATE {job_table}
  SET state = CASE WHEN attempts + 1 >= :max_attempts THEN 'failed' ELSE 'pending' END,
      attempts = attempts + 1, token = NULL, heartbeat = NULL, lease_expires = NULL
  WHERE obsid IN ({obsids})"""

# Rows under a live lease (expiring at or after :db_now) are never reset: they would run twice at once.
RESET_ALL = """UPDATE {job_table}
  SET state = 'pending', pipelined = 0, attempts = 0, token = NULL, host = NULL, worker = NULL, pid = NULL,
      started = NULL, heartbeat = NULL, lease_expires = NULL, ended = NULL, exit_code = NULL, signal_no = NULL,
      reason = NULL
  WHERE (state <> 'running' OR heartbeat IS NULL OR {expiry} < :db_now)
    AND (:only_failed = 0 OR state = 'failed')"""
RESET_LISTED = """UPDATE {job_table}
  SET state = 'pending', pipelined = 0, attempts = 0, token = NULL, host = NULL, worker = NULL, pid = NULL,
      started = NULL, heartbeat = NULL, lease_expires = NULL, ended = NULL, exit_code = NULL, signal_no = NULL,
      reason = NULL
  WHERE (state <> 'running' OR heartbeat IS NULL OR {expiry} < :db_now)
    AND (:only_failed = 0 OR state = 'failed') AND obsid IN ({obsids})"""
COUNT_LIVE_RUNNING = "SELECT COUNT(*) FROM {job_table} WHERE state = 'running' AND {expiry} >= :db_now"
# Obsids other workers finished lately (is this worker the only one whose attempts all fail?).
DONE_ELSEWHERE = """SELECT COUNT(*) FROM {job_table} WHERE state = 'done' AND ended >= {now} - :seconds
  AND NOT (host = :host AND pid = :pid)"""
PRESENT = "SELECT obsid FROM {job_table} WHERE obsid IN ({obsids})"

COUNT_BY_STATE = "SELECT state, COUNT(*) FROM {job_table} GROUP BY state"
# One probe of the claim index (COUNT_BY_STATE reads every row): asked by waiting workers once a second.
ANY_RUNNING = "SELECT 1 FROM {job_table} WHERE state = 'running' LIMIT 1"
FIRST_FAILURES = """SELECT obsid, attempts, reason FROM {job_table}{by_state} WHERE state = 'failed'
  ORDER BY obsid LIMIT :limit"""
# Grouped in the order of the hosts index (state, host), which holds every column read: no
# temporary table, no sort, no row read (JobTable.by_host adds each host's two states up).
BY_HOST = """SELECT host, state, COUNT(*), SUM(ended - started)
  FROM {job_table} WHERE state IN ('done', 'failed') GROUP BY state, host"""
HISTORY_ALL = """SELECT obsid, attempt, host, worker, pid, started, ended, exit_code, signal_no, outcome, reason,
       template FROM {history_table}{in_start_order} ORDER BY started, obsid"""
HISTORY_OF_OBSID = """SELECT obsid, attempt, host, worker, pid, started, ended, exit_code, signal_no, outcome, reason,
       template FROM {history_table} WHERE obsid = :obsid ORDER BY started, obsid"""
ALL_ROWS = "SELECT * FROM {job_table} ORDER BY obsid"
ONE_ROW = "SELECT * FROM {job_table} WHERE obsid = :obsid"

# ----------------------------------------------------------------------------- the operator's view
# Results of done obsids (`batchResult` in job scripts): value as text, number for SQL's sums.
CREATE_RESULTS_TABLE = """CREATE TABLE IF NOT EXISTS {results_table} (
  obsid BIGINT NOT NULL,
  name VARCHAR(64) NOT NULL,
  value TEXT NOT NULL,
  number DOUBLE NULL,
  PRIMARY KEY (obsid, name)
){table_options}"""
DROP_RESULTS_TABLE = "DROP TABLE IF EXISTS {results_table}"
# Recent finishes (the rate, the speed, the workers seen) and the history in time order, fast on
# a million rows: each reads a range of one of these indexes.
CREATE_ENDED_INDEX = "{create_index} {index} ON {job_table} (ended)"
CREATE_HISTORY_STARTED_INDEX = "{create_index} {index} ON {history_table} (started, obsid)"
# BY_HOST (`status --json`, `--hosts`) from this index alone: 610,000 entries of a million-row job
# instead of as many whole rows. MariaDB: claims and finishes change `state`, so they move their
# row's entry in it, as in the claim index (no cost measured); it also finds a host's running rows
# (RUNNING_ON_HOST). SQLite: a partial index of the finished rows ({finished_only}), which claims
# never touch (whole, it cost a claim 25 %: tests/bench/RESULTS.md).
CREATE_HOSTS_INDEX = "{create_index} {index} ON {job_table} (state, host, started, ended){finished_only}"
HOSTS_INDEX = "__hosts"   # the newest index: a job without it is given the operator's tables and indexes

RESULTS_DELETE = "DELETE FROM {results_table} WHERE obsid = :obsid"
RESULTS_DELETE_LISTED = "DELETE FROM {results_table} WHERE obsid IN ({obsids})"
RESULTS_DELETE_ALL = "DELETE FROM {results_table}"
RESULTS_INSERT = """INSERT INTO {results_table} (obsid, name, value, number)
  VALUES (:obsid, :name, :value, :number)"""
RESULT_NAMES = """SELECT DISTINCT r.name FROM {results_table} r JOIN {job_table} j ON j.obsid = r.obsid
  WHERE j.state = 'done' ORDER BY r.name"""
# One row per done obsid and result (name NULL: a done obsid without results), by obsid.
RESULTS_OF_DONE = """SELECT j.obsid, r.name, r.value FROM {job_table} j
  LEFT JOIN {results_table} r ON r.obsid = j.obsid WHERE j.state = 'done' ORDER BY j.obsid, r.name"""

# The count in each state and the pending ones by expected duration, in one read of the claim index
# in its own order (state, expected DESC): on MariaDB counting by state, then the pending rows again
# by expected, read 1.4 million index entries of a million-row job, this reads each once.
STATE_BY_EXPECTED = """SELECT state, expected, COUNT(*) FROM {job_table}
  GROUP BY state, expected ORDER BY state, expected DESC"""
RUNNING_NOW = """SELECT obsid, attempts + 1 AS attempt, host, worker, pid, started, heartbeat, expected, reason
  FROM {job_table} WHERE state = 'running' ORDER BY host, worker, pid, obsid"""
RECENT_DONE = """SELECT expected, ended - started FROM {job_table}
  WHERE ended IS NOT NULL AND state = 'done' ORDER BY ended DESC LIMIT :limit"""
FINISHED_SINCE = """SELECT COUNT(*), MIN(started) FROM {job_table}
  WHERE ended >= :since AND state IN ('done', 'failed')"""
WORKERS_SEEN = """SELECT COUNT(*) FROM (
  SELECT host, worker, pid FROM {job_table} WHERE state = 'running' AND heartbeat >= :since
  UNION SELECT host, worker, pid FROM {job_table} WHERE ended >= :since) seen"""
HISTORY_SINCE = """SELECT obsid, attempt, host, worker, pid, started, ended, exit_code, signal_no, outcome, reason
  FROM {history_table}{in_start_order} WHERE started >= :since ORDER BY started, obsid"""


def in_list(obsids: Sequence[int], size: int = _CHUNK) -> Iterator[Tuple[str, Dict[str, int]]]:
    """The one way an `IN ({obsids})` list is written: per chunk of `size` obsids, the list of named
    parameters (':obsid_0, :obsid_1, ...') and their values."""
    obsids = list(obsids)
    for start in range(0, len(obsids), size):
        names = [f"obsid_{i}" for i in range(len(obsids[start:start + size]))]
        yield ", ".join(":" + name for name in names), dict(zip(names, obsids[start:start + size]))


class JobTable:
    """One job's table of obsids, on one connection that is re-opened after it is lost.

    Every operation is one transaction, retried whole on passing errors (deadlock, lock wait,
    lost connection, SQLITE_BUSY) for up to `patience` seconds, after which DatabaseUnavailable
    is raised; anything else raises BatchError naming the database and what was being done.
    The operations a worker calls take `patience=` and `interrupted=` (asked between retries:
    a worker told to stop must not sit out a long outage); the constructor's are the defaults.
    """

    # The dialect: every difference between the databases, set by each subclass.
    parameter = r":\1"             # how a named parameter is written for the driver
    quote_char = '"'
    now = ""                       # the database's clock, epoch seconds
    insert_ignore = ""             # INSERT that skips rows whose key exists
    obsid_type = "BIGINT"          # obsid primary key type
    table_options = ""
    create_index = "CREATE INDEX IF NOT EXISTS"
    index_exists = ""              # a row if index :index of table :table exists
    finished_only = ""             # makes the hosts index a partial one, of finished rows only
    skip_locked = ""               # makes PICK_PENDING lock its row, skipping rows others hold
    picked_into = ""               # where PICK_PENDING puts its row for CLAIM, if not in its result
    picked_obsid = ":obsid"        # the obsid CLAIM claims
    lock_rows = ""                 # makes STALE lock the rows it reads
    # Index hints ({index} is the index meant), where the planner would read a million rows:
    in_start_order = ""            # the history in start order, streamed from its first row (no sort first)
    by_state = ""                  # FIRST_FAILURES: the failed rows by the claim index, not all rows by obsid
    columns_of = ""                # the column names of table :name, lower case, in order
    table_names = ""               # the names of every table in the database
    Error: Any = Exception         # the driver's base error class

    def __init__(self, job: str, settings: Any, patience: float = INTERACTIVE_PATIENCE, create: bool = False,
                 interrupted: Optional[Callable[[], bool]] = None, call_timeout: float = DEFAULT_CALL_TIMEOUT):
        self.job = check_identifier(job)
        self.settings = settings
        self.patience = patience
        # No single call to the database (connect, query, commit) may block longer than this: a frozen
        # or unreachable server must not freeze the worker (its stop signals, its timeouts) with it.
        self.call_timeout = max(1.0, call_timeout)
        self.interrupted: Callable[[], bool] = interrupted or _never
        self.create_database = create
        self.job_table = self.quote(job)
        self.history_table = self.quote(job + HISTORY_SUFFIX)
        self.results_table = self.quote(job + RESULTS_SUFFIX)
        self.conn: Any = None
        self._connected_once = False
        self._committed = False   # the transaction's work sent its COMMIT itself (_execute_together)
        self._transaction(lambda cur: None, "connecting", write=False)   # a reader must not wait for writers

    # ----------------------------------------------------------------- identifiers, statements, transactions
    @classmethod
    def quote(cls, name: str) -> str:
        """The one place an identifier enters SQL: validated, then quoted."""
        if not SQL_NAME.match(name):
            raise BadInput(f"{name!r} is not a valid SQL name")
        return cls.quote_char + name + cls.quote_char

    def statement(self, text: str, **names: str) -> str:
        """One of the statements above, ready for the driver: identifiers and dialect fragments filled
        in (never values), named parameters written the driver's way."""
        filled = text.format(job_table=self.job_table, history_table=self.history_table, now=self.now,
                             insert_ignore=self.insert_ignore, skip_locked=self.skip_locked,
                             picked_into=self.picked_into, picked_obsid=self.picked_obsid,
                             lock_rows=self.lock_rows, create_index=self.create_index,
                             obsid_type=self.obsid_type, table_options=self.table_options, expiry=EXPIRY,
                             **self._operator_names(text), **names)
        return _PARAMETER.sub(self.parameter, filled)

    def _operator_names(self, text: str) -> Dict[str, str]:
        """The results table and the index hints, for the statements that name them."""
        names = {}
        if "{results_table}" in text:
            names["results_table"] = self.results_table
        if "{in_start_order}" in text:
            names["in_start_order"] = self.in_start_order.format(index=self.quote(self.job + "__attempts_started"))
        if "{by_state}" in text:
            names["by_state"] = self.by_state.format(index=self.quote(self.job + "__claim"))
        if "{finished_only}" in text:
            names["finished_only"] = self.finished_only
        return names

    def _execute(self, cur: Any, text: str, params: Optional[Dict[str, Any]] = None, **names: str) -> Any:
        return self._send(cur, self.statement(text, **names), params)

    def _send(self, cur: Any, statement: str, params: Optional[Dict[str, Any]]) -> Any:
        if self._committed:   # it would begin a transaction nobody commits
            raise BatchError("a statement after its transaction's COMMIT; please report this")
        started = time.perf_counter()
        if params is None:
            cur.execute(statement)
        else:
            cur.execute(statement, params)
        if log.isEnabledFor(logging.DEBUG):   # -v
            log.debug("sql %s: %.1f ms", " ".join(statement.split())[:80], 1000 * (time.perf_counter() - started))
        return cur

    def _execute_together(self, cur: Any, statements: Sequence[Tuple[str, Optional[Dict[str, Any]]]],
                          commit: bool = False) -> List[Together]:
        """Execute the statements in order; returns each one's (rowcount, rows). Where the dialect can
        (MySQL), they go to the server in one round trip. So each must be right whatever the earlier
        ones did: none is skipped when an earlier one changes nothing (an error stops them all).
        commit: they end the transaction's work, and the transaction is committed with them (MySQL:
        in the same round trip, COMMIT their last statement)."""
        return [_rowcount_and_rows(self._execute(cur, text, params)) for text, params in statements]

    def _transaction(self, work: Callable[[Any], Any], what: str, write: bool = True,
                     patience: Optional[float] = None, interrupted: Optional[Callable[[], bool]] = None) -> Any:
        """Run work(cursor) as one transaction and commit; retry it whole on passing errors."""
        patience = self.patience if patience is None else patience
        interrupted = self.interrupted if interrupted is None else interrupted
        began = time.monotonic()
        deadline = began + patience
        delay, warned = 0.05, False
        while True:
            try:
                if self.conn is None:
                    self.conn = self._connect()
                    self._connected_once = True
                cur = self.conn.cursor()
                self._committed = False
                self._begin(cur, write)
                result = work(cur)
                committed, self._committed = self._committed, False
                if not committed:
                    self.conn.commit()
                return result
            except self.Error as e:
                self._rollback()
                # Once connected, a refused reconnect (a password changed, a server restarted without
                # our user) is an outage to ride out: work may be waiting to be recorded.
                if not self._is_transient(e) and not (self.conn is None and self._connected_once):
                    if self.conn is None:
                        raise BadInput(f"cannot use {self.settings.describe()}: {_one_line(e)}") from None
                    raise BatchError(f"{self.settings.describe()}: {what}: {_one_line(e)}") from None
                if self._is_connection_error(e):
                    self.close()
                stopping = interrupted()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or stopping:
                    waited = f"{time.monotonic() - began:.1f} s" + (" and a stop signal" if stopping else "")
                    raise DatabaseUnavailable(f"{self.settings.describe()}: gave up {what} after "
                                              f"{waited}: {_one_line(e)}") from None
                if self._is_lock_conflict(e):
                    # Deadlocks between claimers are part of a busy job: retried quietly, shown if they last.
                    log.debug("lock conflict while %s (%s); retrying", what, _one_line(e))
                elif not warned and patience > 1:
                    log.warning("database trouble while %s (%s); retrying for up to %.0f s", what, _one_line(e), patience)
                    warned = True
                # The last wait is cut to the deadline, so that the patience is waited out in full.
                time.sleep(min(delay * random.uniform(0.5, 1.0), remaining))
                delay = min(delay * 2, 5.0)
            except BaseException:
                self._rollback()  # e.g. BadInput found half-way: leave nothing changed
                raise

    def _rollback(self) -> None:
        self._committed = False
        try:
            if self.conn is not None:
                self.conn.rollback()
        except Exception:  # the connection may be the thing that broke; it is re-opened next time
            self.close()

    def close(self) -> None:
        """Close the connection (the next operation opens a new one)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _db_now(self, cur: Any) -> float:
        return float(self._execute(cur, DB_NOW).fetchone()[0])

    def _columns(self, cur: Any, table: str) -> Optional[List[str]]:
        """The column names of `table`, lower case, or None if there is no such table."""
        names = [r[0].lower() for r in self._execute(cur, self.columns_of, {"name": table}).fetchall()]
        return names or None

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

    # ----------------------------------------------------------------- dialect hooks (connections, errors)
    def _connect(self) -> Any:
        raise NotImplementedError

    def _begin(self, cur: Any, write: bool) -> None:
        pass

    def _is_transient(self, e: Exception) -> bool:
        raise NotImplementedError

    def _is_connection_error(self, e: Exception) -> bool:
        return False

    def _is_lock_conflict(self, e: Exception) -> bool:
        return False

    # ----------------------------------------------------------------- the job table's life
    def exists(self) -> bool:
        """Whether the job's table exists (whatever its shape)."""
        return self._transaction(lambda cur: self._columns(cur, self.job) is not None, "looking for the job", write=False)

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
            # (on a million rows the hosts index takes about a second; MariaDB builds it without blocking writers).
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
        expected = "pipetime" if master_columns and "pipetime" in master_columns else None
        master_table = self.quote(master) if master else ""
        if obsids is None:
            self._transaction(lambda cur: self._check_master_obsids(cur, master, master_table), "reading the master table",
                              write=False)

        def fill(cur):
            before = self._count(cur)
            if obsids is None:
                self._execute(cur, INSERT_FROM_MASTER, master_table=master_table, expected=expected or "NULL")
            else:
                insert = self.statement(INSERT_OBSID)
                for start in range(0, len(obsids), 50_000):
                    cur.executemany(insert, [{"obsid": o} for o in obsids[start:start + 50_000]])
                if expected:
                    self._execute(cur, EXPECTED_FROM_MASTER, master_table=master_table)
            self._expect_from_history(cur)
            return self._count(cur) - before

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
            return self._transaction(fill, "filling the job table")
        except BaseException:
            if not existed:
                self.drop()
            raise

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

    def _expect_from_history(self, cur: Any) -> None:
        """Fill the expected durations the master table did not give from earlier attempts at the
        same obsids, in the histories of every job of the database (the first, by job name, that
        has a successful attempt of an obsid gives the mean of them)."""
        for history in sorted(self._history_tables(cur)):
            self._execute(cur, EXPECTED_FROM_HISTORY, earlier_history=self.quote(history))

    def _history_tables(self, cur: Any) -> List[str]:
        """Every job history in the database: JOB__attempts with the columns this tool gives it."""
        names = [r[0] for r in self._execute(cur, self.table_names).fetchall()]
        candidates = [n for n in names if n.endswith(HISTORY_SUFFIX) and SQL_NAME.match(n)
                      and "__" not in n[:-len(HISTORY_SUFFIX)]]
        return [n for n in candidates if {"obsid", "outcome", "started", "ended"} <= set(self._columns(cur, n) or ())]

    def _create_tables(self, cur: Any) -> None:
        self._execute(cur, CREATE_JOB_TABLE)
        self._execute(cur, CREATE_HISTORY_TABLE)
        self._create_index(cur, CREATE_CLAIM_INDEX, self.job + "__claim", self.job)
        self._create_index(cur, CREATE_HISTORY_INDEX, self.job + "__attempts_obsid", self.job + HISTORY_SUFFIX)
        self._create_operator_tables(cur)

    def drop(self) -> None:
        """Drop the job's table, its history and its results, and nothing else."""
        def drop(cur):
            self._execute(cur, DROP_RESULTS_TABLE)
            self._execute(cur, DROP_HISTORY_TABLE)
            self._execute(cur, DROP_JOB_TABLE)
        self._transaction(drop, "dropping the job table")

    # ----------------------------------------------------------------- what workers do
    def claim(self, host: str, worker: str, pid: int, lease: float = DEFAULT_LEASE, *, pid_start: Optional[int] = None,
              interrupted: Optional[Callable[[], bool]] = None) -> Optional[Claim]:
        """Atomically take the next pending obsid for this worker, longest expected first.

        No two callers, in any process or on any host, ever get the same row: the row is locked
        (MySQL: FOR UPDATE SKIP LOCKED, so claimers pass each other instead of queueing; SQLite:
        BEGIN IMMEDIATE holds the database's only write lock) and marked running with a token
        that only this claim knows. The row's lease runs out `lease` seconds after the claim unless
        heartbeats renew it. Returns None when nothing is pending.

        Each try has a fresh token; a try whose COMMIT got no answer (the connection broke) may have
        committed all the same, so the next try first looks for a row holding an earlier token.
        """
        tokens: List[str] = []

        def take(cur):
            for earlier in tokens:
                row = self._execute(cur, CLAIMED_BY, {"token": earlier}).fetchone()
                if row is not None:
                    return Claim(int(row[0]), earlier, int(row[1]) + 1, lease)
            token = uuid.uuid4().hex
            tokens.append(token)
            picked = self._pick_and_claim(cur, {"token": token, "host": host[:255], "worker": worker[:32], "pid": pid,
                                                "pid_start": pid_start, "lease": lease}, commit=True)
            if picked is None:
                return None
            obsid, attempts, claimed = picked
            if claimed != 1:
                raise BatchError(f"claim of obsid {obsid} lost a race it cannot lose; please report this")
            return Claim(obsid, token, attempts + 1, lease)
        return self._transaction(take, "claiming an obsid", interrupted=interrupted)

    def _pick_and_claim(self, cur: Any, values: Dict[str, Any], commit: bool = False) -> Optional[Tuple[int, int, int]]:
        """Lock the next pending row and claim it with `values` (CLAIM's, the obsid aside): (obsid,
        attempts so far, rows CLAIM changed), or None if nothing is pending. commit: as in
        _execute_together (here the transaction commits after the work, which must end with this)."""
        row = self._execute(cur, PICK_PENDING).fetchone()
        if row is None:
            return None
        claimed = self._execute(cur, CLAIM, {**values, "obsid": int(row[0])}).rowcount
        return int(row[0]), int(row[1]), claimed

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

    def finish(self, claim: Claim, outcome: Outcome, max_attempts: int, *, patience: Optional[float] = None,
               interrupted: Optional[Callable[[], bool]] = None,
               results: Optional[Mapping[str, Any]] = None) -> Optional[str]:
        """Record an outcome for a claim, if the claim is still ours (else nothing changes).

        Success makes the obsid done and replaces its results with `results` (name: number or
        string), in the same transaction; a failure makes it pending again while attempts remain,
        failed when they are used up, and writes no result. The attempt is added to the history.
        Returns the new state, or None if the claim had been taken from us. Safe to repeat after a
        lost connection.
        """
        state = DONE if outcome.ok else (FAILED if claim.attempt >= max_attempts else PENDING)
        row = {"obsid": claim.obsid, "token": claim.token}
        attempt_outcome = DONE if outcome.ok else FAILED
        tries = []

        def record(cur):
            # As in requeue: a failure put back to pending by a try whose COMMIT reply was lost may be
            # another worker's claim by now; our history row says that our outcome was recorded.
            if tries and self._execute(cur, ATTEMPT_RECORDED, {**row, "outcome": attempt_outcome}).fetchone():
                return state
            tries.append(True)
            # The history's key is the claim's token: when FINISH changes nothing (the claim was taken
            # back, or recorded already), HISTORY_FROM_ROW finds no row holding the token, or one whose
            # attempt the history has already.
            (finished, _), _ = self._execute_together(cur, [
                (FINISH, {**row, "state": state, "pipelined": int(state == DONE), "attempt": claim.attempt,
                          "exit_code": outcome.exit_code, "signal_no": outcome.signal,
                          "reason": outcome.reason[:255] or None, "template": outcome.template or None}),
                (HISTORY_FROM_ROW, {**row, "attempt": claim.attempt, "outcome": attempt_outcome})],
                commit=not (state == DONE and results))
            if finished != 1:
                return None
            # Only done rows have results, and a row becomes done only here: without results there are
            # none to replace. With results, a finish repeated after a lost COMMIT reply replaces its own.
            if state == DONE and results:
                self._execute(cur, RESULTS_DELETE, {"obsid": claim.obsid})
                cur.executemany(self.statement(RESULTS_INSERT),
                                [result_row(claim.obsid, name, value) for name, value in results.items()])
            return state
        return self._transaction(record, f"recording the outcome of obsid {claim.obsid}", patience=patience,
                                 interrupted=interrupted)

    def requeue(self, claim: Claim, reason: str, *, outcome: str = "stopped", template: str = "",
                patience: Optional[float] = None, interrupted: Optional[Callable[[], bool]] = None) -> bool:
        """Put a claimed obsid back to pending without counting an attempt (the worker was stopped, or
        the fault was the worker's, not the obsid's); the history records the attempt as `outcome`.

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
                (REQUEUE, {**row, "reason": reason[:255], "template": template or None}),
                (HISTORY_FROM_ROW, {**row, "attempt": claim.attempt, "outcome": outcome})], commit=True)
            return requeued == 1
        return self._transaction(put_back, f"putting obsid {claim.obsid} back", patience=patience,
                                 interrupted=interrupted)

    def reclaim_stale(self, lease: float, max_attempts: int, *,
                      interrupted: Optional[Callable[[], bool]] = None) -> List[int]:
        """Take back every running obsid whose lease ran out (its worker is dead or cut off).

        The lease is the row's own (`lease_expires`, from its claiming worker); `lease` only serves
        rows claimed by an older version, which have none. Each costs an attempt and goes back to
        pending, or to failed once max_attempts are used; its token is cleared, so the lost worker
        can no longer record anything for it. Rows another transaction holds locked are skipped
        (MySQL: SKIP LOCKED), so a worker frozen inside a transaction never stalls this one.
        Returns the obsids taken back.
        """
        def reclaim(cur):
            found = self._execute(cur, STALE, {"db_now": self._db_now(cur), "lease": lease}).fetchall()
            by_lease: Dict[float, List[int]] = {}
            for obsid, given in found:
                by_lease.setdefault(round(float(given), 3), []).append(int(obsid))
            for given, stale in sorted(by_lease.items()):
                self._take_back(cur, stale, f"worker lost: no heartbeat for {given:g} s", max_attempts)
            return sorted(int(obsid) for obsid, _ in found)
        return self._transaction(reclaim, "reclaiming obsids of lost workers", interrupted=interrupted)

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
                          interrupted: Optional[Callable[[], bool]] = None) -> List[int]:
        """Take back at once the running obsids claimed on `host` (this host) by a process that is
        gone: gone(pid, pid_start) says so (slot.process_gone). Each costs an attempt, as with
        reclaim_stale; claims of other hosts are left to their lease. Returns the obsids taken back."""
        def reclaim(cur):
            rows = self._execute(cur, RUNNING_ON_HOST, {"host": host[:255]}).fetchall()
            dead = [(int(obsid), pid) for obsid, pid, start in rows
                    if pid is not None and gone(int(pid), None if start is None else int(start))]
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
        and nothing changes). Obsids running under a live lease are left alone: resetting them
        would run them twice at once. Returns (how many were reset, how many were left running).
        """
        def reset(cur):
            which = {"db_now": self._db_now(cur), "lease": lease, "only_failed": int(only_failed)}
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
            running = self._execute(cur, COUNT_LIVE_RUNNING, {"db_now": which["db_now"], "lease": lease}).fetchone()[0]
            return changed, int(running)
        return self._transaction(reset, "resetting obsids")

    def _present(self, cur: Any, obsids: Sequence[int]) -> set:
        found = set()
        for listed, params in in_list(obsids):
            found.update(int(r[0]) for r in self._execute(cur, PRESENT, params, obsids=listed).fetchall())
        return found

    def _count(self, cur: Any) -> int:
        return int(self._execute(cur, COUNT_ALL).fetchone()[0])

    def total(self) -> int:
        """How many obsids the job holds."""
        return self._transaction(self._count, "counting obsids", write=False)

    def counts(self, *, interrupted: Optional[Callable[[], bool]] = None) -> Dict[str, int]:
        """How many obsids are in each state (every state present, zero or not)."""
        def count(cur):
            found = {state: int(n) for state, n in self._execute(cur, COUNT_BY_STATE).fetchall()}
            return {**dict.fromkeys(STATES, 0), **found}
        return self._transaction(count, "counting obsids", write=False, interrupted=interrupted)

    def any_running(self, *, interrupted: Optional[Callable[[], bool]] = None) -> bool:
        """Whether any obsid of the job is running (cheap at any size: one index probe)."""
        return self._transaction(lambda cur: self._execute(cur, ANY_RUNNING).fetchone() is not None,
                                 "looking for running obsids", write=False, interrupted=interrupted)

    def failures(self, limit: int = 10) -> List[Tuple[int, int, str]]:
        """The first failed obsids: (obsid, attempts, reason)."""
        def first(cur):
            rows = self._execute(cur, FIRST_FAILURES, {"limit": limit}).fetchall()
            return [(int(obsid), int(attempts), reason or "") for obsid, attempts, reason in rows]
        return self._transaction(first, "reading failures", write=False)

    def by_host(self) -> List[Tuple[str, int, int, float]]:
        """Per host that finished obsids: (host, done, failed, seconds its final attempts took)."""
        totals: Dict[str, List[Any]] = {}
        for host, state, n, busy in self._transaction(lambda cur: self._execute(cur, BY_HOST).fetchall(),
                                                      "summarising hosts", write=False):
            done_failed_busy = totals.setdefault(host or "?", [0, 0, 0.0])
            done_failed_busy[0 if state == DONE else 1] += int(n)
            done_failed_busy[2] += float(busy or 0)
        return [(host, done, failed, busy) for host, (done, failed, busy) in sorted(totals.items())]

    def history(self, obsid: Optional[int] = None) -> List[Dict[str, Any]]:
        """Every recorded attempt (of one obsid, or all), oldest first."""
        def read(cur):
            if obsid is None:
                return _dicts(self._execute(cur, HISTORY_ALL))
            return _dicts(self._execute(cur, HISTORY_OF_OBSID, {"obsid": obsid}))
        return self._transaction(read, "reading the history", write=False)

    def rows(self) -> List[Dict[str, Any]]:
        """Every row of the job table, by obsid (for reports and tests)."""
        return self._transaction(lambda cur: _dicts(self._execute(cur, ALL_ROWS)), "reading the job table", write=False)

    def row(self, obsid: int) -> Optional[Dict[str, Any]]:
        """The row of one obsid, or None if it is not in the job (for `status --obsid`)."""
        def read(cur):
            found = _dicts(self._execute(cur, ONE_ROW, {"obsid": obsid}))
            return found[0] if found else None
        return self._transaction(read, f"reading obsid {obsid}", write=False)


    # ----------------------------------------------------------------- the operator's view
    def pace_figures(self, rate_window: float, workers_window: float, samples: int = 500,
                     census: bool = True) -> Dict[str, Any]:
        """What the status block rests on, read in one transaction (counts and ETA of one moment)
        from indexes only.

        now (the database's clock); counts (obsids in each state, as `counts()`); finished (obsids
        that ended done or failed since now - rate_window) and first_start (the earliest start among
        them); workers (distinct host, slot and pid heard from since now - workers_window); pending
        ((expected, count) groups); running (rows as `running()` gives them); recent ((expected,
        seconds) of the last `samples` done obsids, newest first). census=False leaves out counts
        and pending, which read every row (`status --running` needs neither).
        """
        def read(cur):
            now = self._db_now(cur)
            finished, first_start = self._execute(cur, FINISHED_SINCE, {"since": now - rate_window}).fetchone()
            workers = self._execute(cur, WORKERS_SEEN, {"since": now - workers_window}).fetchone()[0]
            counts, pending = dict.fromkeys(STATES, 0), []
            for state, expected, n in (self._execute(cur, STATE_BY_EXPECTED).fetchall() if census else ()):
                counts[state] = counts.get(state, 0) + int(n)
                if state == PENDING:
                    pending.append((expected, int(n)))
            running = _dicts(self._execute(cur, RUNNING_NOW))
            recent = [(e, s) for e, s in self._execute(cur, RECENT_DONE, {"limit": samples}).fetchall()]
            return {"now": now, "counts": counts if census else None, "finished": int(finished or 0),
                    "first_start": first_start, "workers": int(workers), "pending": pending, "running": running,
                    "recent": recent}
        return self._transaction(read, "measuring the pace", write=False)

    def running(self) -> Tuple[float, List[Dict[str, Any]]]:
        """The database's clock, and the running obsids: obsid, attempt, host, worker (slot), pid,
        started, heartbeat, expected, reason."""
        def read(cur):
            return self._db_now(cur), _dicts(self._execute(cur, RUNNING_NOW))
        return self._transaction(read, "listing running obsids", write=False)

    def iter_history(self, since: Optional[float] = None) -> Iterator[Dict[str, Any]]:
        """Every attempt (started at or after `since`), oldest first, streamed: a million rows are
        never held at once (MySQL: a server-side cursor)."""
        if since is None:
            return self._stream(HISTORY_ALL, None, "reading the history")
        return self._stream(HISTORY_SINCE, {"since": since}, "reading the history")

    def result_names(self) -> List[str]:
        """The names of the results of done obsids, sorted."""
        return self._transaction(lambda cur: [r[0] for r in self._execute(cur, RESULT_NAMES).fetchall()],
                                 "reading result names", write=False)

    def iter_results(self) -> Iterator[Dict[str, Any]]:
        """(obsid, name, value) of every done obsid's results by obsid, name None for a done obsid
        without results; streamed."""
        return self._stream(RESULTS_OF_DONE, None, "reading results")

    def clock(self) -> float:
        """The database's clock, epoch seconds."""
        return self._transaction(self._db_now, "reading the clock", write=False)

    def _stream(self, text: str, params: Optional[Dict[str, Any]], what: str) -> Iterator[Dict[str, Any]]:
        # The connection is made (with the usual patience) before the first row; once rows have
        # been handed out, an error cannot be retried without repeating them, so it is raised.
        self._transaction(lambda cur: None, what, write=False)
        cur, finished = self._stream_cursor(), False
        try:
            self._execute(cur, text, params)
            names = [d[0] for d in cur.description]
            while True:
                rows = cur.fetchmany(STREAM_ROWS)
                if not rows:
                    break
                for row in rows:
                    yield dict(zip(names, row))
            finished = True
        except self.Error as e:
            raise BatchError(f"{self.settings.describe()}: {what}: {_one_line(e)}") from None
        finally:
            if finished:
                cur.close()
                self._rollback()   # ends the read transaction
            else:
                # Left half-read (an error, or `| head`): drop the connection rather than read
                # the rest of a million rows the server still holds for us.
                self.close()

    def _stream_cursor(self) -> Any:
        return self.conn.cursor()


def _rowcount_and_rows(cur: Any) -> Together:
    return cur.rowcount, list(cur.fetchall())


def _dicts(cur: Any) -> List[Dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _never() -> bool:
    return False


def _file_identity(path: Any) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


class SQLiteJobTable(JobTable):
    """The embedded default: one database file on one machine, many worker processes."""

    parameter = r":\1"
    quote_char = '"'
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    insert_ignore = "INSERT OR IGNORE"
    obsid_type = "INTEGER"          # INTEGER PRIMARY KEY is SQLite's rowid: no second index
    table_options = ""
    create_index = "CREATE INDEX IF NOT EXISTS"
    index_exists = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND tbl_name = :table AND name = :index"
    finished_only = " WHERE state IN ('done', 'failed')"   # the same words as BY_HOST's: SQLite then uses it
    skip_locked = ""                # no row locks: BEGIN IMMEDIATE holds the database's only write lock
    lock_rows = ""
    in_start_order = ""             # SQLite reads the index in order by itself
    by_state = ""
    columns_of = "SELECT name FROM pragma_table_info(:name)"
    table_names = "SELECT name FROM sqlite_master WHERE type = 'table'"
    Error = sqlite3.Error

    def _connect(self) -> sqlite3.Connection:
        path = self.settings.path
        if not path.parent.is_dir():
            raise BadInput(f"cannot use {self.settings.describe()}: folder {path.parent} does not exist")
        if not self.create_database and not path.exists():
            raise JobMissing(self.job, self.settings.describe(), database_missing=True)
        # isolation_level=None: transactions are begun explicitly, so a claim's write lock is taken
        # at BEGIN IMMEDIATE and not half-way through (which could deadlock two claimers).
        # A writer stuck inside a transaction (a frozen worker) holds the file's one write lock: the
        # others wait at most call_timeout per try, and retry within their patience.
        conn = sqlite3.connect(str(path), timeout=self.call_timeout, isolation_level=None)
        self._identity = self._identity or _file_identity(path)
        conn.execute(f"PRAGMA busy_timeout = {int(self.call_timeout * 1000)}")
        self._switch_to_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    _identity: Optional[Tuple[int, int]] = None   # (st_dev, st_ino) of the file when first opened

    def _switch_to_wal(self, conn: sqlite3.Connection) -> None:
        """WAL: readers (status) never block the workers, nor a writer them. The switch does not wait
        on busy_timeout: while another connection switches the same new file (two `new` at once), it
        fails at once with "database is locked", which is no trouble to warn about: try again."""
        deadline = time.monotonic() + self.call_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if not self._is_transient(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _begin(self, cur: Any, write: bool) -> None:
        # A file deleted or replaced under the workers: without this check they would go on writing
        # into the old file (kept alive by their open descriptors), and all their work would be lost.
        if self._identity is not None and _file_identity(self.settings.path) != self._identity:
            raise BatchError(f"{self.settings.describe()} was deleted or replaced while in use; stopping "
                             "(the work recorded since is in the old file, which is gone)")
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def _columns(self, cur: Any, table: str) -> Optional[List[str]]:
        # SQLite's table names ignore case: `HIFI` would be the job `hifi` (and `HIFI wipe` drop it).
        cur.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE", (table,))
        found = cur.fetchone()
        if found is not None and found[0] != table:
            raise BadInput(f"'{table}' differs only in case from the table '{found[0]}' in {self.settings.describe()}, "
                           f"and SQLite's names ignore case: use '{found[0]}'")
        return super()._columns(cur, table)

    def _is_transient(self, e: Exception) -> bool:
        return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


class MySQLJobTable(JobTable):
    """MySQL or MariaDB, shared by every worker on every host."""

    parameter = r"%(\1)s"
    quote_char = "`"
    now = "UNIX_TIMESTAMP(NOW(6))"
    insert_ignore = "INSERT IGNORE"
    obsid_type = "BIGINT"
    table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    create_index = "CREATE INDEX"   # no IF NOT EXISTS: index_exists is asked first
    index_exists = """SELECT 1 FROM information_schema.statistics
  WHERE table_schema = DATABASE() AND table_name = :table AND index_name = :index"""
    skip_locked = " FOR UPDATE SKIP LOCKED"
    picked_into = " INTO @picked_obsid, @picked_attempts"
    picked_obsid = "@picked_obsid"
    lock_rows = " FOR UPDATE SKIP LOCKED"   # a row a stuck transaction holds is taken back next time
    in_start_order = " FORCE INDEX ({index})"
    by_state = " FORCE INDEX ({index})"
    columns_of = """SELECT LOWER(column_name) FROM information_schema.columns
  WHERE table_schema = DATABASE() AND table_name = :name ORDER BY ordinal_position"""
    table_names = "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
    # Lock wait, deadlock, server shutting down / gone / unreachable / lost, too many connections.
    TRANSIENT = {1205, 1213, 1053, 1040, 1927, 2002, 2003, 2006, 2013, 2055, 4031}
    CONNECTION = {1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031}

    def __init__(self, *args: Any, **kwargs: Any):
        import MySQLdb  # imported here so that SQLite users need no MySQL client library
        self._driver = MySQLdb
        self.Error = MySQLdb.Error
        super().__init__(*args, **kwargs)

    def _connect(self) -> Any:
        from MySQLdb.constants import CLIENT
        s = self.settings
        # Every wait for the server is bounded: without read and write timeouts a frozen server (or a
        # network silently dropping packets) blocks a query for as long as it lasts.
        seconds = math.ceil(self.call_timeout)
        options = {"host": s.host, "user": s.user, "database": s.db, "charset": "utf8mb4",
                   "connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds,
                   "autocommit": False,
                   # rowcount = rows matched, so repeated writes still count; several statements in one
                   # round trip (_execute_together: every value is a parameter, every identifier checked)
                   "client_flag": CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS,
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
        conn = self._driver.connect(**options)
        try:
            self._limit_session(conn.cursor(), seconds)
        except BaseException:
            conn.close()
            raise
        return conn

    def _limit_session(self, cur: Any, seconds: int) -> None:
        """Short lock waits (retried whole), and a transaction left idle by a stuck client (a frozen
        worker between its UPDATE and its COMMIT) aborted by the server, so that its row locks
        never stall the other workers for long. idle_transaction_timeout is MariaDB's (10.3+);
        MySQL has none, and there the lock waits' bound and SKIP LOCKED must do."""
        # Half the call's timeout: a lock wait must end as "lock wait timeout" (retried whole), not as
        # the client's read timeout, which costs the connection.
        cur.execute(f"SET SESSION innodb_lock_wait_timeout = {max(1, seconds // 2)}")
        try:
            cur.execute(f"SET SESSION idle_transaction_timeout = {max(2, seconds)}")
        except self._driver.OperationalError as e:
            if self._code(e) != 1193:   # unknown system variable: not MariaDB
                raise

    def _code(self, e: Exception) -> Optional[int]:
        return e.args[0] if e.args and isinstance(e.args[0], int) else None

    def _is_transient(self, e: Exception) -> bool:
        return self._code(e) in self.TRANSIENT or isinstance(e, self._driver.InterfaceError)

    def _is_connection_error(self, e: Exception) -> bool:
        return self._code(e) in self.CONNECTION or isinstance(e, self._driver.InterfaceError)

    def _execute_together(self, cur: Any, statements: Sequence[Tuple[str, Optional[Dict[str, Any]]]],
                          commit: bool = False) -> List[Together]:
        # One multi-statement, each statement's values escaped by the driver. The server stops at the
        # first statement that fails (the COMMIT is never reached after an error); every result is read
        # here, so that error is raised by nextset(), in the transaction, which is then rolled back (and
        # retried whole if the error passes). A lost reply leaves the COMMIT ambiguous, as a lost reply
        # to conn.commit() would: what the retries of claim and finish are made for.
        sent = [*statements, (COMMIT, None)] if commit else statements
        text = ";\n".join(cur.mogrify(self.statement(t), p) for t, p in sent)
        results = [_rowcount_and_rows(self._send(cur, text, None))]
        while cur.nextset():
            results.append(_rowcount_and_rows(cur))
        self._committed = commit
        return results[:len(statements)]

    def _pick_and_claim(self, cur: Any, values: Dict[str, Any], commit: bool = False) -> Optional[Tuple[int, int, int]]:
        # In one round trip: PICK_PENDING selects INTO the variables CLAIM and PICKED read.
        _, _, (claimed, _), (_, [(obsid, attempts)]) = self._execute_together(
            cur, [(FORGET_PICKED, None), (PICK_PENDING, None), (CLAIM, values), (PICKED, None)], commit)
        return None if obsid is None else (int(obsid), int(attempts), claimed)

    def _stream_cursor(self) -> Any:
        import MySQLdb.cursors
        return self.conn.cursor(MySQLdb.cursors.SSCursor)   # rows stay on the server until fetched

    def _is_lock_conflict(self, e: Exception) -> bool:
        return self._code(e) == 1213

    def _is_duplicate_index(self, e: Exception) -> bool:
        return self._code(e) == 1061   # ER_DUP_KEYNAME


def open_table(settings: Any, job: str, patience: float = INTERACTIVE_PATIENCE, create: bool = False,
               interrupted: Optional[Callable[[], bool]] = None, call_timeout: float = DEFAULT_CALL_TIMEOUT) -> JobTable:
    """The job table of `job` on the backend `settings` names ([sql] of batch.cfg)."""
    cls = SQLiteJobTable if settings.backend == "sqlite" else MySQLJobTable
    return cls(job, settings, patience=patience, create=create, interrupted=interrupted, call_timeout=call_timeout)
