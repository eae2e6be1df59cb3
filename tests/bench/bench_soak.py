"""The soak of issue 18 at full scale: `run -j 64` over 2,000 obsids for a MariaDB user allowed 40
connections, 8 workers SIGKILLed at random moments, then one more `run` for what they left. C stand-in,
each launch sleeping 0.2 s. Figures from the job table and its history: every obsid done once, none
lost, no attempt fenced (a HIPE stopped because its worker could not renew its lease: no connection),
the most connections the user held (sampled from the server's processlist every 0.2 s), wall times.
"""
import random
import threading
import time

from common import load_average, md_table, obsids, record

from support import kill_a_slot_worker

WORKERS, CAP, KILLS, SLEEP = 64, 40, 8, 0.2


class Watch(threading.Thread):
    """On one admin connection, every 0.2 s: the user's connections (the most seen kept) and how many
    obsids are done (the job's own connections are the capped user's: not one spent on watching)."""

    def __init__(self, server, user, db, job):
        super().__init__(daemon=True)
        self.server, self.user, self.table = server, user, f"`{db}`.`{job}`"
        self.stop, self.peak, self.done = threading.Event(), 0, 0

    def run(self):
        with self.server.admin() as c:
            cur = c.cursor()
            while not self.stop.is_set():
                cur.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE user = %s", (self.user,))
                self.peak = max(self.peak, int(cur.fetchone()[0]))
                cur.execute(f"SELECT COUNT(*) FROM {self.table} WHERE state = 'done'")
                self.done = int(cur.fetchone()[0])
                c.commit()
                time.sleep(0.2)


def main(suite, args):
    n_obsids = args.obsids or (500 if suite.quick else 2000)
    started_load = load_average()
    rng = random.Random(2026)
    env = suite.env("mysql", run={"lease": "10", "db_patience": "600"})
    user = f"soak{env.db}"[:32]
    with suite.server.admin() as c:
        cur = c.cursor()
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{user}' WITH MAX_USER_CONNECTIONS {CAP}")
        cur.execute(f"GRANT ALL ON `{env.db}`.* TO '{user}'@'%'")
    env.write_cfg(sql={"user": user, "pswd": f"pw-{user}"}, run={"lease": "10", "db_patience": "600"})
    wanted = obsids(n_obsids)
    r = env.cli("soak", "new", env.obsid_file(wanted))
    assert r.returncode == 0, r.stderr
    sleeps = ", ".join(f"{o}: {SLEEP}" for o in wanted)
    env.template("soak", f"SLEEPS = {{{sleeps}}}\n")
    watch = Watch(suite.server, user, env.db, "soak")
    watch.start()
    began = time.monotonic()
    err_path = env.root / "run.err"
    with open(err_path, "w") as err:
        run = env.popen("-q", "soak", "run", "-j", str(WORKERS), stdout=open("/dev/null", "w"), stderr=err)
    slots, killed = env.root / "jobs" / "soak" / ".slots", set()
    for threshold in sorted(rng.sample(range(n_obsids // 10, n_obsids * 8 // 10), KILLS)):
        while watch.done < threshold and run.poll() is None:
            time.sleep(0.2)
        if not kill_a_slot_worker(slots, killed, rng):
            break
    status = run.wait(3600)
    first_wall = time.monotonic() - began
    again = time.monotonic()
    r = env.cli("soak", "run", timeout=3600)
    second_wall = time.monotonic() - again
    watch.stop.set()
    watch.join(5)
    table = env.table("soak")
    rows, history = table.rows(), table.history()
    table.close()
    done_twice = sum(1 for n in _count(h["obsid"] for h in history if h["outcome"] == "done").values() if n > 1)
    outcomes = _count(h["outcome"] for h in history)
    figures = [
        ["obsids", f"{n_obsids:,}"],
        ["workers (`run -j`), user's connection cap", f"{WORKERS}, {CAP}"],
        ["workers SIGKILLed", len(killed)],
        ["`run -j` exit status, the new run's", f"{status}, {r.returncode}"],
        ["**not done at the end**", sum(1 for row in rows if row["state"] != "done")],
        ["**recorded done twice**", done_twice],
        ["**attempts fenced** (HIPE stopped for want of a renewal)", outcomes.get("fenced", 0)],
        ["attempts lost (the killed workers' claims, taken back)", outcomes.get("lost", 0)],
        ["attempts in the history", len(history)],
        ["most connections the user held at once", watch.peak],
        ["`run -j` wall, then the new run's", f"{first_wall:.1f} s + {second_wall:.1f} s"],
    ]
    print("\n".join(f"  {k}: {v}" for k, v in figures), flush=True)
    body = (f"`run -j {WORKERS}` over {n_obsids:,} obsids (C stand-in, {SLEEP} s a launch) for a MariaDB user "
            f"allowed {CAP} connections (`MAX_USER_CONNECTIONS`), lease 10 s, {KILLS} workers SIGKILLed at random "
            "numbers of obsids done (seed 2026), then one `run` for what they left. Command: "
            "`.venv/bin/python tests/bench/run.py soak`.\n\n" + md_table(["(figure", "value"], figures))
    record("Soak: 64 workers under a cap of 40 connections, with kills (issue 18)", body, started_load)
    assert r.returncode == 0, r.stderr[-2000:] + err_path.read_text()[-2000:]


def _count(items):
    counts = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts
