"""MySQL or MariaDB: one server shared by every worker on every host."""
import math
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import node_name
from ..errors import BadInput
from .durations import NEWER_WINS_MYSQL
from .engine import ConnectionRoom, Together, _rowcount_and_rows
from .statements import CLAIM, COMMIT, FORGET_PICKED, PICK_PENDING, PICKED
from .table import JobTable

NODE_WAIT = 3.0    # seconds one node of a host list may take to answer a connect, before the next is tried
NOT_READY = 1047   # ER_UNKNOWN_COM_ERROR, as Galera gives it: "WSREP has not yet prepared node for application use"
_MAX_USER_CONNECTIONS = re.compile(r"MAX_USER_CONNECTIONS\s+(-?[0-9]+)", re.IGNORECASE)


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
    picked_into = " INTO @picked_obsid, @picked_attempts, @picked_heap"
    picked_obsid = "@picked_obsid"
    lock_rows = " FOR UPDATE SKIP LOCKED"   # a row a stuck transaction holds is taken back next time
    in_start_order = " FORCE INDEX ({index})"
    by_state = " FORCE INDEX ({index})"
    columns_of = """SELECT LOWER(column_name) FROM information_schema.columns
  WHERE table_schema = DATABASE() AND table_name = :name ORDER BY ordinal_position"""
    table_names = "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
    newer_wins = NEWER_WINS_MYSQL   # ON DUPLICATE KEY UPDATE, in the order it assigns
    # Every column of every job history (JobTable._history_tables), in one read of information_schema.
    history_columns = """SELECT table_name, LOWER(column_name) FROM information_schema.columns
  WHERE table_schema = DATABASE() AND table_name LIKE :pattern"""
    # A decimal number, as text or not; '' or 'abc' would be 0 to MariaDB (INSERT IGNORE), not unknown.
    number_or_null = ("CASE WHEN TRIM({value}) REGEXP '^[+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$' "
                      "THEN LEAST(ROUND(TRIM({value})), {most}) END")
    # Lock wait, deadlock, server shutting down / gone / unreachable / lost, no connection to spare.
    # Galera: a certification conflict comes back as a deadlock (1213, retried whole: it committed
    # nothing); a node without quorum answers 1047 to every table (a lost node: the next one is tried).
    # A read-only server (1290: a replica a fail-over reached before its promotion) is waited for.
    TRANSIENT = frozenset({1205, 1213, 1053, 1040, 1203, 1226, 1927, 2002, 2003, 2006, 2013, 2055, 4031, 1047, 1290})
    CONNECTION = frozenset({1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031, 1047})
    # Too many connections (max_connections), the user's limit reached (the global max_user_connections,
    # or the account's MAX_USER_CONNECTIONS): waited for with back-off, never a reason to stop.
    REFUSED = frozenset({1040, 1203, 1226})

    def __init__(self, *args: Any, **kwargs: Any):
        try:
            import MySQLdb  # imported here so that SQLite users need no MySQL client library
        except ImportError as e:   # a system python3 without the checkout's .venv (cron, a bare shell)
            raise BadInput(f"[sql] backend = mysql needs MySQLdb (the mysqlclient package), which {sys.executable} "
                           f"lacks ({e}): install it with `bash .ci/install` in the checkout (it makes .venv, which "
                           "BatchProcess.py then uses), or `python3 -m pip install mysqlclient`") from None
        self._driver = MySQLdb
        self.Error = MySQLdb.Error
        super().__init__(*args, **kwargs)

    def _connect(self, within: float) -> Any:
        """A connection to the first node of the host list that answers and is ready (a Galera node in
        the primary component), in the list's order: so every worker normally writes to one node."""
        from MySQLdb.constants import CLIENT
        s = self.settings
        # Every wait for the server is bounded: without read and write timeouts a frozen server (or a
        # network silently dropping packets) blocks a query for as long as it lasts. The connect's own
        # wait is also cut to `within` (whole seconds, at least 1: the client library's unit).
        seconds = math.ceil(self.call_timeout)
        options = {"user": s.user, "database": s.db, "charset": "utf8mb4",
                   "read_timeout": seconds, "write_timeout": seconds,
                   "autocommit": False,
                   # rowcount = rows matched, so repeated writes still count; several statements in one
                   # round trip (_execute_together: every value is a parameter, every identifier checked)
                   "client_flag": CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS,
                   "init_command": "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"}
        if s.socket:
            options["unix_socket"] = s.socket
        if s.password:
            options["password"] = s.password
        # MySQL's own option file, as the mysql client reads it: it may hold the password (so that
        # batch.cfg need not), the port or the socket. What batch.cfg says takes precedence.
        option_file = s.option_file or os.path.expanduser("~/.my.cnf")
        if os.path.isfile(option_file):
            options["read_default_file"] = option_file
        addresses = s.addresses()
        # Of a list, each node's wait is short, so that a frozen node costs seconds, not the lease.
        wait = within if len(addresses) == 1 else min(within, NODE_WAIT)
        failed: Optional[Exception] = None
        for host, port in addresses:
            place = dict(options, host=host, connect_timeout=max(1, min(seconds, math.ceil(wait))))
            if port:
                place["port"] = port
            try:
                conn = self._driver.connect(**place)
            except self._driver.Error as e:
                if len(addresses) == 1 or not self._is_transient(e):
                    raise
                failed = e
                continue
            try:
                cur = conn.cursor()
                self._limit_session(cur, seconds)
                server, ready = self._identify(cur)
                if not ready:   # a Galera node outside the primary component refuses every table
                    raise self._driver.OperationalError(NOT_READY, "WSREP has not prepared the node for application "
                                                                   "use (wsrep_ready OFF: no quorum, or joining)")
            except self._driver.Error as e:
                conn.close()
                if len(addresses) == 1 or not self._is_transient(e):
                    raise
                failed = e
                continue
            except BaseException:
                conn.close()
                raise
            self._arrived(node_name(host, port or s.default_port()), server)
            return conn
        assert failed is not None
        raise failed

    def _identify(self, cur: Any) -> Tuple[Tuple[Any, ...], bool]:
        """The server this connection reached (what stays the same while it runs: MySQL's server_uuid,
        MariaDB's server_uid, host name, port, server id, Galera's node uuid, and its start time from
        Uptime), and whether it is ready for work (not a Galera node without quorum)."""
        cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('hostname', 'port', 'server_id', 'server_uuid', "
                    "'server_uid', 'wsrep_on')")
        variables = dict(cur.fetchall())
        cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('Uptime', 'wsrep_ready', 'wsrep_gcomm_uuid')")
        status = dict(cur.fetchall())
        cur.execute("SELECT UNIX_TIMESTAMP()")
        started = int(cur.fetchone()[0]) - int(status.get("Uptime") or 0)
        server = (variables.get("server_uuid") or variables.get("server_uid"), variables.get("hostname"),
                  variables.get("port"), variables.get("server_id"), status.get("wsrep_gcomm_uuid"), started)
        # A MariaDB built with Galera shows wsrep_ready OFF with wsrep off too: only a cluster node is judged by it.
        return server, variables.get("wsrep_on") != "ON" or status.get("wsrep_ready") == "ON"

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

    def _is_refused(self, e: Exception) -> bool:
        return self._code(e) in self.REFUSED

    def connection_room(self) -> ConnectionRoom:
        """How many connections the server has, and how many more it would give this user now."""
        def read(cur):
            cur.execute("SELECT @@GLOBAL.max_connections, @@max_user_connections, @@GLOBAL.max_user_connections, "
                        "SUBSTRING_INDEX(USER(), '@', 1)")
            max_connections, session_limit, global_limit, user = cur.fetchone()
            cur.execute("SHOW GRANTS")
            granted = [int(m.group(1)) for (line,) in cur.fetchall()
                       for m in [_MAX_USER_CONNECTIONS.search(str(line))] if m]
            # The account's own limit where it has one (SHOW GRANTS; MySQL also shows it as the session's
            # max_user_connections), else the global one; 0 is none.
            user_limit = next((n for n in granted if n > 0), 0) or int(session_limit or 0) or int(global_limit or 0)
            cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
            row = cur.fetchone()
            in_use = int(row[1]) if row else 0
            cur.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE user = %s", (user,))
            user_in_use = int(cur.fetchone()[0])
            return ConnectionRoom(int(max_connections), in_use, user, user_limit, user_in_use)
        return self._transaction(read, "reading the server's connection limits", write=False)

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

    def _pick_and_claim(self, cur: Any, values: Dict[str, Any],
                        commit: bool = False) -> Optional[Tuple[int, int, int, Optional[int]]]:
        # In one round trip: PICK_PENDING selects INTO the variables CLAIM and PICKED read.
        _, _, (claimed, _), (_, [(obsid, attempts, heap)]) = self._execute_together(
            cur, [(FORGET_PICKED, None), (PICK_PENDING, None), (CLAIM, values), (PICKED, None)], commit)
        return None if obsid is None else (int(obsid), int(attempts), claimed, _heap(heap))

    def _together_then_claim(self, cur: Any, statements: Sequence[Tuple[str, Optional[Dict[str, Any]]]],
                             values: Dict[str, Any]) -> Tuple[List[Together], Optional[Tuple[int, int, int, Optional[int]]]]:
        # An outcome and the next claim in one round trip, its COMMIT last: one commit per obsid.
        *done, _, _, (claimed, _), (_, [(obsid, attempts, heap)]) = self._execute_together(
            cur, [*statements, (FORGET_PICKED, None), (PICK_PENDING, None), (CLAIM, values), (PICKED, None)], True)
        return done, (None if obsid is None else (int(obsid), int(attempts), claimed, _heap(heap)))

    def _columns_of_histories(self, cur: Any, names: List[str]) -> Dict[str, set]:
        found: Dict[str, set] = {n: set() for n in names}
        for table, column in self._execute(cur, self.history_columns, {"pattern": "%\\_\\_attempts"}).fetchall():
            if table in found:
                found[table].add(column)
        return found

    def _stream_cursor(self) -> Any:
        import MySQLdb.cursors
        return self.conn.cursor(MySQLdb.cursors.SSCursor)   # rows stay on the server until fetched

    def _is_lock_conflict(self, e: Exception) -> bool:
        return self._code(e) == 1213

    def _is_duplicate_index(self, e: Exception) -> bool:
        return self._code(e) == 1061   # ER_DUP_KEYNAME


def _heap(value: Any) -> Optional[int]:
    """A heap read from a session variable (MariaDB may hand it over as text or bytes), as MiB."""
    if isinstance(value, bytes):
        value = value.decode()
    return None if value is None else int(value)
