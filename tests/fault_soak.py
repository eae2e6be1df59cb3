#!/usr/bin/env python3
"""Fault soak: many workers over many obsids, a third of them killed with SIGKILL at random moments.

Used by tests/test_reliability.py::test_kill_soak, and runnable on its own to print the figures
that tests/README.md quotes:

    python3 tests/fault_soak.py --backend mysql --workers 16 --obsids 2000 [--seed N]

(with --backend mysql it starts a private MariaDB server in a temporary folder and removes it).

What it does:
 1. `new` a job of N real HIFI obsids (../shared/data/hifi_obsids.txt), template: a few ms of work,
    and a probe that notices if the same obsid ever runs twice at the same time;
 2. starts W `run` workers with a short lease and `wait_for_running = no`, and SIGKILLs W//3 of
    them, each when the number of HIPE launches reaches a random threshold;
 3. after all workers are gone, one new `run` (which waits out the lease and takes the dead
    workers' obsids back) finishes the job;
 4. checks, from the job table, the attempt history, the trivial HIPE's call log and the probe:
    every obsid done, none lost, none recorded done twice, none run twice at once, and no outcome
    recorded by a worker after it lost its claim (killed workers' records all predate their kill,
    and no worker that lost an obsid recorded an outcome for it).
"""
import argparse
import collections
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from mariadb_server import MariaDB  # noqa: E402
from support import SHARED_DATA, TRIVIAL_HIPE, BatchEnv, wait_for  # noqa: E402

# Python 3 (the trivial HIPE runs templates with CPython). A probe file per obsid holds the pid of
# the run in progress; finding it held by a live process means two runs at once.
SOAK_TEMPLATE = r'''
import os, random, time
probe = os.path.join(outDir, "running-%d" % obsid)

def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False

# The probe file appears with its pid already in it (a hard link to a file written first), so a
# run killed at any moment never leaves an empty probe that the next run could not judge.
mine = "%s.%d" % (probe, os.getpid())
with open(mine, "w") as f:
    f.write(str(os.getpid()))
try:
    os.link(mine, probe)
except FileExistsError:
    # Left by an earlier run of this obsid: harmless if that run is dead (its worker was killed).
    try:
        holder = int(open(probe).read() or 0)
    except (OSError, ValueError):
        holder = 0
    if holder == 0 or alive(holder):
        line = "%d %d %d\n" % (obsid, os.getpid(), holder)
        o = os.open(os.path.join(outDir, "overlaps"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(o, line.encode())
        os.close(o)
    os.replace(mine, probe)
else:
    os.remove(mine)
time.sleep(random.uniform(0.0, 0.01))
os.remove(probe)
'''


def _obsids(n):
    source = SHARED_DATA / "hifi_obsids.txt"
    if source.is_file():
        real = [int(line) for line in source.read_text().split()][:n]
        if len(real) == n:
            return real
    return list(range(1342000001, 1342000001 + n))


def soak(env: BatchEnv, workers=16, obsids=2000, kills=None, lease=2.5, seed=None, timeout=420, log=print):
    """Run the soak in `env`; return its figures (a dict). Raises AssertionError on any violation.

    Every process it starts is SIGKILLed and reaped before it returns, whatever happens.
    """
    seed = random.randrange(10**6) if seed is None else seed
    rng = random.Random(seed)
    kills = workers // 3 if kills is None else kills
    job = "soak"
    deadline = time.monotonic() + timeout
    # Start HIPE with the real interpreter (not a pyenv shim) and -S: the launch itself is the cost.
    hipe = {"command": f"{sys.executable} -S {TRIVIAL_HIPE}"}
    env.write_cfg(hipe=hipe, run={"lease": lease, "max_attempts": "5", "wait_for_running": "no"})
    env.template(job, SOAK_TEMPLATE)
    wanted = _obsids(obsids)
    r = env.cli(job, "new", env.obsid_file(wanted))
    assert r.returncode == 0, r.stderr
    out_dir = env.root / "jobs" / job / "output"
    logs = env.root / "worker-logs"
    logs.mkdir(exist_ok=True)

    procs, files, table = [], [], None
    figures = {"seed": seed, "obsids": obsids, "workers": workers, "kills": kills, "lease_s": lease}
    try:
        t0 = time.monotonic()
        for i in range(workers):
            out, err = open(logs / f"w{i}.out", "w"), open(logs / f"w{i}.err", "w")
            files += [out, err]
            procs.append(env.popen(job, "run", stdout=out, stderr=err))
        # All but one victim are chosen in advance and die when the HIPE launches counted so far
        # reach a random share of the job (launches <= 0.9 N leaves obsids pending, so no worker
        # has left yet); the survivors take their obsids back themselves once the lease runs out.
        # The last dies near the very end, chosen among the workers then holding a claim: the
        # survivors are gone before its lease runs out, leaving its obsid to the new run.
        early = rng.sample(range(workers), max(0, kills - 1))
        plan = sorted((rng.uniform(0.05, 0.9) * obsids, i) for i in early)
        plan += [(obsids - kills - rng.uniform(0.25, 0.75) * workers, None)] if kills else []
        by_pid = {p.pid: p for p in procs}
        table = env.table(job)
        killed = {}   # pid -> time.time() of its SIGKILL
        for threshold, victim in plan:
            wait_for(lambda: _line_count(env.calls) >= threshold or all(p.poll() is not None for p in procs),
                     max(1.0, deadline - time.monotonic()), f"{threshold:.0f} HIPE launches")
            if victim is None:
                holders = sorted(r["pid"] for r in table.rows() if r["state"] == "running"
                                 and r["pid"] in by_pid and r["pid"] not in killed)
                if not holders:
                    continue
                proc = by_pid[rng.choice(holders)]
            else:
                proc = procs[victim]
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed[proc.pid] = time.time()
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        phase1 = time.monotonic() - t0
        assert all(by_pid[pid].returncode == -signal.SIGKILL for pid in killed)
        survivors = [p for i, p in enumerate(procs) if p.pid not in killed]
        # 1: the job is not finished yet (obsids of killed workers are left to the new run), which is
        # the job-level exit status; anything else is a failure of the survivor.
        bad = [(p.pid, p.returncode) for p in survivors if p.returncode not in (0, 1)]
        assert not bad, f"surviving workers failed: {bad}; see {logs}"
        left = table.counts()
        figures.update(killed=len(killed), phase1_s=round(phase1, 1),
                       left_running=left["running"], left_pending=left["pending"])
        log(f"seed {seed}: {workers} workers, {len(killed)} SIGKILLed, {phase1:.1f} s; "
            f"left running by dead workers: {left['running']}, pending: {left['pending']}")

        # A new run (waiting for running obsids: they come back when their lease runs out) finishes.
        env.write_cfg(hipe=hipe, run={"lease": lease, "max_attempts": "5", "wait_for_running": "yes"})
        t1 = time.monotonic()
        with open(logs / "final.out", "w") as out, open(logs / "final.err", "w") as err:
            final = env.popen(job, "run", stdout=out, stderr=err)
            procs.append(final)
            final.wait(timeout=max(1.0, deadline - time.monotonic()))
        assert final.returncode == 0, (logs / "final.err").read_text()
        figures["recovery_s"] = round(time.monotonic() - t1, 1)

        figures.update(check(env, table, wanted, killed, out_dir))
        figures["total_s"] = round(time.monotonic() - t0, 1)
        figures["obsids_per_s"] = round(obsids / (phase1 + figures["recovery_s"]), 1)
        return figures
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        if table is not None:
            table.close()
        for f in files:
            f.close()


def check(env, table, wanted, killed, out_dir):
    """Every invariant of the soak; returns the figures it measured."""
    rows = {r["obsid"]: r for r in table.rows()}
    history = collections.defaultdict(list)
    for h in table.history():
        history[h["obsid"]].append(h)
    calls = collections.Counter(env.calls_list())

    assert set(rows) == set(wanted), "the job's obsids changed"
    not_done = sorted(o for o, r in rows.items() if r["state"] != "done" or r["pipelined"] != 1)
    done_twice = sorted(o for o, hs in history.items() if sum(h["outcome"] == "done" for h in hs) > 1)
    never_run = sorted(o for o in wanted if calls[o] == 0)
    overlaps_file = out_dir / "overlaps"
    overlaps = overlaps_file.read_text().splitlines() if overlaps_file.exists() else []
    late = []        # records a killed worker made after its kill (impossible unless fencing failed)
    fenced = []      # outcomes recorded for an obsid by a worker that had lost that obsid
    lost_attempts = 0
    for obsid in wanted:
        hs = sorted(history[obsid], key=lambda h: h["attempt"])
        attempts = [h["attempt"] for h in hs]
        assert attempts == list(range(1, len(hs) + 1)), f"obsid {obsid}: attempts {attempts}"
        final, row = hs[-1], rows[obsid]
        assert final["outcome"] == "done" and row["attempts"] == final["attempt"], f"obsid {obsid}: {hs}"
        assert (final["host"], final["worker"], final["pid"]) == (row["host"], row["worker"], row["pid"])
        losers = {h["pid"] for h in hs if h["outcome"] == "lost"}
        lost_attempts += len(losers)
        assert losers <= set(killed), f"obsid {obsid}: a live worker lost its claim: {hs}"
        fenced += [(obsid, h) for h in hs if h["outcome"] != "lost" and h["pid"] in losers]
        late += [(obsid, h) for h in hs if h["outcome"] != "lost" and h["pid"] in killed
                 and h["ended"] > killed[h["pid"]] + 0.05]
        # Each HIPE launch is one attempt; a killed worker may die before launching HIPE.
        assert len(hs) - len(losers) <= calls[obsid] <= len(hs), f"obsid {obsid}: {calls[obsid]} calls, {hs}"
    figures = {"lost": len(not_done), "duplicates": len(done_twice), "overlaps": len(overlaps),
               "late_records": len(late), "fenced_records": len(fenced),
               "lost_claims_reclaimed": lost_attempts,
               "rerun_obsids": sum(1 for o in wanted if calls[o] > 1), "hipe_launches": sum(calls.values())}
    assert not not_done, f"{len(not_done)} obsids not done, e.g. {not_done[:5]}"
    assert not done_twice, f"{len(done_twice)} obsids recorded done twice, e.g. {done_twice[:5]}"
    assert not never_run, f"obsids done without a HIPE launch: {never_run[:5]}"
    assert not overlaps, f"an obsid ran twice at once: {overlaps[:5]}"
    assert not late and not fenced, f"outcomes recorded by workers that lost their claim: {(late + fenced)[:3]}"
    assert lost_attempts <= len(killed), "more claims lost than workers killed"
    return figures


def _line_count(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("mysql", "sqlite"), default="mysql")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--obsids", type=int, default=2000)
    ap.add_argument("--kills", type=int, default=None, help="default: a third of the workers")
    ap.add_argument("--lease", type=float, default=2.5)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fault-soak-") as tmp:
        server = None
        try:
            if args.backend == "mysql":
                server = MariaDB(Path(tmp) / "mariadb").start()
                env = BatchEnv(Path(tmp) / "root", "mysql", server, server.create_database("soak"))
            else:
                env = BatchEnv(Path(tmp) / "root", "sqlite")
            figures = soak(env, args.workers, args.obsids, args.kills, args.lease, args.seed)
        finally:
            if server:
                server.cleanup()
    print(f"backend {args.backend}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
