"""`status` on a job of a million obsids on SQLite (issue 21: at most 0.25 s), as commands, side by
side with each --compare checkout (default: none), interleaved, each command a fresh interpreter
with its bytecode cached as users run it (PYTHONDONTWRITEBYTECODE removed from the environment:
with it set, every command compiles the package again, ~0.1 s more).

The job is made with `new` and given a run's worth of state in SQL (tests/bench_status.py's fill:
60 % done, 1 % failed, 64 running, the rest pending), then timed twice: as `new` leaves the
database (no planner statistics), and after an ANALYZE (as a user might run). Wall and CPU
(user + system) of the command, median and best; whether each checkout printed the same (the rate
and ETA lines aside, which move with the clock).
"""
import json
import re
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from common import BIN, commit_of, load_average, md_table, median, record

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_status import fill

COMMANDS = (["status"], ["status", "--json"], ["status", "--running"])


def _once(bin_path, env, root, args):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, str(bin_path), "bench", *args], env=env, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"{bin_path} {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, r.stdout


def _steady(text):
    """The output without what moves with the clock: the rate, the ETA, ages and elapsed times."""
    try:
        data = json.loads(text)
    except ValueError:
        return [re.sub(r"\d+ (d|h|min|s)\b", "#", line) for line in text.splitlines()
                if "obsids/min" not in line and "ETA" not in line]
    return {k: v for k, v in data.items() if k not in ("rate", "eta_seconds", "eta_basis", "now", "workers")}


def main(suite, args):
    started_load = load_average()
    n = args.obsids or (200_000 if suite.quick else 1_000_000)
    reps = 3 if suite.quick else 7
    env = suite.env("sqlite")
    base = 1342000000
    f = env.obsid_file(range(base, base + n), "many.txt")
    assert env.cli("bench", "new", f, timeout=1800).returncode == 0
    fill(env, n, base)   # it ends with an ANALYZE: dropped below for the first round
    checkouts = [("here", BIN)] + [(commit_of(Path(c) / "bin" / "BatchProcess.py"), Path(c) / "bin" / "BatchProcess.py")
                                   for c in args.compare]
    environ = {k: v for k, v in env.env().items() if k != "PYTHONDONTWRITEBYTECODE"}
    rows = []
    for statistics_state in ("no statistics (as `new` leaves it)", "after ANALYZE"):
        with sqlite3.connect(env.root / "batch.sqlite") as db:
            if statistics_state.startswith("no"):
                db.execute("DROP TABLE IF EXISTS sqlite_stat1")
            else:
                db.execute("ANALYZE")
        for command in COMMANDS:
            for _, bin_path in checkouts:   # bytecode written once, untimed
                _once(bin_path, environ, env.root, command)
            times = {label: [] for label, _ in checkouts}
            outputs = {}
            for _ in range(reps):
                for label, bin_path in checkouts:
                    wall, cpu, out = _once(bin_path, environ, env.root, command)
                    times[label].append((wall, cpu))
                    outputs[label] = _steady(out)
            for label, _ in checkouts:
                walls, cpus = [w for w, _ in times[label]], [c for _, c in times[label]]
                rows.append([statistics_state, " ".join(command), label,
                             f"{median(walls) * 1000:.0f} / {min(walls) * 1000:.0f} ms", f"{median(cpus) * 1000:.0f} ms",
                             "yes" if outputs[label] == outputs["here"] else "NO"])
            print(f"  {statistics_state}, {' '.join(command)}: " + ", ".join(
                f"{label} {median([w for w, _ in times[label]]) * 1000:.0f} ms" for label, _ in checkouts)
                + f" (load {load_average()})", flush=True)
    body = (f"`status` as commands on a SQLite job of {n:,} obsids (60 % done, 1 % failed, 64 running), bytecode "
            f"cached as users run it (PYTHONDONTWRITEBYTECODE unset); {reps} runs each, the checkouts interleaved; "
            f"shared 2-core machine. Wall: median / best; CPU: median, user + system. Same output: as `here` "
            f"printed, the rate and ETA aside.\n\n"
            + md_table(["(database", "(command", "(checkout", "wall", "CPU", "same output"], rows))
    record("`status` on a million SQLite rows (issue 21)", body, started_load)
