"""ETA after a stop and a restart with fewer workers: the 2014 HIFI reprocessing replayed from
../shared/data/blkr_v11_1.sql.gz (the 1,701 obsids that load; read where it lies, never copied),
each obsid sleeping its pipetime / SCALE, on SQLite.

Our run: `run -j BEFORE` until STOP_AT of the job is done, then SIGTERM (the running obsids go back
to pending), then `run -j AFTER` to the end. The ETA (`status --json`'s, computed in this process
from the same table every half second, so that the sampling loads nothing) is compared with the
real time left (the last outcome, database clock) at 10, 25, 50 and 75 % of the obsids done, and
at the first sample after the restart where each new worker has finished one obsid.

The anchor, GNU parallel's `--eta`, runs the same sleeps (the same Python start per obsid, longest
first) the same way: `parallel -j BEFORE --joblog` stopped by SIGTERM at STOP_AT (it lets its
running jobs end), then `parallel --resume -j AFTER`; its `ETA: Ns Left: N` lines are read from its
standard error as they come.
"""
import re
import signal
import subprocess
import sys
import threading
import time

from common import SHARED_DATA, load_average, md_table, record

from support import blkr_pipetimes

DUMP = SHARED_DATA / "blkr_v11_1.sql.gz"
MARKS = (0.10, 0.25, 0.50, 0.75)
STOP_AT = 0.06
BEFORE, AFTER = 8, 3
_PARALLEL_ETA = re.compile(r"ETA: (\d+)s Left: (\d+)")




def lean_python() -> str:
    """The same Python start for both: -S -I (no site), as the lean HIPE of tests/system/test_operator.py."""
    return f"{sys.executable} -S -I"


def our_run(suite, pipetimes, scale):
    """Samples (now, eta_seconds or None, done share, workers) of our ETA, the end, and when the restart came."""
    import sqlite3

    from batchUtility import eta, report
    env = suite.env("sqlite")
    env.load_master()
    with sqlite3.connect(env.root / "batch.sqlite") as db:
        db.executemany("INSERT INTO v11_1 (obsid, pipetime) VALUES (?, ?)", pipetimes)
    hipe = env.root / "lean-hipe"
    hipe.write_text(f'#!/bin/sh\nfor script; do :; done\nexec {lean_python()} "$script"\n')
    hipe.chmod(0o755)
    env.write_cfg(hipe={"command": str(hipe)}, run={"lease": "60", "max_attempts": "3"})
    sleeps = ", ".join(f"{o}: {p / scale:.4f}" for o, p in pipetimes)
    r = env.cli("replay", "new")
    assert r.returncode == 0, r.stderr
    env.template("replay", f"import time\nSLEEPS = {{{sleeps}}}\ntime.sleep(SLEEPS[obsid])\n")
    table = env.table("replay")
    samples, restart = [], None
    total = len(pipetimes)

    def sample():
        figures = table.pace_figures(report.RATE_WINDOW)
        pace = report.pace_of(figures)
        done = figures["counts"]["done"]
        samples.append((pace.now, pace.estimate.seconds, done / total, pace.workers,
                        [((f["host"], f["worker"], f["pid"]), f["ended"]) for f in figures["finishes"]
                         if f["state"] == "done"],
                        pace.estimate.basis))
        return done

    first = env.popen("-q", "replay", "run", "-j", BEFORE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while sample() < STOP_AT * total:
        time.sleep(0.5)
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    # A worker that finished an obsid just before the stop counts as alive for eta.LIVE_GRACE s.
    time.sleep(eta.LIVE_GRACE)
    between = report.eta_line(report.pace_of(table.pace_figures(report.RATE_WINDOW)))
    restart = time.time()
    second = env.popen("-q", "replay", "run", "-j", AFTER, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while second.poll() is None:
        sample()
        time.sleep(0.5)
    with sqlite3.connect(env.root / "batch.sqlite") as db:
        end = db.execute("SELECT MAX(ended) FROM replay").fetchone()[0]
        left = db.execute("SELECT COUNT(*) FROM replay WHERE state <> 'done'").fetchone()[0]
        rows = db.execute("SELECT pid, started, ended FROM replay ORDER BY pid, started").fetchall()
    assert left == 0, f"{left} obsids not done"
    # A worker's pause between a finish and its next claim (two transactions): what eta.LIVE_GRACE must cover
    pauses = sorted(b[1] - a[2] for a, b in zip(rows, rows[1:]) if a[0] == b[0])
    return samples, end, restart, between, pauses


def parallel_run(tmp, pipetimes, scale):
    """Samples (time, eta_seconds, done share) of GNU parallel's --eta, the end, and the restart."""
    durations = sorted((p / scale for _, p in pipetimes), reverse=True)
    args = tmp / "sleeps"
    args.write_text("".join(f"{d:.4f}\n" for d in durations))
    joblog = tmp / "joblog"
    joblog.unlink(missing_ok=True)
    command = f"{lean_python()} -c 'import time; time.sleep({{}})'"
    samples, total = [], len(durations)

    def run(jobs, done_before, stop_at=None, resume=False):
        proc = subprocess.Popen(["parallel", "--will-cite", "--eta", "-j", str(jobs), "--joblog", str(joblog),
                                 *(["--resume"] if resume else []), "-a", str(args), command],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        stopped = []

        def read():
            buffer = b""
            while True:
                chunk = proc.stderr.read1(4096)
                if not chunk:
                    return
                buffer += chunk
                *lines, buffer = re.split(rb"[\r\n]", buffer)
                for line in lines:
                    m = _PARALLEL_ETA.search(line.decode(errors="replace"))
                    if m and not stopped:
                        done = done_before + (total - done_before - int(m.group(2)))
                        samples.append((time.time(), float(m.group(1)), done / total))
                        if stop_at is not None and done >= stop_at * total:
                            stopped.append(True)
                            proc.send_signal(signal.SIGTERM)   # parallel lets its running jobs end
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        proc.wait(timeout=7200)
        reader.join(timeout=10)

    run(BEFORE, 0, stop_at=STOP_AT)
    restart = time.time()
    done_before = sum(1 for line in joblog.read_text().splitlines()[1:] if line.split("\t")[6:7] == ["0"])
    run(AFTER, done_before, resume=True)
    return samples, time.time(), restart


def errors_at_marks(samples, end, restart):
    """The ETA's error (ETA / real time left - 1) at the first sample at or past each mark after the restart."""
    out = []
    for mark in MARKS:
        found = next((s for s in samples if s[0] >= restart and s[2] >= mark and s[1] is not None), None)
        out.append(None if found is None else (found[1] / (end - found[0]) - 1, found[1], end - found[0], *found[5:]))
    return out


def first_after_restart(samples, end, restart):
    """Our first sample after the restart where the new workers have each finished an obsid."""
    for s in samples:
        if s[0] >= restart and s[1] is not None and s[3] and len({w for w, ended in s[4] if ended >= restart}) >= s[3]:
            return s[1] / (end - s[0]) - 1, s[1], end - s[0]
    return None


def words(e) -> str:
    return "-" if e is None else f"{e[0]:+.0%} ({e[1]:.0f} s for {e[2]:.0f} s)"


def main(suite, args):
    from batchUtility import eta
    started_load = load_average()
    scale = args.scale or (4000.0 if suite.quick else 2000.0)
    pipetimes = blkr_pipetimes(DUMP)
    ours, our_end, our_restart, between, pauses = our_run(suite, pipetimes, scale)
    print(f"  ours: {len(ours)} samples, {our_end - ours[0][0]:.0f} s (load {load_average()})", flush=True)
    theirs, their_end, their_restart = parallel_run(suite.tmp, pipetimes, scale)
    print(f"  parallel: {len(theirs)} samples, {their_end - theirs[0][0]:.0f} s (load {load_average()})", flush=True)
    ours_at, theirs_at = errors_at_marks(ours, our_end, our_restart), errors_at_marks(theirs, their_end, their_restart)
    rows = [[f"{m:.0%} done", words(o), words(t)] for m, o, t in zip(MARKS, ours_at, theirs_at)]
    rows.insert(0, ["just after the restart (one obsid per worker done)",
                    words(first_after_restart(ours, our_end, our_restart)), "-"])
    body = (f"{len(pipetimes):,} obsids of the 2014 dump on SQLite, each sleeping pipetime / {scale:g} "
            f"(total {sum(p for _, p in pipetimes) / scale:,.0f} s); `run -j {BEFORE}` stopped by SIGTERM at "
            f"{STOP_AT:.0%} done, then `run -j {AFTER}` to the end; GNU parallel the same way (`-j {BEFORE}`, "
            f"SIGTERM, `--resume -j {AFTER}`). Error: ETA / real time left - 1, at the first sample past each mark "
            f"after the restart (ETA and real time left in brackets). Our run took {our_end - ours[0][0]:.0f} s, "
            f"parallel's {their_end - theirs[0][0]:.0f} s.\n\n"
            + md_table(["(moment", "(this tool's ETA", "(GNU parallel --eta"], rows)
            + f"\n\nBetween the stop and the restart, `status` said: `{between}`. Our ETA's basis at each mark:\n\n"
            + "".join(f"- {m:.0%}: {o[3]}\n" for m, o in zip(MARKS, ours_at) if o is not None)
            + (f"\nA worker's pause between a finish and its next claim (what `eta.LIVE_GRACE`, {eta.LIVE_GRACE:g} s, "
               f"covers): median {1000 * pauses[len(pauses) // 2]:.0f} ms, 99th percentile "
               f"{1000 * pauses[int(0.99 * (len(pauses) - 1))]:.0f} ms, longest {1000 * pauses[-1]:.0f} ms "
               f"({len(pauses):,} pauses).\n" if pauses else ""))
    record(f"ETA after a stop and a restart with fewer workers (pipetime / {scale:g})", body, started_load)
