"""How long a job has left: expected durations scheduled onto the workers that are there.

Pure arithmetic, no database: storage gathers the figures, report words the answer.

Each obsid's expected duration is its master `pipetime` on a line, seconds = slope * pipetime +
per-launch cost (today's machines and HIPE need not be 2014's; launching HIPE costs about the
same for short and long obsids); an obsid without a pipetime, or whose pipetime is not a number
('', 'abc': `model.as_seconds`), is expected to take the mean measured duration of this job. The
two figures come from different finishes, because longest first makes the recent finishes a
narrow band of pipetimes, over which a line of its own swings with every change of the
machine's load. The slope is the job's, pooled within short stretches of consecutive finishes
from its first ones (the widest spread of pipetimes) to its recent ones (`pooled_slope`: a
change of the per-launch cost from one stretch to the next does not tilt it); where it cannot
be told with confidence, a ratio stands in. The per-launch cost is what the workers alive now
pay, the mean residual of their latest few finishes each (`cycles`, `current`): it follows a
stop, a restart with fewer workers, or a change of the machine's speed within a few finishes a
worker, and it includes the pause between a worker's finish and its next claim; it is never
clamped to 0 (if below nothing, the slope is scaled instead). The workers are those alive now,
the job's live leases (`live_workers`), never workers that have exited. The remaining work
(pending obsids, what is left of the running ones, and obsids whose lease ran out, whole) is
list-scheduled longest first onto those workers, as they claim it, so a few long obsids at the
end are not spread thinly over idle workers as total/W would. With no worker alive the estimate
is "no worker running"; with nothing to go on it is unknown, never a guess.
"""
import heapq
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .model import as_seconds

EXACT_LIMIT = 20_000   # the longest pending obsids scheduled one by one; the others are poured in at once
OVERDUE_SHARE = 0.05   # an obsid past its expected end is given this share of it again
# A worker between two obsids holds no lease for a moment (its finish and its next claim are two
# transactions): one that finished an obsid this recently and holds none now still counts as alive.
# Nothing in the table tells such a worker from one that has just exited without putting an obsid
# back (--max-time; a stop puts its obsid back and is not counted), so a grace it must be: the
# pause is milliseconds, 2 s covers a slow commit on a loaded server, and an exited worker is
# counted for at most those 2 s.
LIVE_GRACE = 2.0
NO_WORKER = "no worker running"
BLOCK = 50           # consecutive finishes within which the per-launch cost is taken as constant
SLOPE_ERROR = 0.25   # a pooled slope less sure than this share of itself is not used: the ratio is
COST_SAMPLES = 50    # the job's latest finishes that give its per-launch cost
PER_WORKER = 8       # each live worker's latest finishes that give the cost it pays now
Worker = Tuple[Any, Any, Any]   # (host, slot, pid): one worker process


@dataclass(frozen=True)
class Speed:
    """measured seconds ≈ scale * expected + overhead, from `samples` finishes."""
    scale: float = 1.0
    overhead: float = 0.0
    samples: int = 0

    def of(self, expected: float) -> float:
        return max(0.0, self.scale * expected + self.overhead)


@dataclass(frozen=True)
class Estimate:
    seconds: Optional[float]   # None: unknown
    basis: str                 # what it rests on, or why it is unknown


def fit_speed(samples: Sequence[Tuple[Any, Any]]) -> Speed:
    """The line through (expected, measured) pairs of finished obsids.

    A line rather than a ratio: launching HIPE costs about the same for short and long obsids.
    Falls back to a ratio when the pairs are too alike to give a slope, or the line would make
    short obsids cost less than nothing.
    """
    pairs = [(x, y) for x, y in ((as_seconds(x), as_seconds(y)) for x, y in samples)
             if x is not None and y is not None and x > 0]
    n = len(pairs)
    if n == 0:
        return Speed()
    sx = sum(x for x, _ in pairs)
    sy = sum(y for _, y in pairs)
    ratio = Speed(sy / sx, 0.0, n)
    if n < 5:
        return ratio
    mx, my = sx / n, sy / n
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    if sxx <= (0.05 * mx) ** 2 * n:   # expected durations within ~5 %: no slope to be had
        return ratio
    slope = sum((x - mx) * (y - my) for x, y in pairs) / sxx
    overhead = my - slope * mx
    if slope <= 0:
        return ratio
    if overhead < 0:   # no cost below nothing: the best line through the origin
        return Speed(sum(x * y for x, y in pairs) / sum(x * x for x, _ in pairs), 0.0, n)
    return Speed(slope, overhead, n)


def _pairs(samples: Iterable[Tuple[Any, Any]]) -> List[Tuple[float, float]]:
    pairs = ((as_seconds(x), as_seconds(y)) for x, y in samples)
    return [(x, y) for x, y in pairs if x is not None and y is not None and x > 0]


def pooled_slope(runs: Iterable[Sequence[Tuple[Any, Any]]], block: int = BLOCK) -> Optional[float]:
    """Seconds per second of pipetime, from (expected, measured) pairs of finishes in the order
    they ended (each run: one stretch of that order), or None when they cannot tell it.

    The slope within blocks of `block` consecutive finishes, pooled over all of them: the
    per-launch cost may change from one block to the next (the machine's load, fewer workers), but
    hardly within one, so its changes do not tilt the slope as they tilt a line fitted across the
    whole run, where the long obsids came first and the short ones last. The blocks at the start,
    the longest obsids spread widest, carry most of it. None when the slope is not positive or
    its standard error is over SLOPE_ERROR of it (recent finishes alone: a narrow band)."""
    sxx = sxy = syy = 0.0
    n = groups = 0
    for run in runs:
        pairs = _pairs(run)
        for i in range(0, len(pairs), block):
            chunk = pairs[i:i + block]
            if len(chunk) < 3:
                continue
            mx = sum(x for x, _ in chunk) / len(chunk)
            my = sum(y for _, y in chunk) / len(chunk)
            sxx += sum((x - mx) ** 2 for x, _ in chunk)
            sxy += sum((x - mx) * (y - my) for x, y in chunk)
            syy += sum((y - my) ** 2 for _, y in chunk)
            n, groups = n + len(chunk), groups + 1
    if sxx <= 0 or n - groups < 3:
        return None
    slope = sxy / sxx
    variance = max(0.0, syy - slope * sxy) / (n - groups - 1)
    if slope <= 0 or (variance / sxx) ** 0.5 > SLOPE_ERROR * slope:
        return None
    return slope


def job_speed(first: Sequence[Tuple[Any, Any]], recent: Sequence[Tuple[Any, Any]]) -> Speed:
    """The job's speed: the pooled slope over its first and recent finishes (`first` in the order
    they ended, `recent` the newest first), and the per-launch cost the recent ones' residuals
    leave. A ratio (no cost) when there is no slope to be had, or the cost would be below nothing."""
    slope = pooled_slope([first, list(reversed(recent))])
    latest = _pairs(recent)[:COST_SAMPLES] or _pairs(first)[-COST_SAMPLES:]
    if not latest:
        return Speed()
    if slope is None:   # the ratio of the latest finishes
        return Speed(sum(y for _, y in latest) / sum(x for x, _ in latest), 0.0, len(latest))
    return with_cost(slope, latest)


def with_cost(slope: float, pairs: Sequence[Tuple[float, float]]) -> Speed:
    """The slope, and the per-launch cost as the mean residual of `pairs` (mean: the ETA adds
    durations up); the ratio of the measured to the slope's seconds if that cost is below nothing
    (the slope too steep for them: a faster machine)."""
    cost = sum(y - slope * x for x, y in pairs) / len(pairs)
    if cost >= 0:
        return Speed(slope, cost, len(pairs))
    return Speed(slope * sum(y for _, y in pairs) / sum(slope * x for x, _ in pairs), 0.0, len(pairs))


def cycles(finishes: Iterable[Dict[str, Any]], workers: Set[Worker],
           per_worker: int = PER_WORKER) -> List[Tuple[float, float]]:
    """(expected, seconds) of the last `per_worker` obsids each of `workers` finished done, the
    seconds from its claim to its end plus the pause before the claim since the worker's previous
    finish (the finish and the next claim are two transactions: what a worker costs an obsid is
    both). A pause over LIVE_GRACE is not between two claims (a wait for the database): left out."""
    by_worker: Dict[Worker, List[Dict[str, Any]]] = {}
    for f in finishes:
        key = (f["host"], f["worker"], f["pid"])
        if key in workers and f.get("ended") is not None and f.get("started") is not None:
            by_worker.setdefault(key, []).append(f)
    out = []
    for rows in by_worker.values():
        rows.sort(key=lambda f: f["ended"])
        for previous, f in list(zip([None, *rows], rows))[-per_worker:]:
            expected = as_seconds(f["expected"])
            if f["state"] != "done" or expected is None or expected <= 0:
                continue
            pause = f["started"] - previous["ended"] if previous is not None else 0.0
            out.append((expected, f["ended"] - f["started"] + (pause if 0 <= pause <= LIVE_GRACE else 0.0)))
    return out


def current(speed: Speed, finishes: Iterable[Dict[str, Any]], workers: Set[Worker]) -> Speed:
    """The job's slope, with the per-launch cost the workers alive now pay: from their latest
    `cycles`, once they have finished one obsid a worker (before that, the job's speed as it is).
    Fewer workers on a shared machine, or another machine, go at another speed. Their latest
    finishes are a narrow band of pipetimes, which tells one figure well, the cost over the
    slope's seconds, not a slope of their own (a change of the machine's load within the band
    tilts it); the obsids left come next, a little shorter, so the slope's error hardly counts."""
    own = cycles(finishes, workers)
    if not workers or len(own) < len(workers):
        return speed
    return with_cost(speed.scale, own)


def live_workers(running: Iterable[Dict[str, Any]], finishes: Iterable[Dict[str, Any]], now: float,
                 pending: bool = True, grace: float = LIVE_GRACE) -> Set[Worker]:
    """The workers alive now: those holding a live lease (a running row whose lease_expires is not
    past; a row of an older version without one goes by a heartbeat in the last 300 s), and, while
    obsids are `pending`, those that finished an obsid (done or failed) in the last `grace` seconds
    and put none back since (between two claims). A worker that stopped (its obsid put back),
    ended, or reached --max-time holds no lease: it is not counted (but, if it put nothing back,
    for those few seconds), however recently it ran. finishes: rows ended since the rate window
    began, pending ones (put back, or failed to be retried) included."""
    alive = set()
    for r in running:
        expires = r.get("lease_expires")
        if expires is None and r.get("heartbeat") is not None:
            expires = r["heartbeat"] + 300.0
        if expires is not None and expires >= now:
            alive.add((r["host"], r["worker"], r["pid"]))
    if pending:
        last: Dict[Worker, Dict[str, Any]] = {}
        for f in finishes:
            key = (f["host"], f["worker"], f["pid"])
            if f.get("ended") is not None and (key not in last or f["ended"] >= last[key]["ended"]):
                last[key] = f
        alive |= {key for key, f in last.items() if f["ended"] >= now - grace and f["state"] != "pending"}
    return alive


def estimate(pending: Iterable[Tuple[Any, int]], running: Iterable[Tuple[Any, float]],
             speed: Speed, mean_measured: Optional[float], workers: int) -> Estimate:
    """Seconds until the last obsid ends.

    pending: (expected seconds or None, how many obsids) groups; running: (expected or None,
    seconds elapsed) per running obsid; speed: fit_speed of recent finishes; mean_measured: mean
    duration of finished obsids of this job (None if none finished); workers: how many were seen
    recently.
    """
    pending = [(e, int(c)) for e, c in pending if c]
    running = list(running)
    if not pending and not running:
        return Estimate(0.0, "nothing left")
    if max(workers, len(running)) == 0:
        return Estimate(None, NO_WORKER)

    def duration(expected):
        seconds = as_seconds(expected)   # not a number ('', 'abc'): unknown, as NULL
        return mean_measured if seconds is None else speed.of(seconds)

    loads: List[float] = []
    for expected, elapsed in running:
        d = duration(expected)
        if d is None:
            return Estimate(None, "no pipetime and no obsid finished yet")
        loads.append(max(d - elapsed, OVERDUE_SHARE * d))
    groups = []
    for expected, count in pending:
        d = duration(expected)
        if d is None:
            return Estimate(None, "no pipetime and no obsid finished yet")
        groups.append((d, count))
    loads += [0.0] * (max(workers, len(running)) - len(loads))
    seconds = _schedule(loads, groups)
    basis = (f"{_workers(len(loads))} running; pipetime x{speed.scale:.3g} + {speed.overhead:.3g} s from {speed.samples} finishes"
             if speed.samples else f"{_workers(len(loads))} running; pipetime as measured in 2014, nothing finished yet")
    return Estimate(seconds, basis)


def _workers(n: int) -> str:
    return "1 worker" if n == 1 else f"{n} workers"


def _schedule(loads: List[float], groups: List[Tuple[float, int]]) -> float:
    """Makespan of giving each duration, longest first, to the worker free soonest.

    The longest EXACT_LIMIT obsids one by one (they make the end of the run); the rest, shorter,
    poured in at once: pouring is additive, and one obsid at a time cost 0.4 million heap steps
    on a million-row job."""
    heapq.heapify(loads)
    left, poured = EXACT_LIMIT, 0.0
    for d, count in sorted(groups, reverse=True):
        one_by_one = min(count, left)
        for _ in range(one_by_one):
            heapq.heapreplace(loads, loads[0] + d)
        left -= one_by_one
        poured += d * (count - one_by_one)
    if poured:
        loads = _pour(loads, poured)
    return max(loads)


def _pour(loads: List[float], work: float) -> List[float]:
    """Many obsids at once, as water: raise the least loaded workers to one level.

    Off from one-by-one scheduling by less than the longest of them, and independent of how
    many obsids there are (a million-row job)."""
    loads = sorted(loads)
    filled, level = 0.0, loads[0]
    for i in range(1, len(loads) + 1):
        nxt = loads[i] if i < len(loads) else float("inf")
        if filled + (nxt - level) * i >= work:
            level += (work - filled) / i
            break
        filled += (nxt - level) * i
        level = nxt
    poured = [max(load, level) for load in loads]
    heapq.heapify(poured)
    return poured
