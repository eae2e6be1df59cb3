"""Flat cost: one worker's time per obsid for each block of 1,000 of 20,000 obsids (5,000 with --quick),
C stand-in, on SQLite and on MariaDB. A worker whose cost grows with the obsids it has run (files
piling up in its folder, memory, a scan per launch) shows a rising column; the last block against the
first says by how much. Times come from the history's end times (wall from one block's last end to the
next's), so measuring adds nothing to the run.
"""
from common import load_average, md_table, obsids, record, wait_workers

BLOCK = 1000


def block_ms(ends):
    """Milliseconds per obsid of each block of BLOCK consecutive ends (seconds, sorted)."""
    marks = ends[BLOCK - 1::BLOCK]
    return [1000 * (b - a) / BLOCK for a, b in zip([ends[0], *marks], marks)]


def main(suite, args):
    n_obsids = args.obsids or (5000 if suite.quick else 20000)
    started_load = load_average()
    columns = {}
    for backend in ("sqlite", "mysql"):
        env = suite.env(backend)
        r = env.cli("flat", "new", env.obsid_file(obsids(n_obsids)))
        assert r.returncode == 0, r.stderr
        env.template("flat", "pass\n")
        proc = env.popen("-q", "flat", "run", stdout=open("/dev/null", "w"))
        wait_workers([proc])
        assert proc.returncode == 0 and env.table("flat").counts()["done"] == n_obsids
        ends = sorted(h["ended"] for h in env.table("flat").history())
        columns[backend] = block_ms(ends)
        ms = columns[backend]
        print(f"  {backend}: ms per obsid, first block {ms[0]:.2f}, last {ms[-1]:.2f}, "
              f"max {max(ms):.2f} ({ms[-1] / ms[0]:.2f}x)", flush=True)
    rows = [[f"{(i + 1) * BLOCK:,}", f"{s:.2f}", f"{m:.2f}"]
            for i, (s, m) in enumerate(zip(columns["sqlite"], columns["mysql"]))]
    rows.append(["last / first", *(f"{c[-1] / c[0]:.2f}x" for c in (columns["sqlite"], columns["mysql"]))])
    body = (f"One `run` worker, {n_obsids:,} obsids, C stand-in; wall milliseconds per obsid of each block of "
            f"{BLOCK:,} (the first block counts from the first obsid's end).\n\n"
            + md_table(["obsids up to", "SQLite ms", "MariaDB ms"], rows))
    record("Time per obsid over a long run (issue 17)", body, started_load)
