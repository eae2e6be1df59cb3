"""Makespan: the 2014 HIFI reprocessing replayed from ../shared/data/blkr_v11_1.sql.gz (the 1,701
obsids that load), each obsid sleeping its pipetime / SCALE, on MariaDB, through N workers at 15 and
64 slots (`run -j N` where it exists, else N `run` processes), and through BatchProcess_mpi.sh.

Makespan = the first claim's start to the last outcome, read from the job table (the database's
clock); the lower bound is max(total / slots, longest). Also simulated, with no cost per obsid: the
original's obsid order against longest first (this tool's claim order) on the real pipetimes.
"""
import heapq
import subprocess

from common import BIN, ROOT, SHARED_DATA, CpuMeter, has_run_j, load_average, md_table, record, start_workers, wait_workers

DUMP = SHARED_DATA / "blkr_v11_1.sql.gz"


def simulate(durations, slots) -> float:
    """Makespan of list scheduling: each free slot takes the next duration in the given order."""
    free = [0.0] * slots
    for d in durations:
        heapq.heapreplace(free, free[0] + d)
    return max(free)


def lower_bound(durations, slots) -> float:
    return max(sum(durations) / slots, max(durations))


def load_master(env):
    """The 2014 dump into v11_1 (the mysql client stops at the cut-off second INSERT); (obsid, pipetime)."""
    env.load_master(DUMP)
    with env.server.admin(env.db) as c:
        cur = c.cursor()
        cur.execute("SELECT obsid, pipetime FROM v11_1 WHERE pipetime IS NOT NULL ORDER BY obsid")
        rows = [(int(o), int(p)) for o, p in cur.fetchall()]
    if not rows:
        raise RuntimeError(f"no obsid with a pipetime loaded from {DUMP}")
    return rows


def template(pipetimes, scale) -> str:
    """A job script sleeping pipetime / scale: in Python, and readable by the C stand-in (SLEEPS)."""
    sleeps = ", ".join(f"{o}: {p / scale:.4f}" for o, p in pipetimes)
    return f"import time\nSLEEPS = {{{sleeps}}}\ntime.sleep(SLEEPS[obsid])\n"


def makespan(env, job):
    """(makespan in the database's clock, attempts recorded, obsids done, last worker's start delay,
    seconds of all attempts together (claim to outcome))."""
    with env.server.admin(env.db) as c:
        cur = c.cursor()
        cur.execute(f"SELECT SUM(state = 'done') FROM `{job}`")
        done = cur.fetchone()[0]
        # Every attempt is in the history (done, failed, stopped, lost): the first claim to the last outcome.
        cur.execute(f"SELECT MAX(ended) - MIN(started), COUNT(*), MIN(started), SUM(ended - started) FROM `{job}__attempts`")
        span, attempts, first, busy = cur.fetchone()
        # How late the last worker started: its first claim after the job's first claim (slots idle meanwhile).
        cur.execute(f"SELECT MAX(f) - {float(first)!r}, AVG(f) - {float(first)!r} FROM (SELECT MIN(started) AS f "
                    f"FROM `{job}__attempts` GROUP BY host, pid) w")
        spread, mean_start = map(float, cur.fetchone())
    return float(span), int(attempts), int(done), (spread, mean_start), float(busy)


def run_through_workers(env, job, slots):
    with CpuMeter(env.server) as m:
        wait_workers(start_workers(env, job, slots), timeout=7200)
    return m


def run_through_mpi(env, job, slots):
    hostfile = env.root / "hostfile"
    hostfile.write_text(f"localhost slots={slots} max_slots={slots}\n")
    environ = env.env(HIPE_BATCH_PYTHON=str(ROOT / ".venv" / "bin" / "python"))
    with CpuMeter(env.server) as m:
        r = subprocess.run(["bash", str(BIN.parent / "BatchProcess_mpi.sh"), job, "--hostfile", str(hostfile)],
                           env=environ, cwd=env.root, capture_output=True, text=True, timeout=7200)
    if r.returncode != 0:
        raise RuntimeError(f"BatchProcess_mpi.sh exited {r.returncode}: {r.stderr.strip()[-800:]}")
    return m


def main(suite, args):
    started_load = load_average()
    scale = args.scale or (1000.0 if suite.quick else 250.0)
    slot_counts = args.slots or [15, 64]
    env = suite.env("mysql")
    pipetimes = load_master(env)
    durations = [p / scale for _, p in pipetimes]
    how = "`run -j N`" if has_run_j() else "N `run` processes"
    ways = [(how, run_through_workers)] + ([] if args.no_mpi else [("BatchProcess_mpi.sh", run_through_mpi)])
    rows = []
    for slots in slot_counts:
        bound = lower_bound(durations, slots)
        for label, way in ways:
            job = f"m{slots}{'mpi' if way is run_through_mpi else 'run'}"
            r = env.cli(job, "new")
            assert r.returncode == 0, r.stderr
            env.template(job, template(pipetimes, scale))
            m = way(env, job, slots)
            span, attempts, done, spread, busy = makespan(env, job)
            # Where the slots' time went: HIPE's own sleeps, the launch overhead on top of them (claim
            # to outcome, per attempt), and the rest (start-up, between an outcome and the next claim, the tail).
            overhead = (busy - sum(durations)) / max(1, attempts)
            if busy < 0.99 * sum(durations):
                raise RuntimeError(f"{label}: the attempts took {busy:.0f} s in all, less than the "
                                   f"{sum(durations):.0f} s of sleeps: the stand-in did not sleep")
            rows.append([slots, label, f"{bound:.2f} s", f"{span:.2f} s", f"{span / bound:.4f}",
                         f"{spread[1]:.2f} / {spread[0]:.2f} s", f"{overhead * 1000:.0f} ms", f"{busy / (slots * span):.1%}",
                         f"{m.wall:.2f} s", f"{done}/{len(durations)}", attempts,
                         f"{(m.cpu + m.server_cpu) / len(durations) * 1000:.0f} ms"])
            print(f"  {slots} slots, {label}: makespan {span:.2f} s, bound {bound:.2f} s, ratio {span / bound:.4f},"
                  f" wall {m.wall:.1f} s (load {load_average()})", flush=True)
    sim = []
    by_obsid = [p / scale for _, p in sorted(pipetimes)]
    longest_first = sorted(by_obsid, reverse=True)
    for slots in sorted(set(slot_counts) | {15, 64}):
        bound = lower_bound(durations, slots)
        sim.append([slots, f"{bound:.2f} s", f"{simulate(by_obsid, slots) / bound:.4f}",
                    f"{simulate(longest_first, slots) / bound:.4f}"])
    body = (f"{len(durations):,} obsids of the 2014 dump on MariaDB, each sleeping pipetime / {scale:g} "
            f"(total {sum(durations):,.1f} s, longest {max(durations):.2f} s); C stand-in; claim order longest first "
            f"(expected = pipetime). Makespan: first claim to last outcome, database clock. "
            f"CPU: every process (workers, mpirun, stand-ins, MariaDB) per obsid. Overhead per attempt: claim to "
            f"outcome minus the sleep; slots busy: all attempts' claim-to-outcome seconds / (slots x makespan).\n\n"
            + md_table(["slots", "(through", "lower bound", "makespan", "ratio", "workers' first claims, mean / last",
                        "overhead per attempt", "slots busy", "launcher wall", "done", "attempts", "CPU/obsid"], rows)
            + "\n\nSimulated on the same pipetimes, no cost per obsid (makespan / lower bound):\n\n"
            + md_table(["slots", "lower bound", "obsid order (the original's)", "longest first (this tool)"], sim))
    record(f"Makespan replay of the 2014 reprocessing (pipetime / {scale:g})", body, started_load)
