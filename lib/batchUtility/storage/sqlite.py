"""SQLite: the embedded default, one database file on one machine."""
import os
import sqlite3
import time
from typing import Any, Dict, List, Optional, Tuple

from ..errors import BadInput, BatchError, JobMissing
from ..model import DONE, FAILED, PENDING, RUNNING, STATES, as_seconds
from .durations import NEWER_WINS_SQLITE
from .statements import COUNT_ALL, COUNT_IN_STATE, EXPECTED_FROM_DURATIONS_SQLITE, PENDING_BY_EXPECTED
from .table import JobTable


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
    by_ended = " INDEXED BY {index}"
    by_state = " INDEXED BY {index}"   # as MariaDB's hint: after an ANALYZE SQLite would scan every row by obsid
    columns_of = "SELECT name FROM pragma_table_info(:name)"
    expected_from_durations = EXPECTED_FROM_DURATIONS_SQLITE   # UPDATE ... FROM (SQLite 3.33+), not MariaDB's JOIN
    newer_wins = NEWER_WINS_SQLITE   # ON CONFLICT ... DO UPDATE ... WHERE (SQLite 3.24+)
    table_names = "SELECT name FROM sqlite_master WHERE type = 'table'"
    Error = sqlite3.Error
    # A text that SQLite's numeric affinity turns into the same number ('12', ' 12.5 ', '1e3'), or a
    # number: not '', 'abc', '12abc', '0x10', nor a negative.
    number_or_null = ("CASE WHEN CAST(TRIM({value}) AS NUMERIC) = TRIM({value}) AND CAST(TRIM({value}) AS REAL) >= 0 "
                      "THEN MIN(ROUND(CAST(TRIM({value}) AS REAL)), {most}) END")

    def _connect(self, within: float) -> sqlite3.Connection:
        # A file opens at once: `within` bounds nothing here; the busy timeout stays a call's.
        path = self.settings.path
        if not path.parent.is_dir():
            raise BadInput(f"cannot use {self.settings.describe()}: folder {path.parent} does not exist")
        if not self.create_database and not path.exists():
            raise JobMissing(self.job, self.settings.describe(), database_missing=True)
        # isolation_level=None: transactions are begun explicitly, so a claim's write lock is taken
        # at BEGIN IMMEDIATE and not half-way through (which could deadlock two claimers).
        # A writer stuck inside a transaction (a frozen worker) holds the file's one write lock: the
        # others wait at most call_timeout per try, and retry within their patience.
        # check_same_thread=False: the worker's lease keeper shares this connection, one thread at a time
        # (Engine's lock around each try).
        conn = sqlite3.connect(str(path), timeout=self.call_timeout, isolation_level=None, check_same_thread=False)
        self._identity = self._identity or _file_identity(path)
        conn.execute(f"PRAGMA busy_timeout = {int(self.call_timeout * 1000)}")
        self._switch_to_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _census(self, cur: Any) -> Tuple[Dict[str, int], List[Tuple[Optional[float], int]]]:
        """As JobTable's, but only the pending entries of the claim index are grouped by expected;
        running and failed are counted, a range each, and done is the rest of the whole count (which
        SQLite takes from the b-tree's pages, not its entries): a third of the time on a million
        rows. No statement writes a state outside STATES, so the rest is the done ones."""
        pending = [(as_seconds(expected), int(n)) for expected, n in self._execute(cur, PENDING_BY_EXPECTED).fetchall()]
        counts = {PENDING: sum(n for _, n in pending)}
        for state in (RUNNING, FAILED):
            counts[state] = int(self._execute(cur, COUNT_IN_STATE, {"state": state}).fetchone()[0])
        counts[DONE] = int(self._execute(cur, COUNT_ALL).fetchone()[0]) - sum(counts.values())
        return {state: counts[state] for state in STATES}, pending

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
        # A full disk under the file (SQLITE_FULL) is an outage too: the transaction was rolled back
        # whole, and is waited for within the patience, as a server away is; space freed, it goes
        # through (a worker's finished run is recorded, nothing is charged for the disk).
        return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)
                                                            or _is_full(e))


def _is_full(e: sqlite3.Error) -> bool:
    """SQLITE_FULL: 'database or disk is full' (the disk under the file, its journal or its WAL)."""
    return (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_FULL or "disk is full" in str(e)


def _file_identity(path: Any) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino

