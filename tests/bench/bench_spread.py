"""How fast the slots of one `run -j 64` start (issue 21: the last slot's first claim at most 0.15 s
after the first; GNU parallel's first starts: 0.06 s): 192 obsids on SQLite, each sleeping 0.5 s
in the C stand-in, `run -j 64`, side by side with each --compare checkout, interleaved, median of 3
(1 with --quick); each repetition runs one job twice, the template's first run then (`reset --yes`)
a run of a template known to run. Claims' spread: each worker's first claim (MIN(started) per worker
in the history, the database's clock), last minus first, and the first and the last of those first
claims after the command's start (the command's own clock). HIPE starts: the C stand-in notes each
launch's start ($HIPE_STANDIN_STARTS); with 0.5 s a launch, the first 64 launches are the 64 slots'
first ones: the 64th minus the first.
"""
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from common import BIN, commit_of, load_average, md_table, median, record

SLOTS, N, SLEEP = 64, 192, 0.5


def _once(suite, bin_path, label, rep):
    """Two runs of one job: the template's first (its workers wait for one launch to compile it, issue
    22's probe), then, after `reset --yes`, a run of a template known to run."""
    env = suite.env("sqlite")
    env.template("sp", "SLEEPS = {" + ", ".join(f"{o}: {SLEEP}" for o in range(1, N + 1)) + "}\n")
    starts_file = env.root / "hipe-starts.txt"
    environ = {k: v for k, v in env.env(HIPE_STANDIN_STARTS=starts_file).items() if k != "PYTHONDONTWRITEBYTECODE"}
    f = env.obsid_file(range(1, N + 1))
    _run([sys.executable, str(bin_path), "sp", "new", str(f)], environ, env.root, label)
    fresh = _measure(bin_path, env, environ, starts_file, label)
    _run([sys.executable, str(bin_path), "-q", "sp", "reset", "--yes"], environ, env.root, label)
    starts_file.unlink()
    known = _measure(bin_path, env, environ, starts_file, label)
    print(f"  {label} #{rep + 1}: claims' spread {fresh[0]:.3f} s, HIPE starts' {fresh[4]:.3f} s; template known "
          f"to run: {known[0]:.3f} s, {known[4]:.3f} s (load {load_average()})", flush=True)
    return fresh, known


def _run(argv, environ, root, label):
    r = subprocess.run(argv, env=environ, cwd=root, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{label}: {' '.join(argv[2:])} exited {r.returncode}: {r.stderr.strip()[-500:]}")


def _measure(bin_path, env, environ, starts_file, label):
    t = time.time()
    _run([sys.executable, str(bin_path), "-q", "sp", "run", "-j", str(SLOTS)], environ, env.root, label)
    wall = time.time() - t
    with sqlite3.connect(env.root / "batch.sqlite") as db:
        firsts = sorted(x for (x,) in db.execute("SELECT MIN(started) FROM sp__attempts WHERE started >= ? "
                                                 "GROUP BY host, pid", (t - 1,)))
        done = db.execute("SELECT COUNT(*) FROM sp WHERE state = 'done'").fetchone()[0]
    assert len(firsts) == SLOTS and done == N, (len(firsts), done)
    launches = sorted(float(x) for x in starts_file.read_text().split())
    assert len(launches) >= N, len(launches)
    return (firsts[-1] - firsts[0], firsts[0] - t, wall, firsts[-1] - t, launches[SLOTS - 1] - launches[0],
            launches[SLOTS - 1] - t)


def _parallel_once(suite, folder: Path):
    """GNU parallel -j 64 over the same stand-in and sleeps: (the 64th start after the first, the 64th
    start after parallel's, wall)."""
    folder.mkdir(parents=True, exist_ok=True)
    template = folder / "template.py"
    template.write_text("SLEEPS = {" + ", ".join(f"{o}: {SLEEP}" for o in range(1, N + 1)) + "}\n")
    for o in range(1, N + 1):
        (folder / f"{o}.py").write_text(f'obsid={o}\nexec(compile(open("{template}", "rb").read(), "{template}", '
                                        f'"exec"))\nopen("{folder}/{o}.done", "w").close()\n')
    scripts = folder / "scripts.txt"
    scripts.write_text("".join(f"{folder}/{o}.py\n" for o in range(1, N + 1)))
    starts_file = folder / "starts.txt"
    t = time.time()
    subprocess.run(["parallel", "--will-cite", "-j", str(SLOTS), "-a", str(scripts), str(suite.standin), "{}"],
                   env={**os.environ, "HIPE_STANDIN_STARTS": str(starts_file)}, stdout=subprocess.DEVNULL, check=True)
    wall = time.time() - t
    assert len(list(folder.glob("*.done"))) == N
    launches = sorted(float(x) for x in starts_file.read_text().split())
    return launches[SLOTS - 1] - launches[0], launches[SLOTS - 1] - t, wall


def main(suite, args):
    started_load = load_average()
    reps = 1 if suite.quick else 3
    parallel = []
    checkouts = [("here", BIN)] + [(commit_of(Path(c) / "bin" / "BatchProcess.py"), Path(c) / "bin" / "BatchProcess.py")
                                   for c in args.compare]
    runs = {label: [] for label, _ in checkouts}
    for rep in range(reps):
        for label, bin_path in checkouts:
            runs[label].append(_once(suite, bin_path, label, rep))
        parallel.append(_parallel_once(suite, suite.tmp / f"spread-parallel-{rep}"))
        print(f"  GNU parallel #{rep + 1}: HIPE starts' spread {parallel[-1][0]:.3f} s", flush=True)
    rows = []
    for which, name in ((0, "first run of the template"), (1, "template known to run")):
        for label, both in runs.items():
            rs = [b[which] for b in both]
            rows.append([label, name, f"{median([r[0] for r in rs]):.3f} s", " ".join(f"{r[0]:.3f}" for r in rs),
                         f"{median([r[1] for r in rs]):.2f} s", f"{median([r[3] for r in rs]):.2f} s",
                         f"{median([r[4] for r in rs]):.3f} s", " ".join(f"{r[4]:.3f}" for r in rs),
                         f"{median([r[5] for r in rs]):.2f} s", f"{median([r[2] for r in rs]):.2f} s"])
    body = (f"`run -j {SLOTS}` on SQLite, {N} obsids of {SLEEP} s in the C stand-in, bytecode cached; the checkouts "
            f"interleaved, median of {reps}; shared 2-core machine. Each repetition runs one job twice: the "
            f"template's first run (its workers wait for one launch to compile it: issue 22's probe), then after "
            f"`reset --yes` a run of a template known to run. Claims' spread: the last worker's first claim after "
            f"the first worker's (the history, database clock); HIPE starts' spread: the {SLOTS}th launch of the "
            f"C stand-in after the first (its own clock; with {SLEEP} s a launch, the first {SLOTS} are the "
            f"slots' first).\n\n"
            + md_table(["(checkout", "(run", "claims' spread", "each run", "first claim after start",
                        "last worker's first claim after start", "HIPE starts' spread", "each run",
                        f"{SLOTS}th HIPE start after start", "command wall"], rows)
            + f"\n\nThe anchor, GNU parallel -j {SLOTS} over the same stand-in, scripts and sleeps (no database, no "
            f"claims, no probe): HIPE starts' spread {median([p[0] for p in parallel]):.3f} s (each run "
            + " ".join(f"{p[0]:.3f}" for p in parallel)
            + f"), {SLOTS}th start {median([p[1] for p in parallel]):.2f} s after its start, wall "
            f"{median([p[2] for p in parallel]):.2f} s.")
    record(f"Slots' first claims and HIPE starts at {SLOTS} slots (issue 21)", body, started_load)
