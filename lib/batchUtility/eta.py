"""How long a job has left: expected durations scheduled onto the workers that are there.

Pure arithmetic, no database: storage gathers the figures, report words the answer.

Each obsid's expected duration is its master `pipetime`, corrected by how long obsids have
actually taken in this job against their pipetime (a least-squares line over recent finishes:
today's machines and HIPE need not be 2014's); an obsid without a pipetime, or whose pipetime is
not a number ('', 'abc': `model.as_seconds`), is expected to take the mean measured duration of
this job. The remaining work (pending obsids, and what is left of the running ones) is
list-scheduled longest first onto the workers seen recently, as the workers claim it, so a few
long obsids at the end are not spread thinly over idle workers as total/W would. With nothing to
go on the estimate is unknown, never a guess.
"""
import heapq
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from .model import as_seconds

EXACT_LIMIT = 20_000   # the longest pending obsids scheduled one by one; the others are poured in at once
OVERDUE_SHARE = 0.05   # an obsid past its expected end is given this share of it again


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
    if slope <= 0 or overhead < 0:
        return ratio
    return Speed(slope, overhead, n)


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
        return Estimate(None, "no worker seen recently")

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
    basis = (f"{len(loads)} workers; pipetime x{speed.scale:.3g} + {speed.overhead:.3g} s from {speed.samples} finishes"
             if speed.samples else f"{len(loads)} workers; pipetime as measured in 2014, nothing finished yet")
    return Estimate(seconds, basis)


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
