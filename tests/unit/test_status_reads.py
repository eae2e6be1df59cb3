"""`status` on SQLite, made faster (issue 21): the census reads only the pending rows grouped by
expected duration and counts the other states, the first failures are read through the claim
index whatever the planner's statistics, and the command imports only what it uses. What it
prints must not change: each figure is checked against the one read the old way, on the same table."""
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import batchUtility
from batchUtility import config, storage
from batchUtility.model import STATES, as_seconds
from batchUtility.storage.reads import Reads

N = 3000


@pytest.fixture(params=[False, True], ids=["no-statistics", "analyzed"])
def job(request, tmp_path):
    """A job of N obsids in every state, with numeric, missing and textual expected durations, some
    finished in the last minutes; without the planner's statistics (as `new` leaves a database) and
    with them (as a user may gather them: ANALYZE, `PRAGMA optimize`)."""
    settings = config.SqlSettings("sqlite", "", 0, "", "", path=tmp_path / "batch.sqlite")
    table = storage.SQLiteJobTable("j", settings, create=True)
    table.create(list(range(1000, 1000 + N)))
    table.require()
    with sqlite3.connect(settings.path) as db:
        db.execute("UPDATE j SET expected = CASE WHEN obsid % 7 = 0 THEN NULL WHEN obsid % 11 = 0 THEN 'abc'"
                   " WHEN obsid % 13 = 0 THEN '' ELSE 300 + obsid % 97 END")
        db.execute("UPDATE j SET state = 'done', started = obsid, ended = obsid + 10, host = 'h' WHERE obsid % 4 = 0")
        db.execute("UPDATE j SET state = 'failed', attempts = 3, reason = 'boom ' || obsid, started = obsid,"
                   " ended = obsid + 5, host = 'h' WHERE obsid % 4 = 1 AND obsid > 2000")
        db.execute("UPDATE j SET state = 'running', token = 'x', host = 'h', started = obsid WHERE obsid % 50 = 2")
        db.execute("UPDATE j SET started = unixepoch() - 900 + obsid % 300, ended = unixepoch() - 600 + obsid / 100.0"
                   " WHERE state IN ('done', 'failed') AND obsid % 3 = 0")
        if request.param:
            db.execute("ANALYZE")
    yield table
    table.close()


def test_sqlite_census_gives_the_counts_and_pending_groups_of_one_full_read(job):
    figures = job.pace_figures(600, 300)
    counts, pending = job._transaction(lambda cur: Reads._census(job, cur), "the old census", write=False)
    assert figures["counts"] == counts == job.counts()
    assert list(figures["counts"]) == list(STATES) and sum(counts.values()) == N
    assert all(counts[state] > 0 for state in STATES)
    assert figures["pending"] == pending   # the same groups in the same order, unknown durations None
    assert None in [e for e, _ in pending] and len(pending) > 90


def test_recent_finishes_are_read_by_the_ended_index_and_are_the_same(job):
    figures = job.pace_figures(600, 300, samples=50)
    since = figures["now"] - 600
    with sqlite3.connect(job.settings.path) as db:
        for hinted in (storage.RECENT_DONE, storage.FIRST_DONE, storage.FINISHES_SINCE):
            plan = " ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + job.statement(hinted), (0,)))
            assert "j__ended" in plan and "TEMP B-TREE" not in plan, plan
        finishes = db.execute("SELECT host, worker, pid, state, expected, started, ended FROM j NOT INDEXED"
                              " WHERE ended >= ? AND state IN ('done', 'failed', 'pending')", (since,)).fetchall()
        recent = db.execute("SELECT expected, ended - started FROM j NOT INDEXED WHERE ended IS NOT NULL"
                            " AND state = 'done' ORDER BY ended DESC LIMIT 50").fetchall()
        first = db.execute("SELECT expected, ended - started FROM j NOT INDEXED WHERE ended IS NOT NULL"
                           " AND state = 'done' ORDER BY ended LIMIT 50").fetchall()
    keys = ("host", "worker", "pid", "state", "expected", "started", "ended")
    read = sorted((tuple(f[k] for k in keys) for f in figures["finishes"]), key=repr)
    assert read == sorted(((h, w, p, st, as_seconds(e), s, en) for h, w, p, st, e, s, en in finishes), key=repr)
    assert len(read) > 50
    assert figures["recent"] == [(as_seconds(e), d) for e, d in recent]   # no two end at once: one order
    assert figures["first"] == [(as_seconds(e), d) for e, d in first]


def test_first_failures_come_in_obsid_order_through_the_claim_index_after_analyze(job):
    assert "INDEXED BY" in job.statement(storage.FIRST_FAILURES)
    with sqlite3.connect(job.settings.path) as db:
        expected = db.execute("SELECT obsid, attempts, reason FROM j NOT INDEXED WHERE state = 'failed'"
                              " ORDER BY obsid LIMIT 10").fetchall()
    assert job.failures(10) == expected and len(expected) == 10


def test_the_command_line_imports_neither_the_workers_nor_the_timeline():
    """`run` and `report` import them when they run (tests/system/test_run.py, test_commands.py)."""
    code = ("import sys; import batchUtility.startup, batchUtility.cli; "
            "print(sorted(m for m in ('batchUtility.worker', 'batchUtility.local', 'batchUtility.timeline',"
            " 'batchUtility.hipe', 'batchUtility.guardian') if m in sys.modules))")
    lib = str(Path(batchUtility.__file__).resolve().parents[1])   # this tree's, not an installed one
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": lib}).stdout
    assert out.strip() == "[]"
