"""The ETA's speed model on made-up runs shaped like the benchmark's (tests/bench/bench_eta.py): the
obsids claimed longest first (so the recent finishes are a narrow band of pipetimes), a per-launch
cost as large as the short obsids, a stop and a restart with fewer workers, the machine's speed
changing in the middle of the run. Each run is simulated finish by finish; at each mark the figures
storage would read (`JobTable.pace_figures`) are built from it, and the ETA `report.pace_of` gives
is compared with the time the simulated run really took to its end.
"""
import bisect
import random

import pytest

from batchUtility import eta, report

# Pipetimes of the 2014 dump's shape (the quantiles of its 1,701 pipetimes, seconds), longest first
QUANTILES = ((0.0, 3663), (0.01, 2100), (0.06, 1140), (0.1, 1065), (0.2, 890), (0.3, 809), (0.4, 740),
             (0.5, 687), (0.6, 643), (0.7, 605), (0.8, 577), (0.9, 542), (0.95, 490), (1.0, 332))
SCALE = 2000.0    # the replay sleeps pipetime / SCALE
GAP = 0.02        # a worker's finish to its next claim


def pipetimes(n=1700):
    qs = [q for q, _ in QUANTILES]
    out = []
    for i in range(n):
        q = i / (n - 1)
        k = min(bisect.bisect_right(qs, q), len(qs) - 1)
        (q0, p0), (q1, p1) = QUANTILES[k - 1], QUANTILES[k]
        out.append(round(p0 + (p1 - p0) * (q - q0) / (q1 - q0), 1))
    return out


def simulate(phases, seed=1, jitter=0.3, slower=lambda t: 1.0):
    """Runs obsids longest first, each claimed by the worker free soonest. phases: (workers, stop
    share, launch_cost): that phase's workers are stopped once the share of the obsids is done
    (their running obsids go back to pending), the last phase runs to the end (share 1.0);
    launch_cost(t): the per-launch cost of an obsid started at t. An obsid takes pipetime / SCALE
    + that cost * (1 +- jitter), all of it * slower(t). Returns one row per obsid, as storage
    keeps it at the end."""
    rnd = random.Random(seed)
    todo, rows, t, pid = pipetimes(), [], 0.0, 100
    total = len(todo)
    for workers, stop_at, launch_cost in phases:
        free = [(t, pid + w) for w in range(workers)]
        phase = []
        for x in todo:
            free.sort()
            start, worker = free.pop(0)
            start += GAP
            took = (x / SCALE + launch_cost(start) * (1 + jitter * (2 * rnd.random() - 1))) * slower(start)
            phase.append({"host": "h", "worker": f"{worker - pid + 1}/{workers}", "pid": worker, "state": "done",
                          "expected": x, "started": start, "ended": start + took})
            free.append((start + took, worker))
        pid += workers
        if stop_at >= 1.0:
            return rows + phase
        when = sorted(r["ended"] for r in phase)[int(stop_at * total) - len(rows) - 1]
        rows += [r for r in phase if r["ended"] <= when]
        todo = sorted((r["expected"] for r in phase if r["ended"] > when), reverse=True)
        t = when + eta.LIVE_GRACE + 1.0   # as the benchmark: the restart comes after a pause
    return rows


def figures_at(rows, now):
    """What `pace_figures` reads at `now`: finishes of the rate window, pending groups, running rows
    with their live lease, the last and first 500 done."""
    done = sorted((r for r in rows if r["ended"] <= now), key=lambda r: r["ended"])
    running = [{**r, "obsid": i, "heartbeat": now, "lease_expires": now + 30.0}
               for i, r in enumerate(rows) if r["started"] <= now < r["ended"]]
    pending = {}
    for r in rows:
        if r["started"] > now:
            pending[r["expected"]] = pending.get(r["expected"], 0) + 1
    pairs = [(r["expected"], r["ended"] - r["started"]) for r in done]
    return {"now": now, "finishes": [r for r in done if r["ended"] >= now - report.RATE_WINDOW],
            "pending": sorted(pending.items(), reverse=True), "running": running,
            "recent": pairs[::-1][:500], "first": pairs[:500]}


def errors(rows, marks):
    """The ETA's error (ETA / real time left - 1) at each share of the obsids done."""
    end = max(r["ended"] for r in rows)
    ends = sorted(r["ended"] for r in rows)
    out = []
    for mark in marks:
        now = ends[int(mark * len(rows))] + 1e-6
        pace = report.pace_of(figures_at(rows, now))
        out.append(pace.estimate.seconds / (end - now) - 1)
    return out


MARKS = (0.10, 0.25, 0.50, 0.75, 0.90)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_after_a_restart_with_fewer_workers_the_eta_holds_at_every_mark(seed):
    """The benchmark's run: 8 workers on a loaded machine (launch 0.4 s) stopped at 6 %, then 3
    workers on a quieter one (launch 0.12 s), 30 % jitter. Within 25 % once each of the 3 has
    finished an obsid (the issue's figure), within 5 % from 10 % done on. Before, the line fitted
    to the recent narrow band of pipetimes swung, and a worker's pause between two claims was
    not counted: -10 %."""
    rows = simulate([(8, 0.06, lambda t: 0.4), (3, 1.0, lambda t: 0.12)], seed=seed)
    errs = errors(rows, MARKS)
    # and as soon as each of the 3 has finished an obsid (the moment)
    restart = min(r["started"] for r in rows if r["pid"] >= 108)
    firsts = [min(r["ended"] for r in rows if r["pid"] == pid) for pid in (108, 109, 110)]
    assert min(firsts) > restart
    now = max(firsts) + 1e-6
    pace = report.pace_of(figures_at(rows, now))
    first = pace.estimate.seconds / (max(r["ended"] for r in rows) - now) - 1
    assert abs(first) <= 0.25 and all(abs(e) <= 0.05 for e in errs), [f"{e:+.0%}" for e in [first, *errs]]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_eta_follows_a_change_of_the_machines_speed_within_a_few_finishes(seed):
    """3 workers; at 40 % done others load the machine and the launch cost goes from 0.1 s to 0.35 s.
    Ten finishes a worker later (42 %: the cost is the mean of each worker's last 8), the ETA is
    the new speed's, within 10 %."""
    rows = simulate([(3, 1.0, lambda t: 0.1)], seed=seed)
    change = sorted(r["ended"] for r in rows)[int(0.4 * len(rows))]
    rows = simulate([(3, 1.0, lambda t: 0.1 if t < change else 0.35)], seed=seed)
    errs = errors(rows, (0.42, 0.50, 0.75, 0.90))
    assert all(abs(e) <= 0.10 for e in errs), [f"{e:+.0%}" for e in errs]


@pytest.mark.parametrize("seed", [1, 2])
def test_on_a_machine_that_became_slower_at_everything_the_eta_stays_within_a_quarter(seed):
    """At 30 % done everything takes 1.5x as long (another machine, a CPU-bound HIPE on a loaded
    one: the slope changes, not only the cost). The slope is the job's, the new cost absorbs the
    change for the obsids near the latest ones: within the issue's 25 %."""
    rows = simulate([(3, 1.0, lambda t: 0.15)], seed=seed)
    change = sorted(r["ended"] for r in rows)[int(0.3 * len(rows))]
    rows = simulate([(3, 1.0, lambda t: 0.15)], seed=seed, slower=lambda t: 1.0 if t < change else 1.5)
    errs = errors(rows, (0.35, 0.50, 0.75, 0.90))
    assert all(abs(e) <= 0.25 for e in errs), [f"{e:+.0%}" for e in errs]
