"""How long a job has left: expected durations scheduled onto the workers that are there.

Pure arithmetic, no database: storage gathers the figures, report words the answer.

Each obsid's expected duration is its master `pipetime`, corrected by how long obsids have
actually taken in this job against their pipetime (a least-squares line over recent finishes:
today's machines and HIPE need not be 2014's); an obsid without a pipetime, or whose pipetime is
not a number ('', 'abc': `model.as_seconds`), is expected to take the mean measured duration of
this job. The line is fitted over the job's first finishes and its recent ones together: with
longest first, recent finishes alone are a narrow band of expected durations, whose line says
nothing sure of the per-launch cost. The workers are those alive now, the job's live leases
(`live_workers`), never workers that have exited; once each of them has finished an obsid, the
line is scaled to what exactly those workers took (`for_workers`): fewer workers on a shared
machine, or another machine, go at another speed. The remaining work (pending obsids, what is
left of the running ones, and obsids whose lease ran out, whole) is list-scheduled longest first
onto those workers, as they claim it, so a few long obsids at the end are not spread thinly over
idle workers as total/W would. With no worker alive the estimate is "no worker running"; with
nothing to go on it is unknown, never a guess.
"""
import heapq
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .model import as_seconds

EXACT_LIMIT = 20_000   # the longest pending obsids scheduled one by one; the others are poured in at once
OVERDUE_SHARE = 0.05   # an obsid past its expected end is given this share of it again
# A worker between two obsids holds no lease for a moment (its finish and its next claim are two
# transactions): one that finished an obsid this recently and holds none now still counts as alive.
LIVE_GRACE = 2.0
NO_WORKER = "no worker running"


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


Worker = Tuple[Any, Any, Any]   # (host, slot, pid): one worker process


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


def for_workers(speed: Speed, pairs: Sequence[Tuple[Any, Any]], workers: int) -> Speed:
    """The speed scaled to what the workers alive now took: pairs are (expected, measured) of their
    own finishes. Only once there are at least as many as workers (one obsid a worker, on average):
    before that, the job's fit as it is."""
    pairs = [(as_seconds(x), as_seconds(y)) for x, y in pairs]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None and x > 0]
    if not workers or len(pairs) < workers:
        return speed
    predicted = sum(speed.of(x) for x, _ in pairs)
    if predicted <= 0:
        return speed
    k = sum(y for _, y in pairs) / predicted
    return Speed(speed.scale * k, speed.overhead * k, speed.samples)


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
