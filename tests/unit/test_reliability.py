"""Transient database errors retried, on SQLite in this process: SQLITE_BUSY past the busy timeout.
(tests/integration/test_reliability.py: a MariaDB deadlock; tests/system/test_reliability.py: the
faults with real workers.)"""
import os
import sqlite3
import threading

from batchUtility.model import Outcome
from support import OBSID, wait_for


def test_sqlite_busy_is_retried(sqlite_batch, caplog):
    """SQLITE_BUSY ("database is locked") past the busy timeout is retried, not an error."""
    env = sqlite_batch
    env.table("j", create=True).create([OBSID])
    table = env.table("j")
    table.conn.execute("PRAGMA busy_timeout = 50")   # meet the lock at once instead of after 30 s
    held, errors = threading.Event(), []

    def hold_the_lock():
        holder = sqlite3.connect(str(env.root / "batch.sqlite"), isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            held.set()
            wait_for(lambda: any("database is locked" in r.getMessage() for r in caplog.records), 30,
                     "the claim to meet the lock")
        except Exception as e:
            errors.append(e)
        finally:
            holder.execute("ROLLBACK")
            holder.close()

    thread = threading.Thread(target=hold_the_lock, daemon=True)
    thread.start()
    try:
        assert held.wait(30)
        claim = table.claim("host", "1/1", os.getpid())
    finally:
        thread.join(60)
    assert not errors
    assert claim is not None and claim.obsid == OBSID
    assert table.finish(claim, Outcome(True, "", 0), 3) == "done"
