"""The operator's view, its pure functions (report, eta, timeline) on made-up runs: progress and ETA,
the status block, the running list, the attempt log, the timeline's SVG. tests/system/test_operator.py
drives the commands, and renders the page in a browser.
"""
import csv
import heapq
import io
import json
import xml.etree.ElementTree as ET

import pytest

from batchUtility import eta, report, timeline
from support import COUNTS, SVG, made_up_run


# ----------------------------------------------------------------- ETA
def test_list_scheduling_keeps_a_long_obsid_on_one_worker():
    """One 1000 s obsid and a hundred of 10 s on 4 workers: 1000 s, where total/W says 275 s."""
    est = eta.estimate([(1000, 1), (10, 100)], [], eta.Speed(), None, 4)
    assert est.seconds == pytest.approx(1000)
    est = eta.estimate([(10, 100)], [(1000, 100)], eta.Speed(), None, 4)   # 900 s still to go on one worker
    assert est.seconds == pytest.approx(900)


def test_eta_uses_measured_speed_and_the_mean_for_obsids_without_pipetime():
    speed = eta.fit_speed([(x, 0.001 * x + 0.2) for x in range(400, 4000, 100)])
    assert speed.scale == pytest.approx(0.001) and speed.overhead == pytest.approx(0.2)
    est = eta.estimate([(1000, 4)], [], speed, None, 2)
    assert est.seconds == pytest.approx(2 * 1.2)
    est = eta.estimate([(None, 6)], [], eta.Speed(), 5.0, 3)
    assert est.seconds == pytest.approx(10.0)


def test_eta_is_unknown_with_nothing_to_go_on_and_zero_when_nothing_is_left():
    assert eta.estimate([(None, 10)], [], eta.Speed(), None, 4).seconds is None
    assert eta.estimate([(100, 10)], [], eta.Speed(), None, 0).seconds is None
    assert eta.estimate([(None, 10)], [], eta.Speed(), None, 4).basis == "no pipetime and no obsid finished yet"
    assert eta.estimate([], [], eta.Speed(), None, 0).seconds == 0


# ----------------------------------------------------------------- ETA after stops and restarts (issue 22)
NOW = 1_000_000.0


def _finish(worker, expected, seconds, ended, state="done"):
    return {"host": "h", "worker": worker, "pid": int(worker.split("/")[0]) + 100, "state": state,
            "expected": expected, "started": ended - seconds, "ended": ended}


def _running(worker, expected, started, lease_left=30.0):
    return {"obsid": started, "host": "h", "worker": worker, "pid": int(worker.split("/")[0]) + 100,
            "started": started, "heartbeat": NOW - 1, "expected": expected, "lease_expires": NOW + lease_left}


def test_eta_after_a_stop_says_no_worker_running_whatever_ran_a_minute_ago():
    """Six workers finished obsids until 60 s ago, then stopped (their obsids put back): no lease is
    live. The old ETA counted the six (seen in the last 5 min) and gave a figure 3x too short."""
    finishes = [_finish(f"{w}/6", 1000, 1.0, NOW - 60 - i) for w in range(1, 7) for i in range(20)]
    figures = {"now": NOW, "finishes": finishes, "pending": [(1000, 1547)], "running": [],
               "recent": [(1000, 1.0)] * 120, "first": []}
    pace = report.pace_of(figures)
    assert (pace.workers, pace.estimate.seconds, pace.per_hour) == (0, None, None)
    assert report.pace_lines(COUNTS, pace)[1:] == ["  no worker running", "  ETA: no worker running"]
    assert "no worker running" in report.status_one_line(COUNTS, pace, 80)


def test_eta_after_a_restart_with_fewer_workers_uses_those_workers_and_their_speed():
    """Earlier, 4 workers took 1 s an obsid (1000 s expected); after the restart 2 workers take 2 s
    each (a slower host): 100 obsids pending on 2 workers at 2 s is 100 s, plus what runs."""
    old = [_finish(f"{w}/4", 1000, 1.0, NOW - 120 - i) for w in range(1, 5) for i in range(30)]
    new = [_finish(f"{w}/2", 1000, 2.0, NOW - 3 - w) for w in (1, 2)]
    new_pids = [{**f, "pid": f["pid"] + 50} for f in new]
    running = [{**_running(f"{w}/2", 1000, NOW - 1.0), "pid": w + 150} for w in (1, 2)]
    figures = {"now": NOW, "finishes": old + new_pids, "pending": [(1000, 100)], "running": running,
               "recent": [(1000, 2.0)] * 2 + [(1000, 1.0)] * 120, "first": [(1000, 1.0)] * 120}
    pace = report.pace_of(figures)
    assert pace.workers == 2
    assert pace.estimate.seconds == pytest.approx(100 + 1.0, rel=0.01)
    # The rate is theirs, over the time they have run (since the first start among them), not 10 min
    assert pace.finished == 2 and pace.window == pytest.approx(NOW - min(f["started"] for f in new_pids))


def test_eta_counts_a_worker_between_two_claims_and_not_one_whose_lease_ran_out():
    finishes = [_finish("1/2", 100, 1.0, NOW - 1.0)]                      # finished 1 s ago, claiming next
    running = [_running("2/2", 100, NOW - 0.5), _running("3/3", 100, NOW - 400, lease_left=-10)]   # a dead one
    alive = eta.live_workers(running, finishes, NOW)
    assert alive == {("h", "1/2", 101), ("h", "2/2", 102)}
    stopped = {**_finish("1/2", 100, 0.2, NOW - 0.5), "state": "pending"}   # then it stopped: obsid put back
    assert eta.live_workers(running, [*finishes, stopped], NOW) == {("h", "2/2", 102)}
    figures = {"now": NOW, "finishes": finishes, "pending": [(100, 3)], "running": running,
               "recent": [(100, 1.0)] * 10, "first": []}
    pace = report.pace_of(figures)
    # 4 obsids of 1 s (3 pending and the dead worker's, whole) and 0.5 s left of one, on 2 workers
    assert pace.workers == 2 and pace.estimate.seconds == pytest.approx(2.5, abs=0.1)


def test_the_fit_keeps_a_per_launch_cost_from_the_first_finishes_beside_the_recent_ones():
    """Longest first: the recent finishes are a narrow band whose noise gives the line a negative
    cost, clamped to + 0 s before: the short obsids at the end were expected to take nothing. With
    the job's first finishes beside them the line spans 3,000 s of pipetime and finds the 0.3 s."""
    def took(x, i):
        return 0.001 * x + 0.3 + (0.05 if i % 2 else -0.05) * (1 if x < 500 else 0) + (0.1 if x in (400, 410) else 0)
    recent = [(x, took(x, i)) for i, x in enumerate(range(400, 420, 2))]
    recent += [(x, 0.001 * x + 0.3 + (0.3 if x > 414 else 0)) for x in range(412, 420, 2)]
    first = [(x, took(x, i)) for i, x in enumerate(range(3000, 3600, 20))]
    assert eta.fit_speed(recent).overhead == 0                        # the narrow band alone: no cost
    speed, _ = report._speed({"recent": recent, "first": first})
    assert speed.overhead == pytest.approx(0.3, abs=0.1)
    assert speed.of(10) == pytest.approx(0.31, abs=0.1)


def test_fit_speed_falls_back_to_a_ratio_when_the_pairs_give_no_slope():
    speed = eta.fit_speed([(1000, 2.0)] * 10)
    assert speed.overhead == 0 and speed.scale == pytest.approx(0.002)
    assert eta.fit_speed([]) == eta.Speed()


def test_pouring_a_million_obsids_is_close_to_scheduling_them_one_by_one():
    groups = [(float(d), 250) for d in range(332, 3663, 10)]          # 83,500 obsids
    poured = eta._schedule([0.0] * 64, list(groups))
    loads = [0.0] * 64
    for d, c in sorted(groups, reverse=True):
        for _ in range(c):
            heapq.heapreplace(loads, loads[0] + d)
    exact = max(loads)
    assert abs(poured - exact) <= 3663


# ----------------------------------------------------------------- status block
def test_status_block_fits_80_columns_and_shows_bar_rate_eta():
    pace = report.Pace(finished=120, window=600, workers=16, estimate=eta.Estimate(5400, "16 workers"),
                       now=1_700_000_000.0)
    text = report.status_text("j", COUNTS, [(1342000001, 3, "HIPE exited with status 1")], None, pace)
    lines = text.splitlines()
    assert lines[0] == "1380 of 1701 processed. (81.1 %, 316 remaining)"
    assert lines[1] == "  pending 300, running 16, done 1380, failed 5"
    bar = lines[2].strip()
    assert bar.startswith("[") and bar.endswith("81.1 %")
    cells = bar[1:bar.index("]")]
    assert (cells.count("#"), cells.count("x"), cells.count(">"), cells.count("."), len(cells)) == (47, 1, 1, 11, 60)
    assert lines[3] == "  12.0 obsids/min over the last 10 min; 16 workers running"
    assert lines[4].startswith("  ETA 1 h 30 min (about ")
    assert all(len(line) <= 80 for line in lines if "failed" not in line or "after" not in line)
    none = report.Pace(0, 0, 0, eta.Estimate(None, eta.NO_WORKER), 1_700_000_000.0)
    assert report.pace_lines(COUNTS, none)[1:] == ["  no worker running", "  ETA: no worker running"]


def test_status_json_has_progress_rate_eta_and_workers():
    pace = report.Pace(finished=30, window=300, workers=8, estimate=eta.Estimate(None, "x"), now=1.0)
    data = json.loads(report.status_json("j", COUNTS, [], [], pace))
    assert data["progress"] == pytest.approx(1380 / 1701, abs=1e-6)
    assert data["rate"] == {"per_hour": 360.0, "window_seconds": 300.0, "finished": 30}
    assert data["eta_seconds"] is None and data["workers"] == 8


def test_running_lines_mark_late_and_stale_heartbeats():
    now = 10_000.0
    rows = [{"obsid": 1, "host": "a", "worker": "1/2", "pid": 11, "started": now - 100, "heartbeat": now - 5, "expected": 600},
            {"obsid": 2, "host": "a", "worker": "2/2", "pid": 12, "started": now - 100, "heartbeat": now - 30, "expected": None},
            {"obsid": 3, "host": "b", "worker": "1/1", "pid": 13, "started": now - 900, "heartbeat": now - 400, "expected": 60}]
    lines = report.running_text(rows, now, heartbeat_every=10, lease=300).splitlines()
    assert len(lines) == 4 and lines[0].split()[:3] == ["obsid", "host", "slot"]
    assert not lines[1].endswith("LATE") and "1 min 40 s" in lines[1] and "10 min 00 s" in lines[1]
    assert lines[2].endswith("LATE")
    assert lines[3].endswith("STALE: lease ran out")
    assert report.running_text([], now, 10, 300) == "no obsid is running"


def test_history_csv_and_json_name_columns_like_parallels_joblog():
    attempts, _ = made_up_run(lanes=2, per_lane=5)
    out = io.StringIO()
    assert report.write_history_csv(iter(attempts), out) == 10
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0])[:6] == ["Seq", "Host", "Starttime", "JobRuntime", "Exitval", "Signal"]
    assert len(rows) == 10 and rows[0]["Seq"] == "1" and rows[-1]["JobRuntime"] == ""
    out = io.StringIO()
    report.write_history_json(iter(attempts), out)
    data = json.loads(out.getvalue())
    assert len(data) == 10 and data[0]["obsid"] == attempts[0]["obsid"]
    out = io.StringIO()
    report.write_history_json(iter([]), out)
    assert json.loads(out.getvalue()) == []


# ----------------------------------------------------------------- timeline
def test_svg_has_one_bar_per_attempt_and_one_lane_per_slot_used():
    attempts, now = made_up_run(lanes=8, per_lane=20)
    root = ET.fromstring(timeline.svg(attempts, now, "job j"))
    bars = [r for r in root.iter(SVG + "rect") if "bar" in r.get("class", "").split()]
    assert len(bars) == len(attempts)
    lane_ys = {round(float(b.get("y")), 1) for b in bars}
    assert len(lane_ys) == 8
    tips = [b.find(SVG + "title").text for b in bars]
    failed = [t for a, t in zip(attempts, tips) if a["outcome"] == "failed"]
    assert failed and all("<ValueError>" in t and "\x07" not in t for t in failed)
    assert all(str(a["obsid"]) in t for a, t in zip(attempts, tips))
    assert {b.get("fill") for b in bars} == {timeline.COLOURS[a["outcome"]] for a in attempts}
    ticks = [t.text for t in root.iter(SVG + "text") if t.get("class") == "tick"]
    assert 4 <= len(ticks) <= 13 and all(":" in t for t in ticks)
    legend = [t.text for g in root.iter(SVG + "g") if g.get("class") == "legend" for t in g.iter(SVG + "text")]
    assert any(t.startswith("failed (") for t in legend)


def test_svg_stays_readable_at_10000_attempts_on_64_lanes():
    attempts, now = made_up_run(lanes=64, per_lane=157)
    text = timeline.standalone_svg(attempts, now, "big")
    root = ET.fromstring(text)
    bars = [r for r in root.iter(SVG + "rect") if "bar" in r.get("class", "").split()]
    assert len(bars) == 64 * 157
    heights = {float(b.get("height")) for b in bars}
    assert min(heights) >= 10          # a lane a person can point at
    assert float(root.get("height")) <= 1100 and len(text) < 4_000_000



def test_workers_sharing_a_slot_name_get_a_lane_each():
    """Workers started without mpirun are all slot 1/1: their overlapping attempts are split by pid."""
    a = [{"obsid": o, "attempt": 1, "host": "h", "worker": "1/1", "pid": pid, "started": s, "ended": e,
          "outcome": "done", "reason": ""} for o, pid, s, e in [(1, 10, 0, 100), (2, 10, 101, 120), (3, 11, 30, 40)]]
    assert sorted(set(timeline.lanes_of(a).values())) == [("h", "1/1", 10), ("h", "1/1", 11)]
    a[2]["started"], a[2]["ended"] = 121, 130       # one after the other: one lane
    assert set(timeline.lanes_of(a).values()) == {("h", "1/1", None)}



def test_at_80_columns_the_progress_line_keeps_failed_and_running_and_the_eta_line_is_fit_whole():
    """run -j's line at 80 columns: the rate goes first, the failed and running counts stay (they
    went first before); status --watch cuts a line after its last whole part, never in the ETA."""
    pace = report.Pace(120, 600, 16, eta.Estimate(5400, "16 workers running; pipetime x0.001 + 0.3 s from 500 "
                                                         "finishes"), 1_700_000_000.0)
    line = report.status_one_line(COUNTS, pace, 79)
    assert len(line) <= 79 and "5 failed, 16 running" in line and "ETA 1 h 30 min" in line, line
    eta_line = "  " + report.eta_line(pace)
    assert len(eta_line) > 79
    fitted = report.fit_line(eta_line, 79)
    assert fitted.startswith("  ETA 1 h 30 min (about ") and fitted.endswith("16 workers running"), fitted
    assert report.fit_line("  short", 79) == "  short"


def test_the_workers_alive_use_their_own_line_when_their_finishes_give_one():
    """Before the restart 8 workers on a loaded machine took 1.5x as long; the 3 alive now have
    finished obsids over a span of pipetimes, longest first: the cost they pay now (0.15 s) is
    used, not one of a line bent through both regimes (which had a negative cost, clamped to 0 s)."""
    first = [(x, 1.5 * (0.0005 * x + 0.15)) for x in range(3700, 1500, -4)][:500]
    new = [_finish(f"{w}/3", x, 0.0005 * x + 0.15, NOW - 5 - (109 - i)) for i, (w, x) in
           enumerate((1 + i % 3, x) for i, x in enumerate(range(1400, 300, -10)))]
    figures = {"now": NOW, "finishes": new, "pending": [(300, 300)],
               "running": [_running(f"{w}/3", 300, NOW - 0.1) for w in (1, 2, 3)],
               "recent": [(f["expected"], f["ended"] - f["started"]) for f in new], "first": first}
    pace = report.pace_of(figures)
    # 303 obsids of 0.3 s on 3 workers, less what ran: about 30 s
    assert pace.estimate.seconds == pytest.approx(303 * 0.3 / 3 - 0.1, rel=0.05), pace.estimate
