"""The MPI launcher's own start and stop (issue 21: under 2 s beyond `run -j`'s at 64 ranks, CPU
within 1.2x): 640 obsids of the C stand-in (no sleep) on SQLite through `run -j 64` and through
bin/BatchProcess_mpi.sh with a hostfile of this machine's 64 slots, each checkout (this one and
each --compare) interleaved, median of 3 (1 with --quick). Whole-command wall, and the CPU of every
process the command started (mpirun, its daemon, the ranks, their guardians, the stand-ins); also
paired, each repetition's two launchers against each other, median of the pairs.
"""
import os
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from common import BIN, ROOT, commit_of, load_average, md_table, median, record

N, SLOTS = 640, 64


def _once(suite, bin_path, way):
    env = suite.env("sqlite")
    env.template("mp", "x = 1\n")
    environ = {k: v for k, v in env.env().items() if k != "PYTHONDONTWRITEBYTECODE"}
    environ.update(HIPE_BATCH_PYTHON=str(ROOT / ".venv" / "bin" / "python"))
    if os.geteuid() == 0:
        environ.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    f = env.obsid_file(range(1, N + 1))
    r = subprocess.run([sys.executable, str(bin_path), "mp", "new", str(f)], env=environ, cwd=env.root,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    hostfile = env.root / "hostfile"
    hostfile.write_text(f"localhost slots={SLOTS} max_slots={SLOTS}\n")
    command = ([sys.executable, str(bin_path), "-q", "mp", "run", "-j", str(SLOTS)] if way == "run -j" else
               ["bash", str(bin_path.parent / "BatchProcess_mpi.sh"), "mp", "-q", "--hostfile", str(hostfile)])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(command, env=environ, cwd=env.root, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with sqlite3.connect(env.root / "batch.sqlite") as db:
        done = db.execute("SELECT COUNT(*) FROM mp WHERE state = 'done'").fetchone()[0]
    if r.returncode != 0 or done != N:
        raise RuntimeError(f"{way}: exit {r.returncode}, {done}/{N} done: {r.stderr.strip()[-500:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main(suite, args):
    started_load = load_average()
    checkouts = [("here", BIN)] + [(commit_of(Path(c) / "bin" / "BatchProcess.py"), Path(c) / "bin" / "BatchProcess.py")
                                   for c in args.compare]
    runs = {}
    for _ in range(suite.reps):
        for label, bin_path in checkouts:
            for way in ("run -j", "BatchProcess_mpi.sh"):
                wall, cpu = _once(suite, bin_path, way)
                runs.setdefault((label, way), []).append((wall, cpu))
                print(f"  {label}, {way}: wall {wall:.2f} s, CPU {cpu:.2f} s (load {load_average()})", flush=True)
    rows = []
    for label, _ in checkouts:
        j = runs[(label, "run -j")]
        m = runs[(label, "BatchProcess_mpi.sh")]
        jw, jc = median([w for w, _ in j]), median([c for _, c in j])
        mw, mc = median([w for w, _ in m]), median([c for _, c in m])
        # Paired: each repetition's mpi run against the run -j just before it (the load drifts less
        # within a pair than over the whole benchmark on a shared machine).
        paired_wall = median([mpi[0] - local[0] for local, mpi in zip(j, m)])
        paired_cpu = median([mpi[1] / local[1] for local, mpi in zip(j, m)])
        rows.append([label, f"{jw:.2f} s / {jc / N * 1000:.1f} ms", f"{mw:.2f} s / {mc / N * 1000:.1f} ms",
                     f"{mw - jw:+.2f} s", f"{mc / jc:.2f}", f"{paired_wall:+.2f} s", f"{paired_cpu:.2f}"])
    body = (f"{N} obsids of the C stand-in (no sleep) on SQLite, {SLOTS} workers: `run -j {SLOTS}` against "
            f"BatchProcess_mpi.sh with a hostfile of {SLOTS} slots on this machine; whole-command wall / CPU per "
            f"obsid (every process started); median of {suite.reps}, the checkouts and launchers interleaved; "
            f"shared 2-core machine.\n\n"
            + md_table(["(checkout", "run -j", "BatchProcess_mpi.sh", "mpi wall beyond run -j", "mpi CPU / run -j CPU",
                        "paired: wall beyond", "paired: CPU ratio"], rows))
    record(f"The MPI launcher's own start and stop at {SLOTS} ranks (issue 21)", body, started_load)
