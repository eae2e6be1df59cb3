"""Transient database errors retried, on the session's MariaDB in this process: a real deadlock (1213).
(tests/unit/test_reliability.py: SQLITE_BUSY; tests/system/test_reliability.py: the faults with real
workers.)"""
import threading

import MySQLdb

from support import OBSID, wait_for


def test_deadlock_is_retried(mysql_batch, caplog):
    """Error 1213 (deadlock): InnoDB rolls back the smaller transaction, ours; the whole
    transaction is retried and succeeds."""
    caplog.set_level("DEBUG", logger="batchUtility.storage")
    env = mysql_batch
    obsids = list(range(OBSID, OBSID + 50))
    env.table("j", create=True).create(obsids)
    table = env.table("j")
    a, b = obsids[0], obsids[1]
    other = MySQLdb.connect(unix_socket=env.server.socket, user="root", database=env.db, autocommit=False)
    ours_at_b = threading.Event()
    errors, calls = [], []

    def other_side():
        try:
            cur = other.cursor()
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")  # as the workers
            cur.execute("UPDATE j SET reason = 'other' WHERE obsid > %s", (a,))  # 49 rows, b among them
            ready.set()
            ours_at_b.wait(30)
            cur.execute("UPDATE j SET reason = 'other' WHERE obsid = %s", (a,))   # waits for ours: a cycle
            other.commit()
        except Exception as e:   # reported by the main thread
            errors.append(e)
            other.rollback()

    def waiting_for_a():
        # Its UPDATE of row a under way (it can only end after ours): innodb_trx's trx_state does not
        # always say LOCK WAIT for it on MariaDB 10.11 (seen: RUNNING for 30 s, the UPDATE waiting).
        with env.server.admin() as c:
            cur = c.cursor()
            cur.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE command = 'Query' AND info = %s",
                        (f"UPDATE j SET reason = 'other' WHERE obsid = {a}",))
            return cur.fetchone()[0] > 0

    def work(cur):
        calls.append(1)
        cur.execute("UPDATE j SET reason = 'ours' WHERE obsid = %s", (a,))
        if len(calls) == 1:
            ours_at_b.set()
            wait_for(waiting_for_a, 30, "the other transaction to wait for row a")
        cur.execute("UPDATE j SET reason = 'ours' WHERE obsid = %s", (b,))   # deadlock on the first try

    ready = threading.Event()
    thread = threading.Thread(target=other_side, daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        table._transaction(work, "testing a deadlock")
    finally:
        ours_at_b.set()
        thread.join(60)
        other.close()
    assert not errors and not thread.is_alive()
    assert len(calls) == 2
    # Deadlocks are part of a busy job: logged at DEBUG while they are retried, not as warnings.
    deadlocks = [r for r in caplog.records if "1213" in r.getMessage() and "Deadlock" in r.getMessage()]
    assert deadlocks and {r.levelname for r in deadlocks} == {"DEBUG"}
    reasons = {r["obsid"]: r["reason"] for r in table.rows()}
    assert reasons[a] == "ours" and reasons[b] == "ours" and reasons[obsids[2]] == "other"
