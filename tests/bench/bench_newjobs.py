"""`new` beside the database's other jobs (issue 21): `new` of N obsids from a file (200,000; 50,000
with --quick) into a database holding 0, 30 and 300 earlier jobs, against the bulk load of the same
file into a table of the same layout (the job table's CREATE and indexes): MariaDB's LOAD DATA LOCAL
INFILE, SQLite's `.import` (sqlite3 shell). The earlier jobs have the tables `new` makes, 2,000
obsids each (the same obsids as the new job's first 2,000: every earlier job has learned durations to
give), each with one successful attempt per obsid in its history, and in the site's learned
durations (storage/durations.py), as their finishes would have written them. `new` reads those with
one join by primary key (JobTable._expect_learned), whatever the number of earlier jobs; each job it
makes is listed once as learned. Last, once, the first `new` after an upgrade: the learned
durations dropped, as a database of an older version has none, so that `new` reads the 300
histories in. Both sides interleaved in each repetition on the shared machine; `new` as a command
(the interpreter's start included).
"""
import subprocess
import time
import uuid

from common import FIRST_OBSID, load_average, md_table, median, record

EARLIER = (0, 30, 300)
EARLIER_SIZE = 2000


def _sql(table, text, params=None, many=None):
    def work(cur):
        statement = table.statement(text)
        if many is not None:
            cur.executemany(statement, many)
        elif params is None:
            cur.execute(statement)
        else:
            cur.execute(statement, params)
    table._transaction(work, "benchmark setup")


def add_earlier(env, first, count):
    """Earlier jobs e{first}..: 2,000 obsids each, every one done once, with a history row."""
    for k in range(first, first + count):
        table = env.table(f"e{k:03d}", create=True)
        # Made as `new` makes them, but for their own learned durations (not what is measured here;
        # reading every earlier history for each of 300 jobs would make the setup quadratic).
        table._transaction(table._create_tables, "benchmark setup")
        _sql(table, "INSERT INTO {job_table} (obsid) VALUES (:obsid)",
             many=[{"obsid": FIRST_OBSID + i} for i in range(EARLIER_SIZE)])
        rows = [{"token": uuid.uuid4().hex, "obsid": FIRST_OBSID + i, "started": 1.7e9 + i, "ended": 1.7e9 + i + 30 + i % 97}
                for i in range(EARLIER_SIZE)]
        _sql(table, "INSERT INTO {history_table} (token, obsid, attempt, started, ended, outcome) "
                    "VALUES (:token, :obsid, 1, :started, :ended, 'done')", many=rows)
        _sql(table, "UPDATE {job_table} SET state = 'done', attempts = 1")
        # What their finishes would have written into the site's learned durations (durations.py):
        # the same upsert, of the whole history at once.
        table._learn_histories([f"e{k:03d}__attempts"])
        table.close()


def forget_learned(env):
    """The database as an older version left it: the histories, no learned durations."""
    table = env.table("e000")
    for name in ("site__durations", "site__durations_from"):
        _sql(table, f"DROP TABLE {name}")
    table.close()


def learned_count(env, name):
    """How many obsids of the job `new` gave a learned duration."""
    table = env.table(name)
    try:
        return table._transaction(lambda cur: table._execute(
            cur, "SELECT COUNT(*) FROM {job_table} WHERE expected IS NOT NULL").fetchone()[0], "counting", write=False)
    finally:
        table.close()


def bulk_load(env, path, name):
    """The anchor: the file loaded into a table of the job's layout; seconds."""
    table = env.table(name, create=True)
    table._transaction(table._create_tables, "benchmark setup")
    if env.backend == "sqlite":
        t = time.perf_counter()
        # The obsid column alone, as `new` gets it: a view of it takes the import.
        subprocess.run(["sqlite3", str(env.root / "batch.sqlite")], check=True, text=True,
                       input=f"CREATE TEMP VIEW v AS SELECT obsid FROM \"{name}\";\n"
                             f"CREATE TEMP TRIGGER t INSTEAD OF INSERT ON v BEGIN INSERT INTO \"{name}\" (obsid) "
                             f"VALUES (NEW.obsid); END;\n.import {path} v\n")
        seconds = time.perf_counter() - t
    else:
        import MySQLdb
        s = env.config().sql
        conn = MySQLdb.connect(host=s.host, port=s.port, user=s.user, password=s.password, database=s.db,
                               local_infile=1)
        try:
            t = time.perf_counter()
            conn.cursor().execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE `{name}` (obsid)")
            conn.commit()
            seconds = time.perf_counter() - t
        finally:
            conn.close()
    table.close()
    return seconds


def main(suite, args):
    n = (args.obsids or (50_000 if suite.quick else 200_000))
    started_load = load_average()
    rows = []
    for backend in [b for b in ("sqlite", "mysql") if not args.only or b in args.only]:   # --only mysql
        env = suite.env(backend)
        path = env.obsid_file(range(FIRST_OBSID, FIRST_OBSID + n), "new.txt")
        made, jobs = 0, 0
        for earlier in EARLIER:
            add_earlier(env, made, earlier - made)
            made = earlier
            news, loads = [], []
            for rep in range(suite.reps):
                jobs += 1
                loads.append(bulk_load(env, path, f"load{jobs}"))
                t = time.perf_counter()
                r = env.cli(f"new{jobs}", "new", path, timeout=3600)
                news.append(time.perf_counter() - t)
                assert r.returncode == 0, r.stderr
                learned = learned_count(env, f"new{jobs}")
                assert learned == (EARLIER_SIZE if earlier else 0), f"`new` learned {learned} durations"
                print(f"  {backend:6} {earlier:3} earlier jobs  rep {rep + 1}/{suite.reps}  new {news[-1]:6.2f} s  "
                      f"bulk load {loads[-1]:6.2f} s  ({news[-1] / loads[-1]:.2f}x)  (load {load_average()})", flush=True)
                # Not an earlier job for the next `new`: only the e* jobs have histories with successes.
            rows.append([backend, earlier, f"{median(news):.2f} s", f"{median(loads):.2f} s",
                         " ".join(f"{a / b:.2f}" for a, b in zip(news, loads))])
        # The first `new` after an upgrade: a database of an older version has the histories and no
        # learned durations; that `new` reads each history in, once (one repetition: the next is as above).
        forget_learned(env)
        jobs += 1
        load = bulk_load(env, path, f"load{jobs}")
        t = time.perf_counter()
        r = env.cli(f"new{jobs}", "new", path, timeout=3600)
        first = time.perf_counter() - t
        assert r.returncode == 0 and learned_count(env, f"new{jobs}") == EARLIER_SIZE, r.stderr
        print(f"  {backend:6} {made:3} earlier jobs of an older version  new {first:6.2f} s  bulk load {load:6.2f} s  "
              f"({first / load:.2f}x)  (load {load_average()})", flush=True)
        rows.append([backend, f"{made}, not learned yet (first `new` after an upgrade)", f"{first:.2f} s",
                     f"{load:.2f} s", f"{first / load:.2f}"])
    body = (f"`new` of {n:,} obsids from a file, into a database holding 0, 30 and 300 earlier jobs of {EARLIER_SIZE:,} "
            f"obsids (all done, one successful attempt each, the new job's first {EARLIER_SIZE:,} obsids; their durations "
            "in the site's learned durations, site__durations, as their finishes write them), against the "
            "bulk load of the same file into a table of the same layout (MariaDB: LOAD DATA LOCAL INFILE; SQLite: the "
            f"sqlite3 shell's .import); median of {suite.reps}, interleaved, shared 2-core machine. The jobs made "
            "by the benchmark itself (`new` and the loads) have no successful attempts.\n\n"
            + md_table(["(backend", "earlier jobs", "new", "bulk load", "new / bulk load, each repetition"], rows))
    record("`new` beside earlier jobs (issue 21)", body, started_load)
