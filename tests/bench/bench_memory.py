"""Memory: one worker's resident set (VmRSS of the `run` process) sampled every 50 ms over a
2,000-obsid run with the C stand-in, on SQLite and on MariaDB. No growth means the RSS at the end is
that after the first tenth of the run, within a few hundred KiB (allocator noise).
"""
import time
from pathlib import Path

from common import load_average, md_table, obsids, record, wait_workers


def rss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def sample(env, job):
    proc = env.popen("-q", job, "run", stdout=open("/dev/null", "w"))
    samples = []
    t0 = time.monotonic()
    while proc.poll() is None:
        kib = rss_kib(proc.pid)
        if kib:
            samples.append((time.monotonic() - t0, kib))
        time.sleep(0.05)
    wait_workers([proc])
    return samples


def at(samples, share):
    """The RSS at a share of the run's duration."""
    end = samples[-1][0]
    return next(k for t, k in samples if t >= share * end)


def main(suite, args):
    n_obsids = args.obsids or 2000
    started_load = load_average()
    rows = []
    for backend in ("sqlite", "mysql"):
        env = suite.env(backend)
        r = env.cli("mem", "new", env.obsid_file(obsids(n_obsids)))
        assert r.returncode == 0, r.stderr
        env.template("mem", "pass\n")
        s = sample(env, "mem")
        assert env.table("mem").counts()["done"] == n_obsids
        marks = [at(s, share) for share in (0.1, 0.25, 0.5, 0.75, 1.0)]
        rows.append([backend, len(s), *(f"{k / 1024:.1f}" for k in marks), f"{max(k for _, k in s) / 1024:.1f}",
                     f"{(marks[-1] - marks[0]):+d} KiB"])
        print(f"  {backend}: RSS MiB at 10/25/50/75/100 %: {[round(k / 1024, 1) for k in marks]}", flush=True)
    body = (f"One `run` worker, {n_obsids:,} obsids, C stand-in; VmRSS of the worker in MiB at a share of the run's "
            "duration; growth = end - 10 %.\n\n"
            + md_table(["(backend", "samples", "10 %", "25 %", "50 %", "75 %", "end", "max", "growth"], rows))
    record("Memory of a worker", body, started_load)
