"""Benchmark (prints figures; not a test): the operator's commands on a job of a million obsids,
on SQLite and on a private MariaDB server.

The job is made with `new` and then given a run's worth of state straight in SQL: 60 % done (with
one attempt each in the history), 1 % failed, 64 running, the rest pending, pipetimes spread from
332 to 3,662 s. Timed: `status` (with rate and ETA), `status --json`, `status --hosts`, `status --running` and
`history --csv` (to the first row, and to the last), in this process (what the database and the
arithmetic cost) and as commands (with the interpreter's start): the median and the best of several
runs, with the load average (the machine may be shared).

    .venv/bin/python tests/bench_status.py [N] [sqlite | mysql]
"""
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batchUtility import report, storage
from mariadb_server import MariaDB
from support import BatchEnv

HOSTS = "CASE obsid % 4 WHEN 0 THEN 'node01' WHEN 1 THEN 'node02' WHEN 2 THEN 'node03' ELSE 'node04' END"


def fill(env: BatchEnv, n: int, base: int):
    """A run's worth of state, in a few statements."""
    now = time.time()
    done, failed = int(n * 0.6), int(n * 0.01)
    t0 = now - done * 0.05               # a finish every 50 ms, the last just now
    as_text = "CAST(obsid AS TEXT)" if env.backend == "sqlite" else "CAST(obsid AS CHAR)"
    statements = [
        "UPDATE bench SET expected = 332 + obsid % 3331",
        f"UPDATE bench SET state = 'done', pipelined = 1, attempts = 1, host = {HOSTS}, worker = '1/16',"
        f" pid = 1000 + obsid % 16, started = {t0} + (obsid - {base}) * 0.05 - 400,"
        f" ended = {t0} + (obsid - {base}) * 0.05, exit_code = 0 WHERE obsid < {base + done}",
        f"UPDATE bench SET state = 'failed', attempts = 3, host = {HOSTS}, worker = '2/16', pid = 2000,"
        f" started = {now} - 900, ended = {now} - 800, exit_code = 1, reason = 'HIPE exited with status 1: boom'"
        f" WHERE obsid >= {base + done} AND obsid < {base + done + failed}",
        f"UPDATE bench SET state = 'running', attempts = 0, host = {HOSTS}, worker = '3/16', pid = 3000 + obsid % 64,"
        f" token = 'x', started = {now} - 100, heartbeat = {now} - 5"
        f" WHERE obsid >= {base + done + failed} AND obsid < {base + done + failed + 64}",
        f"INSERT INTO bench__attempts (token, obsid, attempt, host, worker, pid, started, ended, exit_code,"
        f" signal_no, outcome, reason) SELECT {as_text}, obsid, 1, host, worker, pid, started, ended, exit_code,"
        f" NULL, state, reason FROM bench WHERE state IN ('done', 'failed')",
    ]
    if env.backend == "sqlite":
        import sqlite3
        with sqlite3.connect(env.root / "batch.sqlite") as db:
            for s in statements:
                db.execute(s)
            db.execute("ANALYZE")
        return
    with env.server.admin(env.db) as c:
        cur = c.cursor()
        for s in statements:
            cur.execute(s)
        cur.execute("ANALYZE TABLE bench, bench__attempts")
        cur.fetchall()
        c.commit()


def plan(env: BatchEnv, statement: str) -> str:
    """How the database reads `statement` (SQLite: EXPLAIN QUERY PLAN; MariaDB: EXPLAIN's key and extra)."""
    if env.backend == "sqlite":
        import sqlite3
        with sqlite3.connect(env.root / "batch.sqlite") as db:
            return "; ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + statement))
    with env.server.admin(env.db) as c:
        cur = c.cursor()
        cur.execute("EXPLAIN " + statement)
        names = [d[0] for d in cur.description]
        return "; ".join(f"key {r['key']}, rows {r['rows']}, {r['Extra']}" for r in (dict(zip(names, row)) for row in cur))


def status_block(table):
    """What `status` reads and writes (cli._status)."""
    figures = table.pace_figures(report.RATE_WINDOW, report.WORKERS_WINDOW)
    return report.status_text("bench", figures["counts"], table.failures(10), None, report.pace_of(figures))


def timed(what, work, repeat=5):
    """Median and best of `repeat` runs (the machine is shared: the median is what a user meets)."""
    times = [_once(work) for _ in range(repeat)]
    print(f"    {what:<44} median {statistics.median(times) * 1000:6.0f} ms, best {min(times) * 1000:6.0f} ms"
          f" (of {repeat}; load average {os.getloadavg()[0]:.1f})", flush=True)


def _once(work):
    t = time.perf_counter()
    work()
    return time.perf_counter() - t


def bench(env: BatchEnv, n: int):
    base = 1342000000
    f = env.obsid_file(range(base, base + n), "million.txt")
    assert env.cli("bench", "new", f, timeout=1800).returncode == 0
    t = time.perf_counter()
    fill(env, n, base)
    print(f"{env.backend}: {n:,} obsids, a run's state filled in {time.perf_counter() - t:.1f} s", flush=True)
    table = env.table("bench")
    table.require()   # adds the results table and indexes to a job made before them (not here)
    print(f"  plan of the per-host totals: {plan(env, table.statement(storage.BY_HOST))}")
    print("  in this process:")
    timed("status (counts, failures, rate, ETA)", lambda: status_block(table))
    timed("status --hosts: per-host totals", table.by_host)
    timed("status --running", lambda: report.running_text(
        table.pace_figures(report.RATE_WINDOW, report.WORKERS_WINDOW, census=False)["running"], time.time(), 6, 30))
    timed("history --csv: first row", lambda: next(iter(table.iter_history())), repeat=1)
    rows = []
    timed("history --csv: all rows", lambda: rows.append(report.write_history_csv(table.iter_history(), io.StringIO())),
          repeat=1)
    print(f"    ({rows[0]:,} attempts written)")
    print("  as commands (each with the interpreter's start, ~0.1-0.3 s):")
    for args in (["status"], ["status", "--json"], ["status", "--hosts"], ["status", "--running"]):
        timed(" ".join(args), lambda: env.cli("bench", *args), repeat=7)
    with open(os.devnull, "w") as null:
        timed("history --csv > /dev/null", lambda: env.popen("bench", "history", "--csv", stdout=null).wait(), repeat=1)
    print(env.cli("bench", "status").stdout)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    backends = sys.argv[2:] or ["sqlite", "mysql"]
    with tempfile.TemporaryDirectory() as tmp:
        if "sqlite" in backends:
            bench(BatchEnv(Path(tmp) / "sqlite", "sqlite"), n)
        if "mysql" not in backends:
            return
        server = MariaDB(Path(tmp) / "mariadb").start()
        try:
            server.create_database("bench")
            bench(BatchEnv(Path(tmp) / "mysql", "mysql", server, "bench"), n)
        finally:
            server.cleanup()


if __name__ == "__main__":
    main()
