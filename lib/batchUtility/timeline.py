"""A picture of a run: one self-contained HTML page (`report FILE.html`) or its SVG timeline alone.

No network, no scripts: the page is read as it is, years later, from an archive. The timeline has
one lane per host and slot and one bar per attempt, coloured by outcome; hovering a bar shows its
obsid and reason through SVG <title>. Sized to stay readable at 10,000 attempts on 64 lanes.
Standard library only.
"""
import html
import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .model import printable
from .report import cost_text

# Colours told apart also by people with red-green colour blindness (Okabe-Ito), by outcome.
COLOURS = {"done": "#009e73", "failed": "#d55e00", "lost": "#e69f00", "stopped": "#999999", "running": "#0072b2",
           "memory": "#56b4e9"}
OTHER_COLOUR = "#cc79a7"
WIDTH = 1280          # pixels of the whole SVG
LABEL_WIDTH = 190     # the lane labels on the left
RIGHT_MARGIN = 24
TOP = 34              # legend
AXIS = 34             # time labels under the lanes
MAX_PLOT_HEIGHT = 960
# Tick steps (seconds) the time axis chooses from, so that it gets about 6 to 12 labels.
_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
          86400, 172800, 604800)
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value) -> str:
    """Any value as text fit for XML and HTML: escaped, without the control characters XML forbids."""
    return html.escape(_XML_BAD.sub("?", "" if value is None else str(value)), quote=True)


def lane_key(lane) -> Tuple:
    """Lanes sort by host, then slot number (slot 10/16 after 9/16), then pid."""
    host, slot, pid = lane
    digits = re.match(r"\d+", slot)
    return (host, int(digits.group()) if digits else 0, slot, pid or 0)


def lanes_of(attempts: Sequence[dict]) -> Dict[int, Tuple[str, str, Optional[int]]]:
    """The lane of each attempt (by index): its host and slot; and its pid too where several
    processes share one slot name at once (workers started without mpirun are all slot 1/1)."""
    by_slot: Dict[Tuple[str, str], List[int]] = {}
    for i, a in enumerate(attempts):
        by_slot.setdefault((str(a["host"] or "?"), str(a["worker"] or "?")), []).append(i)
    lane_of = {}
    for (host, slot), members in by_slot.items():
        shared = _overlap(attempts, members)
        for i in members:
            lane_of[i] = (host, slot, attempts[i].get("pid") if shared else None)
    return lane_of


def _overlap(attempts, members) -> bool:
    """Whether attempts of different processes in one slot ran at the same time."""
    reach, holder = float("-inf"), None
    for i in sorted(members, key=lambda i: attempts[i]["started"]):
        a = attempts[i]
        if a["started"] < reach and a.get("pid") != holder:
            return True
        end = float("inf") if a["ended"] is None else a["ended"]
        if end > reach:
            reach, holder = end, a.get("pid")
    return False


def tick_step(span: float, most: int = 12) -> int:
    for step in _STEPS:
        if span / step <= most:
            return step
    return int(span / most) + 1


def _tick_label(epoch: float, step: int, first: bool, previous: Optional[float]) -> str:
    t = time.localtime(epoch)
    clock = "%H:%M:%S" if step < 60 else "%H:%M"
    new_day = first or previous is None or time.localtime(previous)[:3] != t[:3]
    return time.strftime(("%d %b " if new_day and step < 86400 else "") + (clock if step < 86400 else "%d %b"), t)


def svg(attempts: Sequence[dict], now: float, title: str = "") -> str:
    """The timeline as one <svg> element.

    attempts: dicts with obsid, attempt, host, worker (slot), started, ended (None while running:
    drawn up to now), outcome, reason. Attempts without a start are not drawn.
    """
    attempts = [a for a in attempts if a.get("started") is not None]
    lane_of = lanes_of(attempts)
    lanes = sorted(set(lane_of.values()), key=lane_key)
    lane_h = max(6.0, min(22.0, MAX_PLOT_HEIGHT / max(1, len(lanes))))
    plot_w = WIDTH - LABEL_WIDTH - RIGHT_MARGIN
    height = TOP + lane_h * max(1, len(lanes)) + AXIS
    t0 = min((a["started"] for a in attempts), default=now)
    t1 = max([now if a["ended"] is None else a["ended"] for a in attempts] + [t0 + 1.0])
    scale = plot_w / (t1 - t0)

    def x(t):
        return LABEL_WIDTH + (t - t0) * scale

    row = {lane: i for i, lane in enumerate(lanes)}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
           f'viewBox="0 0 {WIDTH} {height:.0f}" font-family="sans-serif" font-size="12">',
           f"<title>{_text(title or 'timeline')}</title>",
           f'<rect x="0" y="0" width="{WIDTH}" height="{height:.0f}" fill="#ffffff"/>']
    out += _legend(attempts)
    font = max(6.0, min(12.0, lane_h - 2))
    for (host, worker, pid), i in row.items():
        y = TOP + i * lane_h
        if i % 2:
            out.append(f'<rect class="lane" x="{LABEL_WIDTH}" y="{y:.1f}" width="{plot_w}" '
                       f'height="{lane_h:.1f}" fill="#f2f2f2"/>')
        out.append(f'<text x="{LABEL_WIDTH - 6}" y="{y + lane_h / 2:.1f}" text-anchor="end" dominant-baseline="central" '
                   f'font-size="{font:.1f}">{_text(host)} slot {_text(worker)}{"" if pid is None else f" pid {pid}"}</text>')
    out += _axis(t0, t1, x, TOP + lane_h * max(1, len(lanes)))
    pad = 1.0 if lane_h >= 8 else 0.5
    for n, a in enumerate(attempts):
        y = TOP + row[lane_of[n]] * lane_h + pad
        end = now if a["ended"] is None else a["ended"]
        left = x(a["started"])
        colour = COLOURS.get(a["outcome"], OTHER_COLOUR)
        took = f"{end - a['started']:.1f} s" + (" so far" if a["ended"] is None else "")
        tip = f"obsid {a['obsid']} attempt {a['attempt']}: {a['outcome']}, {took}, {a['host']} slot {a['worker']}"
        if cost_text(a):
            tip += f"; {cost_text(a)}"
        if a.get("reason"):
            tip += f"; {printable(a['reason'])}"   # a reason an earlier version stored may hold HIPE's escapes
        out.append(f'<rect class="bar {_text(a["outcome"])}" x="{left:.2f}" y="{y:.1f}" '
                   f'width="{max(1.0, x(end) - left):.2f}" height="{lane_h - 2 * pad:.1f}" fill="{colour}">'
                   f"<title>{_text(tip)}</title></rect>")
    out.append("</svg>")
    return "\n".join(out)


def _legend(attempts) -> List[str]:
    counts: Dict[str, int] = {}
    for a in attempts:
        counts[a["outcome"]] = counts.get(a["outcome"], 0) + 1
    out, left = [], LABEL_WIDTH
    for outcome in [*COLOURS, *sorted(set(counts) - set(COLOURS))]:
        label = f"{outcome} ({counts.get(outcome, 0)})"
        out.append(f'<g class="legend"><rect x="{left}" y="10" width="14" height="14" '
                   f'fill="{COLOURS.get(outcome, OTHER_COLOUR)}"/>'
                   f'<text x="{left + 19}" y="21">{_text(label)}</text></g>')
        left += 28 + 7.5 * len(label)
    return out


def _axis(t0, t1, x, bottom) -> List[str]:
    step = tick_step(t1 - t0)
    # Ticks at whole steps of local time (the hour, the minute), not at the first start.
    offset = time.localtime(t0).tm_gmtoff if step >= 3600 else 0
    first = (int((t0 + offset) // step) + 1) * step - offset
    out, previous, t = [], None, first
    while t <= t1:
        out.append(f'<line x1="{x(t):.1f}" y1="{TOP}" x2="{x(t):.1f}" y2="{bottom + 4:.1f}" stroke="#c8c8c8"/>')
        out.append(f'<text class="tick" x="{x(t):.1f}" y="{bottom + 18:.1f}" text-anchor="middle">'
                   f"{_text(_tick_label(t, step, previous is None, previous))}</text>")
        previous, t = t, t + step
    out.append(f'<line x1="{LABEL_WIDTH}" y1="{bottom:.1f}" x2="{WIDTH - RIGHT_MARGIN}" y2="{bottom:.1f}" stroke="#555555"/>')
    return out


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
pre { background: #f6f6f6; padding: .8em; border: 1px solid #ddd; overflow-x: auto; }
table { border-collapse: collapse; } td, th { padding: .25em .7em; border-bottom: 1px solid #ddd; text-align: left; }
td.n, th.n { text-align: right; } .timeline { overflow-x: auto; }
"""


def log_link(log: Path, page_dir: Optional[Path]) -> str:
    """A link to a log file: relative to the page's folder (the page and the job's folder moved or
    archived together keep it working), as a URL path; absolute where no relative path exists."""
    try:
        target = os.path.relpath(log, page_dir) if page_dir is not None else str(log)
    except ValueError:
        target = str(log)
    return f'<a href="{_text(urllib.parse.quote(target))}"><code>{_text(log)}</code></a>'


def run_span(attempts: Sequence[dict]) -> Optional[Tuple[float, float]]:
    """The run's first start and last end, of attempts that ended (None if none did)."""
    ended = [a for a in attempts if a.get("started") is not None and a.get("ended") is not None]
    if not ended:
        return None
    return min(a["started"] for a in ended), max(a["ended"] for a in ended)


def page(job: str, status_block: str, hosts: Iterable[Tuple[str, int, int, float]], failures: Iterable[Tuple],
         attempts: Sequence[dict], now: float, log_dir: Path, page_dir: Optional[Path] = None,
         finished: bool = False) -> str:
    """The whole report as one HTML document.

    hosts: (host, done, failed, busy seconds); failures: (obsid, attempts, reason); page_dir: the
    folder the page is written to (log links are relative to it); finished: nothing pending or
    running, so the page says how long the run took.
    """
    written = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now))
    workers: Dict[str, set] = {}
    tries: Dict[str, int] = {}
    for a in attempts:
        workers.setdefault(str(a["host"] or "?"), set()).add((a["worker"], a.get("pid")))
        tries[str(a["host"] or "?")] = tries.get(str(a["host"] or "?"), 0) + 1
    spent = _costs_by(attempts, lambda a: str(a["host"] or "?"))
    host_rows = "".join(
        f'<tr><td>{_text(h)}</td><td class="n">{len(workers.get(h, ()))}</td><td class="n">{tries.get(h, 0)}</td>'
        f'<td class="n">{d}</td><td class="n">{f}</td><td class="n">{s / 3600:.2f}</td>'
        f'<td class="n">{_figure(spent.get(h), "cpu_h", "{:.2f}")}</td>'
        f'<td class="n">{_figure(spent.get(h), "peak_max", "{:,.0f}")}</td></tr>' for h, d, f, s in hosts)
    failure_rows = "".join(
        f'<tr><td class="n">{o}</td><td class="n">{n}</td><td>{_text(printable(r))}</td>'
        f"<td>{log_link(log_dir / f'{o}.stderr', page_dir)}</td></tr>" for o, n, r in failures)
    span = run_span(attempts) if finished else None
    took = "" if span is None else (
        f"<p>The run took {_text(_duration(span[1] - span[0]))}: from {_text(_stamp(span[0]))} "
        f"to {_text(_stamp(span[1]))} (first start to last end).</p>")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_text(job)}: batch report</title><style>{_CSS}</style></head><body>",
        f"<h1>Job {_text(job)}</h1><p>Report written {_text(written)}.</p>",
        f"<h2>Status</h2>{took}<pre>{_text(status_block)}</pre>",
        "<h2>Hosts</h2><table><tr><th>host</th><th class=\"n\">workers</th><th class=\"n\">attempts</th>"
        "<th class=\"n\">done</th><th class=\"n\">failed</th><th class=\"n\">busy (h)</th>"
        "<th class=\"n\">CPU (h)</th><th class=\"n\">peak memory (MiB)</th></tr>"
        f"{host_rows}</table>",
        costs_section(attempts),
        "<h2>Timeline</h2><p>One lane per host and slot, one bar per attempt; hover a bar for its obsid and reason.</p>",
        f'<div class="timeline">{svg(attempts, now, f"job {job}: attempts over time")}</div>',
        "<h2>Failed obsids</h2>" + (
            "<table><tr><th class=\"n\">obsid</th><th class=\"n\">attempts</th><th>reason</th><th>log</th></tr>"
            f"{failure_rows}</table>" if failure_rows else "<p>None.</p>"),
        "</body></html>", ""])


# Attempts grouped by how long they ran: memory against duration, to size a node's memory and heap.
_DURATIONS = ((60, "under 1 min"), (600, "1-10 min"), (3600, "10-60 min"), (6 * 3600, "1-6 h"),
              (float("inf"), "6 h and more"))


def _costs_by(attempts: Iterable[dict], key) -> Dict[str, Dict[str, float]]:
    """Per group (key(attempt)), of the attempts whose cost is known: how many, CPU hours, the median
    and largest peak memory (MiB), GiB read and written, the largest heap given (MiB)."""
    groups: Dict[str, List[dict]] = {}
    for a in attempts:
        if a.get("cpu_s") is not None or a.get("peak_rss_mb") is not None:
            groups.setdefault(key(a), []).append(a)
    figures = {}
    for name, members in groups.items():
        peaks = sorted(float(a["peak_rss_mb"]) for a in members if a.get("peak_rss_mb") is not None)
        figures[name] = {
            "attempts": len(members),
            "cpu_h": sum(float(a.get("cpu_s") or 0) for a in members) / 3600,
            "peak_median": peaks[len(peaks) // 2] if peaks else None,
            "peak_max": peaks[-1] if peaks else None,
            "read_gb": sum(float(a.get("read_mb") or 0) for a in members) / 1024,
            "write_gb": sum(float(a.get("write_mb") or 0) for a in members) / 1024,
            "heap_max": max((int(a["heap_mb"]) for a in members if a.get("heap_mb")), default=None)}
    return figures


def _figure(figures: Optional[Dict[str, float]], name: str, form: str) -> str:
    value = (figures or {}).get(name)
    return "" if value is None else form.format(value)


def _duration_group(a: dict) -> str:
    took = (a["ended"] - a["started"]) if a.get("ended") is not None and a.get("started") is not None else 0.0
    return next(label for limit, label in _DURATIONS if took < limit)


def costs_section(attempts: Sequence[dict]) -> str:
    """What the attempts cost (history's cpu_s, peak_rss_mb, read_mb, write_mb, heap_mb), per host and
    against how long they ran: the figures to size nodes and [hipe] memory / max_memory by."""
    columns = ("<th class=\"n\">attempts</th><th class=\"n\">CPU (h)</th><th class=\"n\">peak memory, median (MiB)</th>"
               "<th class=\"n\">peak memory, largest (MiB)</th><th class=\"n\">largest heap (MiB)</th>"
               "<th class=\"n\">read (GiB)</th><th class=\"n\">written (GiB)</th>")

    def rows(figures, order):
        return "".join(
            f'<tr><td>{_text(name)}</td><td class="n">{f["attempts"]}</td><td class="n">{f["cpu_h"]:.2f}</td>'
            f'<td class="n">{_figure(f, "peak_median", "{:,.0f}")}</td><td class="n">{_figure(f, "peak_max", "{:,.0f}")}</td>'
            f'<td class="n">{_figure(f, "heap_max", "{:,}")}</td><td class="n">{f["read_gb"]:.2f}</td>'
            f'<td class="n">{f["write_gb"]:.2f}</td></tr>' for name, f in sorted(figures.items(), key=order))
    by_host = _costs_by(attempts, lambda a: str(a["host"] or "?"))
    if not by_host:
        return "<h2>Costs</h2><p>No attempt has its cost recorded (attempts of an earlier version, or none yet).</p>"
    labels = [label for _, label in _DURATIONS]
    by_duration = _costs_by(attempts, _duration_group)
    return ("<h2>Costs</h2><p>CPU (user + system), the peak resident memory of HIPE's largest process, the bytes it "
            "read and wrote, and the Java heap it was given, of every attempt whose cost is known.</p>"
            f'<table class="costs"><tr><th>host</th>{columns}</tr>{rows(by_host, lambda item: item[0])}</table>'
            "<h3>Peak memory against how long an attempt ran</h3>"
            f'<table class="costs"><tr><th>ran</th>{columns}</tr>'
            f"{rows(by_duration, lambda item: labels.index(item[0]))}</table>")
def _stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _duration(seconds: float) -> str:
    """As report.duration_words says it (not imported: report imports nothing of the timeline)."""
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def standalone_svg(attempts: Sequence[dict], now: float, job: str) -> str:
    """The timeline alone, as an SVG file."""
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + svg(attempts, now, f"job {job}: attempts over time") + "\n"
