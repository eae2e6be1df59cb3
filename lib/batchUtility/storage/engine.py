"""The engine under a job table: one connection, re-opened after it is lost, and transactions
retried whole on passing errors (`Engine._transaction` states the guarantees).

One connection serves every thread of a process that uses the table (a worker's loop and its lease
keeper's heartbeats): each try of a transaction holds the connection's lock from its first
statement to its COMMIT (or rollback), never through the wait between tries.

The dialect is a block of attributes (how a parameter, an identifier, the clock, an index hint are
written) and a few hooks (connecting, beginning, which errors pass), set by each subclass.
"""
import logging
import random
import re
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from ..errors import BadInput, BatchError, DatabaseUnavailable
from ..model import HISTORY_SUFFIX, INTERACTIVE_PATIENCE, SQL_NAME, check_identifier
from .statements import DB_NOW, EXPIRY, RESULTS_SUFFIX

log = logging.getLogger(__name__)

STREAM_ROWS = 2000              # rows fetched at a time when streaming (history, results)
DEFAULT_CALL_TIMEOUT = 60.0     # seconds one database call may block, for commands (`run` derives its own from the lease)
_PARAMETER = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")
Together = Tuple[int, List[Any]]   # what one statement of Engine._execute_together gave: rowcount, rows


class ConnectionRoom(NamedTuple):
    """A server's connection limits and what is in use, as one connection of this user read them."""

    max_connections: int    # @@max_connections
    in_use: int             # Threads_connected, the reader's own connection included
    user: str
    user_limit: int         # the user's MAX_USER_CONNECTIONS, else @@max_user_connections; 0: none
    user_in_use: int        # the user's connections, the reader's own included

    def free(self) -> int:
        """How many more connections the server would give this user, the reader's own counted free."""
        free = self.max_connections - self.in_use + 1
        if self.user_limit > 0:
            free = min(free, self.user_limit - self.user_in_use + 1)
        return max(0, free)

    def describe(self) -> str:
        text = f"max_connections {self.max_connections}, {self.in_use - 1} in use by others"
        if self.user_limit > 0:
            text += f"; max_user_connections {self.user_limit} for user {self.user}, {self.user_in_use - 1} in use"
        return text


class Engine:
    """One job's connection to its database, and the transactions run on it.

    The job's table names are quoted once here; `statement()` fills them and the dialect's
    fragments into the statements of `statements.py`.
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
    by_ended = ""                  # the recent finishes by the ended index, not every done row sorted
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
        # Held by one try of a transaction at a time (and by close): the threads sharing this table
        # never use the connection at once. Reentrant: close() inside a try.
        self._in_use = threading.RLock()
        self._connected_once = False
        self._committed = False   # the transaction's work sent its COMMIT itself (_execute_together)
        # The node the connection reached (host:port of a host list), the server behind it (what
        # identifies it: see the dialect's _connect), and how often that server changed since.
        self.node: Optional[str] = None
        self.server: Optional[Tuple[Any, ...]] = None
        self.server_changes = 0
        self._server_listeners: List[Callable[[], None]] = []
        self._transaction(lambda cur: None, "connecting", write=False)   # a reader must not wait for writers

    # ----------------------------------------------------------------- identifiers, statements, transactions
    @classmethod
    def quote(cls, name: str) -> str:
        """The one place an identifier enters SQL: validated, then quoted."""
        if not SQL_NAME.match(name):
            raise BadInput(f"{name!r} is not a valid SQL name")
        return cls.quote_char + name + cls.quote_char

    def statement(self, text: str, **names: str) -> str:
        """One of the statements (statements.py), ready for the driver: identifiers and dialect fragments filled
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
        if "{by_ended}" in text:
            names["by_ended"] = self.by_ended.format(index=self.quote(self.job + "__ended"))
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
        """Run work(cursor) as one transaction and commit; retry it whole on passing errors.

        Passing errors (deadlock, lock wait, lost connection, SQLITE_BUSY: the dialect's
        `_is_transient`) roll the transaction back and run work again from the start, on a new
        connection if the old one was lost, with growing random waits, for up to `patience`
        seconds (the constructor's by default); then DatabaseUnavailable is raised, at once if
        `interrupted()` says so between tries. A refused reconnect, once connected, passes too
        (an outage to ride out). Any other driver error raises BatchError naming the database and
        `what` (BadInput if the first connection is refused); any other exception is raised as it
        is. Whatever is raised, the transaction was rolled back: nothing of work stays.
        write=False begins a reader's transaction, which never waits for writers (SQLite: BEGIN,
        not BEGIN IMMEDIATE). work may commit by itself (_execute_together with commit).
        """
        patience = self.patience if patience is None else patience
        interrupted = self.interrupted if interrupted is None else interrupted
        began = time.monotonic()
        deadline = began + patience
        delay, warned = 0.05, False
        while True:
            # Another thread's try (each of its calls bounded by call_timeout) may hold the connection:
            # wait for it, at least one call's timeout, at most the patience left beyond that.
            if not self._in_use.acquire(timeout=max(self.call_timeout, deadline - time.monotonic())):
                raise DatabaseUnavailable(f"{self.settings.describe()}: gave up {what} after "
                                          f"{time.monotonic() - began:.1f} s: the connection stayed busy")
            try:
                if self.conn is None:
                    # A connect never outlasts the patience left (a frozen server makes it wait).
                    self.conn = self._connect(within=min(self.call_timeout, deadline - time.monotonic()))
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
                unconnected = self.conn is None
                if self._is_connection_error(e) or self._is_refused(e):
                    self.close()
                error = e
            except BaseException:
                self._rollback()  # e.g. BadInput found half-way: leave nothing changed
                raise
            finally:
                self._in_use.release()
            # Between tries the connection is free for the other threads (a heartbeat).
            # Once connected, a refused reconnect (a password changed, a server restarted without
            # our user) is an outage to ride out: work may be waiting to be recorded. A server that
            # has no connection to spare (`_is_refused`) is waited for, the first time too.
            if not self._is_transient(error) and not (unconnected and self._connected_once):
                if unconnected:
                    raise BadInput(f"cannot use {self.settings.describe()}: {_one_line(error)}") from None
                raise BatchError(f"{self.settings.describe()}: {what}: {_one_line(error)}") from None
            stopping = interrupted()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stopping:
                waited = f"{time.monotonic() - began:.1f} s" + (" and a stop signal" if stopping else "")
                raise DatabaseUnavailable(f"{self.settings.describe()}: gave up {what} after "
                                          f"{waited}: {_one_line(error)}") from None
            if self._is_lock_conflict(error):
                # Deadlocks between claimers are part of a busy job: retried quietly, shown if they last.
                log.debug("lock conflict while %s (%s); retrying", what, _one_line(error))
            elif not warned and patience > 1:
                log.warning("database trouble while %s (%s); retrying for up to %.0f s", what, _one_line(error), patience)
                warned = True
            # The last wait is cut to the deadline, so that the patience is waited out in full.
            time.sleep(min(delay * random.uniform(0.5, 1.0), remaining))
            delay = min(delay * 2, 5.0)

    def _rollback(self) -> None:
        self._committed = False
        try:
            if self.conn is not None:
                self.conn.rollback()
        except Exception:  # the connection may be the thing that broke; it is re-opened next time
            self.close()

    def close(self) -> None:
        """Close the connection (the next operation opens a new one). Waits for a try another thread
        has begun on it (a heartbeat) to end: its calls are bounded by call_timeout."""
        with self._in_use:
            conn, self.conn = self.conn, None
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass

    def on_server_change(self, listener: Callable[[], None]) -> None:
        """Call listener() (from whichever thread connects, quickly, taking no lock of this engine)
        whenever a new connection reaches another server than the last one did: a claim held may be
        gone there (an asynchronous replica promoted before it had the claim)."""
        self._server_listeners.append(listener)

    def _arrived(self, node: str, server: Tuple[Any, ...]) -> None:
        """The dialect's _connect reached `node`, whose server is identified by `server`."""
        before, self.node = self.node, node
        changed = self.server is not None and not _same_server(self.server, server)
        self.server = server
        if before is None:
            log.debug("database node %s", node)
        elif changed:
            log.warning("database server changed: now on node %s (was %s)", node, before)
            self.server_changes += 1
            self._forget_made_tables()
            for listener in list(self._server_listeners):
                listener()

    def _forget_made_tables(self) -> None:
        """Tables this process made on the server before (the template verdicts') may be missing on
        another one (an asynchronous replica promoted before it had them): made again at next use."""

    def connection_room(self) -> Optional[ConnectionRoom]:
        """The server's connection limits, where it has any (MySQL); None on SQLite."""
        return None

    def _db_now(self, cur: Any) -> float:
        return float(self._execute(cur, DB_NOW).fetchone()[0])

    def _columns(self, cur: Any, table: str) -> Optional[List[str]]:
        """The column names of `table`, lower case, or None if there is no such table."""
        names = [r[0].lower() for r in self._execute(cur, self.columns_of, {"name": table}).fetchall()]
        return names or None

    # ----------------------------------------------------------------- dialect hooks (connections, errors)
    def _connect(self, within: float) -> Any:
        """A new connection (the dialect's), waiting at most `within` seconds for the server to answer."""
        raise NotImplementedError

    def _begin(self, cur: Any, write: bool) -> None:
        pass

    def _is_transient(self, e: Exception) -> bool:
        raise NotImplementedError

    def _is_connection_error(self, e: Exception) -> bool:
        return False

    def _is_refused(self, e: Exception) -> bool:
        """The server has no connection to spare (too many connections, or the user's limit reached):
        a passing error, the first connection's too."""
        return False

    def _is_lock_conflict(self, e: Exception) -> bool:
        return False

    # ----------------------------------------------------------------- streaming
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


def _same_server(a: Tuple[Any, ...], b: Tuple[Any, ...]) -> bool:
    """The same server: everything equal but the start time (its last item), which is read as two
    whole-second figures (now, uptime) and may be off by one; a restart takes longer than that."""
    return a[:-1] == b[:-1] and abs(a[-1] - b[-1]) <= 2


def _never() -> bool:
    return False


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())

