"""How fast the slots of one `run -j 64` start (issue 21: the last slot's first claim at most 0.15 s
after the first; GNU parallel's first starts: 0.06 s): 192 obsids on SQLite, each sleeping 0.5 s
in the C stand-in, `run -j 64`, side by side with each --compare checkout, interleaved, median of 3
(1 with --quick). Spread: each worker's first claim (MIN(started) per worker in the history, the
database's clock), last minus first; spacing: spread / 63; and the first and the last of those first
claims after the command's start (the command's own clock).
"""
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from common import BIN, commit_of, load_average, md_table, median, record

SLOTS, N, SLEEP = 64, 192, 0.5


def _once(suite, bin_path, label, rep):
    env = suite.env("sqlite")
    env.template("sp", "SLEEPS = {" + ", ".join(f"{o}: {SLEEP}" for o in range(1, N + 1)) + "}\n")
    environ = {k: v for k, v in env.env().items() if k != "PYTHONDONTWRITEBYTECODE"}
    f = env.obsid_file(range(1, N + 1))
    r = subprocess.run([sys.executable, str(bin_path), "sp", "new", str(f)], env=environ, cwd=env.root,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    t = time.time()
    r = subprocess.run([sys.executable, str(bin_path), "-q", "sp", "run", "-j", str(SLOTS)], env=environ, cwd=env.root,
                       capture_output=True, text=True)
    wall = time.time() - t
    if r.returncode != 0:
        raise RuntimeError(f"{label}: run -j {SLOTS} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    with sqlite3.connect(env.root / "batch.sqlite") as db:
        firsts = sorted(x for (x,) in db.execute("SELECT MIN(started) FROM sp__attempts GROUP BY host, pid"))
        done = db.execute("SELECT COUNT(*) FROM sp WHERE state = 'done'").fetchone()[0]
    assert len(firsts) == SLOTS and done == N, (len(firsts), done)
    spread = firsts[-1] - firsts[0]
    print(f"  {label} #{rep + 1}: spread {spread:.3f} s, first claim {firsts[0] - t:.2f} s after the command's"
          f" start, command {wall:.2f} s (load {load_average()})", flush=True)
    return spread, firsts[0] - t, wall, firsts[-1] - t


def main(suite, args):
    started_load = load_average()
    reps = 1 if suite.quick else 3
    checkouts = [("here", BIN)] + [(commit_of(Path(c) / "bin" / "BatchProcess.py"), Path(c) / "bin" / "BatchProcess.py")
                                   for c in args.compare]
    runs = {label: [] for label, _ in checkouts}
    for rep in range(reps):
        for label, bin_path in checkouts:
            runs[label].append(_once(suite, bin_path, label, rep))
    rows = [[label, f"{median([r[0] for r in rs]):.3f} s", f"{median([r[0] for r in rs]) / (SLOTS - 1) * 1000:.1f} ms",
             " ".join(f"{r[0]:.3f}" for r in rs), f"{median([r[1] for r in rs]):.2f} s",
             f"{median([r[3] for r in rs]):.2f} s", f"{median([r[2] for r in rs]):.2f} s"]
            for label, rs in runs.items()]
    body = (f"`run -j {SLOTS}` on SQLite, {N} obsids of {SLEEP} s in the C stand-in, bytecode cached; the checkouts "
            f"interleaved, median of {reps}; shared 2-core machine. Spread: the last worker's first claim after the "
            f"first worker's (database clock).\n\n"
            + md_table(["(checkout", "spread", "mean spacing", "each run", "first claim after start",
                        "last worker's first claim after start", "command wall"], rows))
    record(f"Slots' first claims at {SLOTS} slots (issue 21)", body, started_load)
