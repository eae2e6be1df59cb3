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
    assert lines[3] == "  12.0 obsids/min over the last 10 min; 16 worker(s) seen in the last 5 min"
    assert lines[4].startswith("  ETA 1 h 30 min (about ")
    assert all(len(line) <= 80 for line in lines if "failed" not in line or "after" not in line)
    unknown = report.Pace(0, 600, 0, eta.Estimate(None, "no worker seen recently"), 1_700_000_000.0)
    assert report.pace_lines(COUNTS, unknown)[2] == "  ETA unknown: no worker seen recently"


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

