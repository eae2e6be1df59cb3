"""Scale: `new` of 1,000,000 obsids from a file and from a master table; on jobs of 10,000, 100,000
and 1,000,000 rows, half done, the time of a claim (and of the finish that follows it) and of the
counts `status` shows. The claim's query plan (MariaDB EXPLAIN, SQLite EXPLAIN QUERY PLAN) is
captured from the statements the claim really runs and printed with the results.
"""
import random
import statistics
import time

from common import FIRST_OBSID, load_average, md_table, obsids, record

from batchUtility.storage import Outcome

SIZES = (10_000, 100_000, 1_000_000)
MASTER = "v11_1"


class _Recording:
    """A connection whose cursors note every statement they run (to EXPLAIN the claim's own SQL)."""

    def __init__(self, conn):
        self.inner, self.statements = conn, []

    def cursor(self):
        cur, statements = self.inner.cursor(), self.statements

        class Cursor:
            def __getattr__(self, name):
                return getattr(cur, name)

            def execute(self, sql, params=None):
                statements.append((sql, params))
                return cur.execute(sql) if params is None else cur.execute(sql, params)
        return Cursor()

    def __getattr__(self, name):
        return getattr(self.inner, name)


def claim_statements(table):
    """The statements of one claim (which is then finished), as run."""
    table.claim("bench", "1/1", 1)  # connects
    table.conn = rec = _Recording(table.conn)
    try:
        claim = table.claim("bench", "1/1", 1)
    finally:
        table.conn = rec.inner
    table.finish(claim, Outcome(True), 3)
    return [(s, p) for s, p in rec.statements if s.lstrip().upper().startswith(("SELECT", "UPDATE"))
            and "now" not in s.lower()[:12]]


def explain(env, table, statements) -> str:
    lines = []
    conn = table.conn
    for sql, params in statements:
        if "pending" not in sql and "running" not in sql:
            continue
        cur = conn.cursor()
        prefix = "EXPLAIN QUERY PLAN " if env.backend == "sqlite" else "EXPLAIN "
        if params is None:
            cur.execute(prefix + sql)
        else:
            cur.execute(prefix + sql, params)
        if env.backend == "sqlite":
            plan = [" ".join(str(c) for c in row[3:]) for row in cur.fetchall()]
        else:
            names = [d[0] for d in cur.description]
            plan = ["; ".join(f"{n}={v}" for n, v in zip(names, row) if v is not None) for row in cur.fetchall()]
        conn.rollback()
        lines.append(f"    {' '.join(sql.split())}\n" + "".join(f"      -> {p}\n" for p in plan))
    return "".join(lines)


def _sql(env, table, statement, params):
    def work(cur):
        cur.execute(table.statement(statement), params)
        return cur.rowcount
    return table._transaction(work, "benchmark setup")


def make_master(env, n):
    """A master table of n obsids with random pipetimes (untimed setup)."""
    rng = random.Random(7)
    rows = [(FIRST_OBSID + i, rng.randint(300, 3600)) for i in range(n)]
    if env.backend == "sqlite":
        import sqlite3
        db = sqlite3.connect(env.root / "batch.sqlite")
        db.execute(f"CREATE TABLE {MASTER} (obsid INTEGER PRIMARY KEY, pipetime INT)")
        db.executemany(f"INSERT INTO {MASTER} VALUES (?, ?)", rows)
        db.commit()
        db.close()
        return
    with env.server.admin(env.db) as c:
        cur = c.cursor()
        cur.execute(f"CREATE TABLE {MASTER} (obsid INT NOT NULL PRIMARY KEY, pipetime INT) ENGINE=InnoDB")
        for i in range(0, n, 20_000):
            cur.executemany(f"INSERT INTO {MASTER} VALUES (%s, %s)", rows[i:i + 20_000])


def timed_cli(env, *args):
    t = time.perf_counter()
    r = env.cli(*args, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{args}: {r.stderr.strip()}")
    return time.perf_counter() - t


def claims(table, k):
    """Median and 90th percentile ms of k claims, and of their finishes."""
    claim_ms, finish_ms = [], []
    for _ in range(k):
        t = time.perf_counter()
        c = table.claim("bench", "1/1", 1)
        t1 = time.perf_counter()
        table.finish(c, Outcome(True), 3)
        claim_ms.append((t1 - t) * 1000)
        finish_ms.append((time.perf_counter() - t1) * 1000)
    q = statistics.quantiles
    return statistics.median(claim_ms), q(claim_ms, n=10)[-1], statistics.median(finish_ms)


def half_done(env, table, n):
    _sql(env, table, "UPDATE {job_table} SET state = 'done', pipelined = 1, attempts = 1 WHERE obsid < :half",
         {"half": FIRST_OBSID + n // 2})


def bench_backend(suite, backend, sizes, rows, plans):
    env = suite.env(backend)
    biggest = max(sizes)
    f = env.obsid_file(obsids(biggest), "big.txt")
    new_file = timed_cli(env, f"s{biggest}", "new", f)
    make_master(env, biggest)
    new_master = timed_cli(env, "smaster", "new")
    rows.append([backend, f"`new` of {biggest:,} obsids from a file", f"{new_file:.1f} s"])
    rows.append([backend, f"`new` of {biggest:,} obsids from the master table", f"{new_master:.1f} s"])
    k = 200 if suite.quick else 1000
    results = []
    for n in sizes:
        job = f"s{n}"
        if n != biggest:
            timed_cli(env, job, "new", env.obsid_file(obsids(n), f"{n}.txt"))
        table = env.table(job)
        half_done(env, table, n)
        med, p90, fin = claims(table, k)
        t = time.perf_counter()
        table.counts()
        counts_ms = (time.perf_counter() - t) * 1000
        status_s = timed_cli(env, job, "status")
        results.append([backend, f"{n:,}", f"{med:.2f}", f"{p90:.2f}", f"{fin:.2f}", f"{counts_ms:.0f}",
                        f"{status_s:.2f} s"])
        print(f"  {backend} {n:,} rows: claim median {med:.2f} ms, p90 {p90:.2f} ms, finish {fin:.2f} ms,"
              f" counts {counts_ms:.0f} ms", flush=True)
        if n == biggest:
            plans.append(f"{backend}, job of {n:,} rows half done, the claim's statements and their plans:\n\n"
                         + explain(env, table, claim_statements(table)))
        table.close()
    master = env.table("smaster")
    half_done(env, master, biggest)
    med, p90, fin = claims(master, k)
    plans.append(f"{backend}, job of {biggest:,} rows from the master table (expected = pipetime), half done:\n\n"
                 + explain(env, master, claim_statements(master)))
    results.append([backend, f"{biggest:,} (from the master: expected = pipetime)", f"{med:.2f}",
                    f"{p90:.2f}", f"{fin:.2f}", "", ""])
    master.close()
    return results


def main(suite, args):
    started_load = load_average()
    sizes = tuple(args.sizes or SIZES)
    rows, claim_rows, plans = [], [], []
    for backend in ("sqlite", "mysql"):
        claim_rows += bench_backend(suite, backend, sizes, rows, plans)
    k = 200 if suite.quick else 1000
    body = (md_table(["(backend", "(what", "time"], rows)
            + f"\n\nClaims on a job half done (the lower obsids done), {k} claims each followed by its finish, "
              "one process; ms per claim; `status`: the whole command, interpreter start included:\n\n"
            + md_table(["(backend", "rows", "claim median ms", "claim p90 ms", "finish median ms",
                        "counts() ms", "`status`"], claim_rows)
            + "\n\n```\n" + "\n".join(plans) + "```")
    record("Scale: `new` and claims on 1,000,000 obsids", body, started_load)
