"""Status and summary text, in the original's words where it had them."""
import csv
import json
import signal
import time
from dataclasses import dataclass
from typing import Iterable, List, Optional, TextIO

from . import eta
from .eta import Estimate
from .model import DONE, FAILED, PENDING, RUNNING, STATES, as_seconds, printable

RATE_WINDOW = 600.0     # seconds the rate is measured over
WORKERS_WINDOW = 300.0  # no longer used (the workers are the live leases: eta.live_workers); kept for callers
BAR_WIDTH = 60          # cells: with its frame and percentage the bar takes 72 columns
MIN_BAR = 10            # cells of the bar on `run -j N`'s one line, however narrow the terminal


def progress_line(counts) -> str:
    """The original's line: `N of M processed. (x.x %, K remaining)`; processed means done."""
    total = sum(counts.values())
    done = counts[DONE]
    percent = 100.0 * done / total if total else 0.0
    return f"{done} of {total} processed. ({percent:.1f} %, {counts[PENDING] + counts[RUNNING]} remaining)"


def status_text(job, counts, failures, hosts=None, pace=None) -> str:
    lines = [progress_line(counts), "  " + ", ".join(f"{s} {counts[s]}" for s in STATES)]
    if pace is not None:
        lines += pace_lines(counts, pace)
    if failures:
        lines.append(f"  failed obsids (first {len(failures)}):")
        lines += [f"    {obsid}  after {_count(attempts, 'attempt')}: {printable(reason)}"
                  for obsid, attempts, reason in failures]
        lines.append(f"  retry them with: BatchProcess.py {job} reset --failed")
        lines.append(f"  why each attempt ended: BatchProcess.py {job} status --obsid OBSID")
    if hosts is not None:
        lines.append(hosts_text(hosts))
    return "\n".join(lines)


def status_json(job, counts, failures, hosts, pace=None) -> str:
    total = sum(counts.values())
    data = {
        "job": job, "total": total, **counts,
        "remaining": counts[PENDING] + counts[RUNNING],
        "percent_done": round(100.0 * counts[DONE] / total, 3) if total else 0.0,
        "failures": [{"obsid": o, "attempts": a, "reason": r} for o, a, r in failures],
        "hosts": [{"host": h, "done": d, "failed": f, "busy_seconds": round(s, 3)} for h, d, f, s in hosts],
    }
    if pace is not None:
        data.update(pace_json(counts, pace))
    return json.dumps(data, indent=2)


def obsid_text(row, history) -> str:
    """One obsid (`status --obsid`): its state, then each attempt, oldest first."""
    head = f"obsid {row['obsid']}: {row['state']}, {_count(row['attempts'], 'attempt')} counted"
    if row["state"] == RUNNING:
        head += f", running on {row['host']} slot {row['worker']} pid {row['pid']}"
    elif row["state"] != DONE and row["reason"]:
        head += f": {printable(row['reason'])}"
    if row.get("heap_mb"):
        head += f"\n  needs a Java heap of {row['heap_mb']}m (learned when it ran out of memory; its next run gets it)"
    lines = [head] + ([] if history else ["  no attempt recorded yet"])
    last_counted = 0
    for h in history:
        took = f"{h['ended'] - h['started']:.1f} s" if h["started"] is not None and h["ended"] is not None else "?"
        # A reset starts the count again: a counted attempt numbered no higher than one before it
        # came after a reset. An attempt put back uncounted (stopped, fenced, ...) keeps the number
        # of the claim that follows it.
        counted = h["outcome"] in COUNTED
        note = ("  [after a reset]" if counted and h["attempt"] <= last_counted else "") + \
            ("" if counted else "  [not counted]")
        if counted:
            last_counted = h["attempt"]
        lines.append(f"  attempt {h['attempt']}  {h['outcome']:<7}  {_when(h['started'])}  {took:>9}  "
                     f"{h['host']} slot {h['worker']} pid {h['pid']}  {_ending(h)}"
                     + (f"  {printable(h['reason'])}" if h["reason"] else "")
                     + (f"  [template {h['template']}]" if h.get("template") else "") + note
                     + (f"\n{'':>12}{cost_text(h)}" if cost_text(h) else ""))
    return "\n".join(lines)


COUNTED = (DONE, FAILED, "lost")   # the outcomes of the history that count an attempt


def obsid_json(row, history) -> str:
    return json.dumps({"obsid": row["obsid"], "state": row["state"], "attempts": row["attempts"],
                       "reason": row["reason"], "heap_mb": row.get("heap_mb"), "history": history}, indent=2,
                      default=str)


COST_COLUMNS = ("cpu_s", "peak_rss_mb", "read_mb", "write_mb", "heap_mb")


def cost_text(h) -> str:
    """An attempt's cost on a terminal ('cpu 12.3 s, peak 1,234 MiB, read 56.0 MiB, wrote 7.8 MiB, heap
    2048m'), '' when none is known (an attempt of an older version, or a lost one)."""
    parts = []
    if h.get("cpu_s") is not None:
        parts.append(f"cpu {h['cpu_s']:.1f} s")
    if h.get("peak_rss_mb") is not None:
        parts.append(f"peak {h['peak_rss_mb']:,.0f} MiB")
    if h.get("read_mb") is not None:
        parts.append(f"read {h['read_mb']:,.1f} MiB")
    if h.get("write_mb") is not None:
        parts.append(f"wrote {h['write_mb']:,.1f} MiB")
    if h.get("heap_mb"):
        parts.append(f"heap {h['heap_mb']}m")
    return ", ".join(parts)


def _when(epoch) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch is not None else "?"


def _ending(h) -> str:
    if h["signal_no"]:
        try:
            return f"signal {h['signal_no']} ({signal.Signals(h['signal_no']).name})"
        except ValueError:
            return f"signal {h['signal_no']}"
    return f"exit {h['exit_code']}" if h["exit_code"] is not None else "-"


def hosts_text(hosts) -> str:
    """The job-wide summary per host: obsids done and failed, and busy time."""
    lines = [f"  {'host':<24} {'done':>8} {'failed':>8} {'busy (h)':>10}"]
    for host, done, failed, seconds in hosts:
        lines.append(f"  {host:<24} {done:>8} {failed:>8} {seconds / 3600:>10.2f}")
    lines.append(f"  {'total':<24} {sum(h[1] for h in hosts):>8} {sum(h[2] for h in hosts):>8} "
                 f"{sum(h[3] for h in hosts) / 3600:>10.2f}")
    return "\n".join(lines)


def slot_summary(slot, processed, done, failed, seconds, attempts=None) -> str:
    """The original's SUMMARY line, without its faults: no division by zero, whole days counted;
    obsids and attempts (retries) counted apart. processed: the obsids this worker ran; only
    those it finished (done or failed) count as processed, the others are said to be back to
    pending (stopped, put back, to be retried)."""
    minutes = seconds / 60.0
    finished = done + failed
    per = f"{minutes / finished:.2f} minutes/obsid" if finished else "no obsid"
    back = f", {processed - finished} back to pending" if processed > finished else ""
    tried = f" ({_count(processed, 'obsid')} in {attempts} attempts)" if attempts is not None and attempts != processed else ""
    return (f"{slot.host} SLOT {slot.rank} SUMMARY: {_count(finished, 'obsid')} processed in {minutes:.2f} minutes "
            f"({per}); {done} done, {failed} failed{back}{tried}")



# ----------------------------------------------------------------- progress, rate and ETA
@dataclass(frozen=True)
class Pace:
    """How fast a job goes, as storage measured it: the status block's second half."""
    finished: int            # obsids the workers alive now ended done or failed within `window`
    window: float            # seconds those workers have run within the last RATE_WINDOW (0: none alive)
    workers: int             # workers alive now: the job's live leases (eta.live_workers)
    estimate: Estimate       # seconds until the last obsid ends, or unknown
    now: float               # epoch seconds (the database's clock)

    @property
    def per_hour(self) -> Optional[float]:
        return 3600.0 * self.finished / self.window if self.window > 0 else None


def pace_of(figures: dict) -> Pace:
    """The rate, workers and ETA from what storage measured (`JobTable.pace_figures`).

    Only the workers alive now count: the rate is what exactly they finished, over the time they
    have run within RATE_WINDOW (not the idle time before they started, nor an earlier run's
    workers); the ETA schedules the work left onto them, at their speed."""
    now = figures["now"]
    alive = eta.live_workers(figures["running"], figures["finishes"], now,
                             pending=any(n for _, n in figures["pending"]))
    theirs = [f for f in figures["finishes"] if (f["host"], f["worker"], f["pid"]) in alive and f["state"] != PENDING]
    running = [r for r in figures["running"] if (r["host"], r["worker"], r["pid"]) in alive]
    starts = [s for s in [*(f["started"] for f in theirs), *(r["started"] for r in running)] if s is not None]
    window = min(RATE_WINDOW, max(1.0, now - min(starts))) if starts and alive else 0.0
    speed, mean = _speed(figures)
    speed = eta.current(speed, figures["finishes"], alive)
    # A running obsid whose lease ran out belongs to no live worker: it is work left, whole.
    pending = list(figures["pending"]) + [(r["expected"], 1) for r in figures["running"] if r not in running]
    estimate = eta.estimate(pending, [(r["expected"], now - r["started"]) for r in running if r["started"] is not None],
                            speed, mean, len(alive))
    return Pace(len(theirs), window, len(alive), estimate, now)


def _speed(figures: dict):
    """The job's speed from its first and recent finishes (`eta.job_speed`), and the recent ones'
    mean duration (None if none finished)."""
    recent = [(e, s) for e, s in figures["recent"] if s is not None]
    first = [(e, s) for e, s in figures.get("first", ()) if s is not None]
    speed = eta.job_speed([(e, s) for e, s in first if as_seconds(e) is not None],
                          [(e, s) for e, s in recent if as_seconds(e) is not None])
    return speed, (sum(s for _, s in recent) / len(recent) if recent else None)


def expected_now(figures: dict, expected) -> Optional[float]:
    """An obsid's expected duration as this job's finishes suggest (None: nothing to go on)."""
    speed, mean = _speed(figures)
    seconds = as_seconds(expected)   # '' or 'abc' from a master table's text column: unknown
    return speed.of(seconds) if seconds is not None else mean


def progress_bar(counts, width: int = BAR_WIDTH) -> str:
    """`[###x>>>.....]  45.2 %`: done #, failed x, running >, pending . (each present state gets a cell)."""
    total = sum(counts.values())
    order = ((DONE, "#"), (FAILED, "x"), (RUNNING, ">"), (PENDING, "."))
    cells = _apportion([counts[s] for s, _ in order], width) if total else [0, 0, 0, width]
    bar = "".join(mark * n for (_, mark), n in zip(order, cells))
    percent = 100.0 * counts[DONE] / total if total else 0.0
    return f"[{bar}] {percent:5.1f} %"


def _apportion(amounts: List[int], width: int) -> List[int]:
    """Split width cells in proportion to amounts (largest remainder), at least one per non-zero amount."""
    total = sum(amounts)
    exact = [a * width / total for a in amounts]
    cells = [int(x) for x in exact]
    for i in sorted(range(len(amounts)), key=lambda i: exact[i] - cells[i], reverse=True)[:width - sum(cells)]:
        cells[i] += 1
    for i, a in enumerate(amounts):
        if a and not cells[i]:
            cells[i] = 1
            cells[cells.index(max(cells))] -= 1
    return cells


def pace_lines(counts, pace: Pace) -> List[str]:
    """The status block after the original's lines: bar, rate and workers, ETA."""
    rate = pace.per_hour
    window = f"{pace.window:.0f} s" if pace.window < 120 else f"{pace.window / 60:.0f} min"
    if not pace.workers:
        rate_text = eta.NO_WORKER
    else:
        rate_text = ("rate unknown" if rate is None else f"{rate_words(rate)} over the last {window}") + \
            f"; {_count(pace.workers, 'worker')} running"
    return ["  " + progress_bar(counts), "  " + rate_text, "  " + eta_line(pace)]


def _count(n: int, word: str) -> str:
    """'1 obsid', '2 obsids': a count and its noun, singular for one."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def status_one_line(counts, pace: Pace, width: int) -> str:
    """The status block on one line of at most `width` columns (`run -j N` on a terminal): bar,
    done and total, failed and running, ETA, rate; the last of these left out first where they
    do not fit (at 80 columns only the rate goes)."""
    est = pace.estimate
    parts = [f"{counts[DONE]}/{sum(counts.values())} done",
             f"{counts[FAILED]} failed, {counts[RUNNING]} running",
             ("no worker running" if est.basis == eta.NO_WORKER else "ETA unknown") if est.seconds is None
             else "nothing left" if est.seconds == 0 else f"ETA {duration_words(est.seconds)}",
             "rate unknown" if pace.per_hour is None else rate_words(pace.per_hour)]
    while len(parts) > 1 and MIN_BAR + 12 + len("; ".join(parts)) > width:
        parts.pop()
    text = "; ".join(parts)
    cells = max(MIN_BAR, min(BAR_WIDTH // 2, width - 12 - len(text)))
    return (progress_bar(counts, cells) + "  " + text)[:width]


def rate_words(per_hour: float) -> str:
    """A rate, always in obsids a minute (one unit everywhere: status, run -j's line, the report)."""
    per_minute = per_hour / 60
    return f"{per_minute:.1f} obsids/min" if per_minute >= 1 else f"{per_minute:.2g} obsids/min"


def fit_line(line: str, width: int) -> str:
    """A line of at most `width` columns: cut after its last whole '; ' part that fits (the ETA's
    basis goes before the ETA), else at width."""
    if len(line) <= width:
        return line
    cut = line.rfind("; ", 0, width + 1)
    return line[:cut] if cut > len(line) - len(line.lstrip()) else line[:width]


def eta_line(pace: Pace) -> str:
    est = pace.estimate
    if est.seconds is None and est.basis == eta.NO_WORKER:
        return f"ETA: {eta.NO_WORKER}"
    if est.seconds is None:
        return f"ETA unknown: {est.basis}"
    if est.seconds == 0:
        return "ETA: nothing pending or running"
    return (f"ETA {duration_words(est.seconds)} (about {_clock(pace.now + est.seconds, pace.now)});"
            f" {est.basis}")


def duration_words(seconds: float) -> str:
    """3725 -> '1 h 02 min'; 75 -> '1 min 15 s'; 2.5 -> '2.5 s'; 2 days and more in days and hours."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _clock(epoch: float, now: float) -> str:
    same_day = time.localtime(epoch)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M" if same_day else "%a %d %b %H:%M", time.localtime(epoch))


def pace_json(counts, pace: Pace) -> dict:
    total = sum(counts.values())
    rate = pace.per_hour
    return {
        "progress": round(counts[DONE] / total, 6) if total else 0.0,
        "rate": {"per_hour": None if rate is None else round(rate, 3), "window_seconds": round(pace.window, 3),
                 "finished": pace.finished},
        "eta_seconds": None if pace.estimate.seconds is None else round(pace.estimate.seconds, 3),
        "eta_basis": pace.estimate.basis,
        "workers": pace.workers,
        "now": round(pace.now, 3),
    }


# ----------------------------------------------------------------- status --running
def running_text(rows: Iterable[dict], now: float, heartbeat_every: float, lease: float) -> str:
    """One line per running obsid; a heartbeat older than two beats is LATE, older than the lease STALE.

    rows: obsid, host, worker (the slot), pid, started, heartbeat, expected (seconds, or None).
    """
    lines = [f"{'obsid':>12}  {'host':<20} {'slot':>7} {'pid':>8} {'elapsed':>11} {'expected':>11} {'heartbeat':>10}"]
    count = 0
    for r in rows:
        count += 1
        age = now - r["heartbeat"] if r["heartbeat"] is not None else None
        mark = "" if age is None or age <= 2 * heartbeat_every else (
            "  STALE: lease ran out" if age > lease else "  LATE")
        lines.append(f"{r['obsid']:>12}  {str(r['host'] or '?')[:20]:<20} {r['worker'] or '?'!s:>7} "
                     f"{r['pid'] if r['pid'] is not None else '?':>8} "
                     f"{_short(now - r['started'] if r['started'] is not None else None):>11} "
                     f"{_short(as_seconds(r.get('expected'))):>11} {_short(age) + ' ago' if age is not None else '?':>10}{mark}")
    if not count:
        return "no obsid is running"
    return "\n".join(lines)


def _short(seconds) -> str:
    return "?" if seconds is None else duration_words(max(0.0, float(seconds)))


# ----------------------------------------------------------------- history --csv / --json
# GNU parallel's --joblog names where they mean the same, then ours.
HISTORY_COLUMNS = ("Seq", "Host", "Starttime", "JobRuntime", "Exitval", "Signal",
                   "obsid", "attempt", "slot", "pid", "end", "outcome", "reason", *COST_COLUMNS)


def history_record(seq: int, h: dict) -> dict:
    """One attempt as a history row (h: the attempts table's columns)."""
    started, ended = h["started"], h["ended"]
    return {"Seq": seq, "Host": h["host"], "Starttime": _round(started),
            "JobRuntime": _round(ended - started) if started is not None and ended is not None else None,
            "Exitval": h["exit_code"], "Signal": h["signal_no"] or 0,
            "obsid": h["obsid"], "attempt": h["attempt"], "slot": h["worker"], "pid": h["pid"],
            "end": _round(ended), "outcome": h["outcome"], "reason": printable(h["reason"]),
            **{name: _round(h.get(name)) for name in COST_COLUMNS[:-1]}, "heap_mb": h.get("heap_mb")}


def _round(x):
    return None if x is None else round(float(x), 3)


def write_history_csv(attempts: Iterable[dict], out: TextIO) -> int:
    """Stream attempts as CSV with a header; returns how many rows were written."""
    writer = csv.DictWriter(out, HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    n = 0
    for n, h in enumerate(attempts, 1):
        writer.writerow(history_record(n, h))
    return n


def write_history_json(attempts: Iterable[dict], out: TextIO) -> int:
    """Stream attempts as one JSON array, a row a line, without holding them all."""
    out.write("[")
    n = 0
    for n, h in enumerate(attempts, 1):
        out.write(("\n" if n == 1 else ",\n") + json.dumps(history_record(n, h)))
    out.write("\n]\n" if n else "]\n")
    return n


def history_text(attempts: Iterable[dict], out: TextIO, quiet: bool = False) -> int:
    """A terminal's view of the history: one attempt a line, oldest first (none: a line saying so,
    unless quiet)."""
    n = 0
    for n, h in enumerate(attempts, 1):
        r = history_record(n, h)
        took = f"{r['JobRuntime']:.1f} s" if r["JobRuntime"] is not None else "?"
        out.write(f"{n:>7}  {_when(h['started'])}  {took:>9}  {h['obsid']:>12} #{h['attempt']:<2} {h['outcome']:<7} "
                  f"{h['host']} slot {h['worker']} pid {h['pid']}  {_ending(h)}"
                  + (f"  {cost_text(h)}" if cost_text(h) else "")
                  + (f"  {r['reason']}" if r["reason"] else "") + "\n")
    if not n and not quiet:
        out.write("no attempt recorded\n")
    return n
