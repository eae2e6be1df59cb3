"""Claims per second at 1, 8, 32 and 64 claimers on one MariaDB server: this tool's claim (one
connection per worker, SELECT ... FOR UPDATE SKIP LOCKED on the claim index, UPDATE, commit) against
the original's (a new connection per claim, LOCK TABLES ... WRITE, SELECT, UPDATE, UNLOCK TABLES),
each claimer a process of its own claiming for a fixed time. SQLite's figure is given beside them.
"""
import multiprocessing
import time

from common import load_average, md_table, obsids, record

CLAIMERS = (1, 8, 32, 64)
ROWS = 50_000


def _ours(env, job, deadline, start, out):
    table = env.table(job)
    start.wait()
    n = 0
    while time.time() < deadline.value:
        if table.claim("bench", "1/1", 1) is None:
            break
        n += 1
    out.put(n)


def _original_claim(settings, job):
    import MySQLdb
    conn = MySQLdb.connect(host=settings.host, port=settings.port, user=settings.user, password=settings.password,
                           database=settings.db)
    try:
        cur = conn.cursor()
        cur.execute(f"LOCK TABLES `{job}` WRITE")
        cur.execute(f"SELECT obsid FROM `{job}` WHERE pipelined = 0 LIMIT 1")
        row = cur.fetchone()
        if row is not None:
            cur.execute(f"UPDATE `{job}` SET pipelined = 1 WHERE obsid = %s", (row[0],))
            conn.commit()
        cur.execute("UNLOCK TABLES")
        return row
    finally:
        conn.close()


def _original(env, job, deadline, start, out):
    settings = env.config().sql
    start.wait()
    n = 0
    while time.time() < deadline.value:
        if _original_claim(settings, job) is None:
            break
        n += 1
    out.put(n)


def _measure(target, env, job, claimers, seconds):
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Barrier(claimers + 1), ctx.Queue()
    deadline = ctx.Value("d", 0.0)
    procs = [ctx.Process(target=target, args=(env, job, deadline, start, out)) for _ in range(claimers)]
    for p in procs:
        p.start()
    deadline.value = time.time() + 3600
    start.wait()   # every claimer connected (ours) and ready
    t = time.time()
    deadline.value = t + seconds
    total = sum(out.get(timeout=600) for _ in procs)
    elapsed = time.time() - t
    for p in procs:
        p.join()
    return total / elapsed


def _original_table(env, job):
    """The original's job table: obsid and pipelined, no other index (filled directly, untimed)."""
    with env.server.admin(env.db) as c:
        cur = c.cursor()
        cur.execute(f"CREATE TABLE `{job}` (obsid INT NOT NULL PRIMARY KEY, pipelined INT DEFAULT 0) ENGINE=InnoDB")
        ids = obsids(ROWS)
        for i in range(0, ROWS, 20_000):
            cur.executemany(f"INSERT INTO `{job}` (obsid) VALUES (%s)", [(o,) for o in ids[i:i + 20_000]])


def main(suite, args):
    started_load = load_average()
    seconds = 2.0 if suite.quick else 5.0
    mysql, sqlite = suite.env("mysql"), suite.env("sqlite")
    f = mysql.obsid_file(obsids(ROWS), "ids.txt")
    rows = []
    for n in CLAIMERS:
        cells = [n]
        for env, kind in ((mysql, "ours"), (mysql, "original"), (sqlite, "ours")):
            job = f"c{kind}{n}"
            if kind == "original":
                _original_table(env, job)
            else:
                r = env.cli(job, "new", f)
                assert r.returncode == 0, r.stderr
            rate = _measure(_ours if kind == "ours" else _original, env, job, n, seconds)
            cells.append(f"{rate:,.0f}")
            print(f"  {n:2} claimers, {kind} on {env.backend}: {rate:,.0f} claims/s (load {load_average()})", flush=True)
        cells.append(f"{float(cells[1].replace(',', '')) / max(1.0, float(cells[2].replace(',', ''))):.1f}x")
        rows.append(cells)
    body = (f"Claims per second, {seconds:g} s per cell, on jobs of {ROWS:,} pending obsids; claimers are processes.\n\n"
            + md_table(["claimers", "this tool (MariaDB)", "original (MariaDB, LOCK TABLES)", "this tool (SQLite)",
                        "this tool / original"], rows))
    record("Claims per second", body, started_load)
