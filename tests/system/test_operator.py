"""The operator's view through the commands on both backends: status (the new fields, the per-host
totals, --running, --watch on a terminal), history, `run -j` on a terminal, results, the report
page and SVG, and the report page rendered in headless Chromium (marked `browser`); the ETA on a replay
of the 2014 run. tests/unit/test_operator.py tests the pure functions.
"""
import csv
import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import time
import xml.etree.ElementTree as ET
import zlib

import pytest

from batchUtility import eta, report, storage, timeline
from batchUtility.errors import BatchError
from batchUtility.model import Outcome
from support import COUNTS, SHARED_DATA, SVG, blkr_pipetimes, chromium, made_up_run, wait_for


# ----------------------------------------------------------------- the page in a browser
def png_pixels(path):
    """Decode an 8-bit RGB(A) PNG with zlib and struct: (width, height, rows of bytes, bytes a pixel)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, prev = zlib.decompress(b"".join(idat)), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows, bpp


def screenshot(page, png, tmp_path, size="1400,1000"):
    if chromium(tmp_path / "chromium-profile", f"--screenshot={png}", f"--window-size={size}", page.as_uri()) is None:
        pytest.skip("chromium is not installed (.ci/install installs it)")
    return png


@pytest.mark.browser
@pytest.mark.slow
def test_the_report_page_renders_in_chromium(tmp_path):
    attempts, now = made_up_run(lanes=16, per_lane=12)
    block = report.status_text("j", COUNTS, [(1342000001, 3, "boom")], None,
                               report.Pace(100, 600, 16, eta.Estimate(1200, "16 workers"), now))
    page = tmp_path / "report.html"
    page.write_text(timeline.page("j", block, [("node01", 40, 2, 7200.0)], [(1342000001, 3, "boom")],
                                  attempts, now, tmp_path / "log"))
    assert "<script" not in page.read_text() and "http://" not in page.read_text().replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    width, height, rows, bpp = png_pixels(screenshot(page, tmp_path / "report.png", tmp_path, "1400,1400"))
    assert (width, height) == (1400, 1400)
    pixels = [row[i:i + 3] for row in rows[::4] for i in range(0, len(row), bpp * 4)]
    colours = set(pixels)
    not_white = sum(p != b"\xff\xff\xff" for p in pixels)
    assert len(colours) > 20 and not_white > len(pixels) // 20
    outcome_colours = {bytes.fromhex(c[1:]) for c in timeline.COLOURS.values()}
    assert len(outcome_colours & colours) >= 4   # the bars were drawn, in their colours


@pytest.mark.browser
@pytest.mark.slow
def test_the_report_gives_what_attempts_cost_in_chromium(tmp_path):
    """Issue 23: the hosts table's CPU and peak memory columns, and the costs per host and against
    how long attempts ran, as Chromium reads the page (its DOM after parsing)."""
    attempts, now = made_up_run(lanes=8, per_lane=10)
    for i, a in enumerate(attempts):
        a.update(cpu_s=36.0 * (i % 5 + 1), peak_rss_mb=1000.0 + 10 * i, read_mb=512.0, write_mb=256.0, heap_mb=2048)
    attempts[0].update(peak_rss_mb=9999.0, heap_mb=8192)
    page = tmp_path / "report.html"
    page.write_text(timeline.page("j", "status", [("node01", 30, 2, 7200.0), ("node02", 30, 2, 7200.0)], [],
                                  attempts, now, tmp_path / "log"))
    shown = chromium(tmp_path / "chromium-profile", "--dump-dom", page.as_uri())
    if shown is None:
        pytest.skip("chromium is not installed (.ci/install installs it)")
    dom = shown.stdout
    assert dom.count('<table class="costs">') == 2
    costs = dom.split('<table class="costs">')[1].split("</table>")[0]
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in costs.split("<tr>")[2:]]
    assert [r[0] for r in rows] == ["node01", "node02"]
    node01 = [a for a in attempts if a["host"] == "node01"]
    assert rows[0][1:] == [str(len(node01)), f"{sum(a['cpu_s'] for a in node01) / 3600:.2f}",
                           f"{sorted(a['peak_rss_mb'] for a in node01)[len(node01) // 2]:,.0f}", "9,999", "8,192",
                           f"{len(node01) * 0.5:.2f}", f"{len(node01) * 0.25:.2f}"]
    hosts = dom.split("<h2>Hosts</h2>")[1].split("</table>")[0]
    assert "CPU (h)" in hosts and "9,999" in hosts
    assert "cpu 36.0 s, peak 9,999 MiB" in dom   # the bar's tooltip


# ----------------------------------------------------------------- the commands, on both backends
GATE = "import os, time\nwhile not os.path.exists({gate!r}):\n    time.sleep(0.05)\n"


def new_job(batch, job, obsids, template):
    batch.template(job, template)
    r = batch.cli(job, "new", batch.obsid_file(obsids, f"{job}.txt"))
    assert r.returncode == 0, r.stderr


def status_json(batch, job, *more):
    r = batch.cli(job, "status", "--json", *more)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
def test_status_json_has_the_new_fields(batch):
    new_job(batch, "s", [1, 2, 3, 4], "x = obsid\nif obsid == 4:\n    raise ValueError('four')\n")
    before = status_json(batch, "s")
    assert before["progress"] == 0 and before["eta_seconds"] is None and before["workers"] == 0
    assert before["rate"]["finished"] == 0
    assert batch.cli("s", "run").returncode == 1
    data = status_json(batch, "s")
    assert {"progress", "rate", "eta_seconds", "eta_basis", "workers", "now"} <= set(data)
    assert data["progress"] == 0.75 and data["eta_seconds"] == 0
    # The job is over and its worker gone: no worker is running, so no rate either (issue 22)
    assert data["workers"] == 0 and data["rate"]["finished"] == 0 and data["rate"]["per_hour"] is None
    assert isinstance(data["now"], float) and data["rate"]["window_seconds"] == 0
    text = batch.cli("s", "status").stdout.splitlines()
    assert text[0] == "3 of 4 processed. (75.0 %, 0 remaining)" and text[2].strip().startswith("[###")
    assert "ETA: nothing pending or running" in text[4]


# (obsid, state, host, started, ended): two hosts' finished obsids, one running, one put back pending.
HOST_ROWS = [(1, "done", "nodeA", 0, 3600), (2, "done", "nodeA", 5000, 6800), (3, "failed", "nodeB", 100, 460),
             (4, "done", "nodeB", 1000, 8200), (5, "running", "nodeA", 9000, None), (6, "pending", "nodeC", 0, 50)]
HOSTS_JSON = [{"host": "nodeA", "done": 2, "failed": 0, "busy_seconds": 5400.0},
              {"host": "nodeB", "done": 1, "failed": 1, "busy_seconds": 7560.0}]
HOSTS_TEXT = ["  host                         done   failed   busy (h)",
              "  nodeA                           2        0       1.50",
              "  nodeB                           1        1       2.10",
              "  total                           3        1       3.60"]


def indexes_of(batch, job):
    if batch.backend == "sqlite":
        return {r[0] for r in query(batch, f"SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = '{job}'")}
    return {r[0] for r in query(batch, "SELECT index_name FROM information_schema.statistics"
                                       f" WHERE table_schema = DATABASE() AND table_name = '{job}'")}


def test_per_host_totals_come_from_an_index_that_an_older_job_is_given(batch):
    """`status --hosts` and `--json` sum per host from the hosts index alone (on a million rows 0.2 s
    instead of 0.8: tests/bench_status.py); `new` makes it, the next command adds it to a job made
    without it, and the figures are the same either way."""
    new_job(batch, "h", [r[0] for r in HOST_ROWS], "x = 1\n")
    assert "h__hosts" in indexes_of(batch, "h")
    for obsid, state, host, started, ended in HOST_ROWS:
        query(batch, f"UPDATE h SET state = '{state}', host = '{host}', started = {started},"
                     f" ended = {'NULL' if ended is None else ended} WHERE obsid = {obsid}")

    def figures():
        text = batch.cli("h", "status", "--hosts")
        assert text.returncode == 0, text.stderr
        return status_json(batch, "h")["hosts"], text.stdout.splitlines()[-4:]
    assert figures() == (HOSTS_JSON, HOSTS_TEXT)
    table = batch.table("h")
    plan = " ".join(map(str, query(batch, ("EXPLAIN QUERY PLAN " if batch.backend == "sqlite" else "EXPLAIN ")
                                   + table.statement(storage.BY_HOST))))
    assert "h__hosts" in plan and ("COVERING INDEX" if batch.backend == "sqlite" else "Using index") in plan, plan

    query(batch, "DROP INDEX h__hosts" + (" ON h" if batch.backend == "mysql" else ""))   # as an older version made it
    assert "h__hosts" not in indexes_of(batch, "h")
    assert figures() == (HOSTS_JSON, HOSTS_TEXT)
    assert "h__hosts" in indexes_of(batch, "h")


@pytest.mark.slow
def test_history_csv_has_one_row_per_attempt(batch):
    batch.write_cfg(run={"max_attempts": "2", "retry_errors": "yes"})   # script errors retried: two attempts
    new_job(batch, "h", [1, 2, 3, 4, 5], "if obsid % 2:\n    raise ValueError('odd')\n")
    batch.cli("h", "run")
    attempts = batch.table("h").history()
    assert len(attempts) == 2 * 3 + 2
    r = batch.cli("h", "history", "--csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == len(attempts)
    assert sorted((int(x["obsid"]), int(x["attempt"])) for x in rows) == sorted((a["obsid"], a["attempt"]) for a in attempts)
    assert {x["outcome"] for x in rows} == {"done", "failed"} and {x["Exitval"] for x in rows} == {"0", "1"}
    assert [int(x["Seq"]) for x in rows] == list(range(1, len(rows) + 1))
    data = json.loads(batch.cli("h", "history", "--json").stdout)
    assert len(data) == len(attempts) and data[0]["Host"]
    assert len(batch.cli("h", "history").stdout.splitlines()) == len(attempts)
    assert json.loads(batch.cli("h", "history", "--json", "--since", "2099-01-01").stdout) == []
    recent = batch.cli("h", "history", "--csv", "--since", "1 hour ago")
    assert recent.returncode == 0 and len(recent.stdout.splitlines()) == len(attempts) + 1
    bad = batch.cli("h", "history", "--since", "yesterday-ish")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--since" in bad.stderr


@pytest.mark.slow
def test_status_running_lists_what_runs_where(batch, tmp_path):
    gate = tmp_path / "gate"
    new_job(batch, "r", [7, 8], GATE.format(gate=str(gate)))
    worker = batch.popen("r", "run")
    try:
        wait_for(lambda: "7" in batch.cli("r", "status", "--running").stdout, 60, "obsid 7 running")
        lines = batch.cli("r", "status", "--running").stdout.splitlines()
        assert len(lines) == 2 and lines[1].split()[:4] == ["7", os.uname().nodename[:20], "1/1", str(worker.pid)]
        assert "LATE" not in lines[1]
    finally:
        gate.touch()
        worker.communicate(timeout=60)
    assert batch.cli("r", "status", "--running").stdout.strip() == "no obsid is running"


def read_pty(fd, until, timeout):
    """Read a pseudo-terminal until `until(text)` or EOF; returns what was read."""
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline and not until(out.decode(errors="replace")):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:   # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


@pytest.mark.slow
def test_watch_redraws_in_place_on_a_terminal_and_ends_with_the_job(batch, tmp_path):
    gate = tmp_path / "gate"
    new_job(batch, "w", [1, 2, 3], GATE.format(gate=str(gate)))
    worker = batch.popen("w", "run")
    master, slave = pty.openpty()
    watch = batch.popen("w", "status", "--watch", "0.3", stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        seen = read_pty(master, lambda t: t.count("processed.") >= 3, 60)
        assert seen.count("processed.") >= 3 and "\x1b[" in seen          # redrawn, with ANSI cursor moves
        gate.touch()
        seen += read_pty(master, lambda t: False, 60)
        assert watch.wait(timeout=60) == 0
        assert "3 of 3 processed." in seen
    finally:
        gate.touch()
        os.close(master)
        worker.communicate(timeout=60)
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    plain = batch.cli("w", "status", "--watch", "0.3")        # not a terminal: one plain block, and it ends
    assert plain.returncode == 0 and "\x1b" not in plain.stdout and plain.stdout.startswith("3 of 3 processed.")


def terminal_lines(text):
    """The lines a terminal shows for `text`: CR goes back to the start of the line, ESC [K clears
    the rest of it, LF starts the next line (as a pty's output, where LF arrives as CR LF)."""
    lines, line, col, i = [], [], 0, 0
    while i < len(text):
        if text.startswith("\x1b[K", i):
            del line[col:]
            i += 3
            continue
        ch = text[i]
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(line))
            line, col = [], 0
        else:
            line[col:col + 1] = [ch]
            col += 1
        i += 1
    return lines + (["".join(line)] if line else [])


WORKER_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d |\.{5}  \[Slot [12]/2 on |\S+ SLOT [12] SUMMARY: ")
ONE_LINE = re.compile(r"\[[#x>.]+\] +\d+\.\d %  \d+/8 done")


def run_on_a_terminal(batch, job, *more, until=None, then=None):
    """`run -j 2` on a pseudo-terminal: (exit status, what the terminal received). When `until(text)`
    holds, `then()` is called (to let the workers go on)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))   # 40 rows of 100 columns
    proc = batch.popen(job, "run", "-j", "2", *more, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        seen = ""
        if until is not None:
            seen = read_pty(master, until, 120)
            assert until(seen), f"not seen in time: {seen!r}"
            then()
        seen += read_pty(master, lambda t: False, 120)   # to the end: EIO once the run closed the pty
        return proc.wait(timeout=60), seen
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_run_j_shows_one_progress_line_below_the_workers_lines_on_a_terminal_only(batch, tmp_path):
    gate = tmp_path / "gate"
    new_job(batch, "pl", range(1, 9), GATE.format(gate=str(gate)))
    status, seen = run_on_a_terminal(batch, "pl", until=lambda t: bool(ONE_LINE.search(t)), then=gate.touch)
    assert status == 0, seen
    assert "\r\x1b[K" in seen and len(ONE_LINE.findall(seen)) >= 2, seen   # drawn, then redrawn in place
    shown = terminal_lines(seen)
    end = shown.index("job-wide summary of job pl:")
    assert re.match(r"\[#+\] 100\.0 %  8/8 done; 0 failed, 0 running; nothing left", shown[end - 1]), shown
    assert all(WORKER_LINE.match(line) for line in shown[:end - 1]), shown   # each intact, nothing glued to it
    assert sum("] done in " in line for line in shown[:end - 1]) == 8
    assert shown[end + 1] == "8 of 8 processed. (100.0 %, 0 remaining)"
    # The progress line fits the terminal (the workers' log lines are what they are: a worker waiting
    # for the template's probe says so in a line of its own).
    assert max(len(line) for line in shown if ONE_LINE.match(line)) < 100

    assert batch.cli("pl", "reset", "--yes").returncode == 0
    piped = batch.cli("pl", "run", "-j", "2")                 # piped: the workers' lines only, as always
    assert piped.returncode == 0
    for text in (piped.stdout, piped.stderr):
        assert "\x1b" not in text and "\r" not in text and not ONE_LINE.search(text)
    lines = (piped.stdout + piped.stderr).splitlines()
    end = lines.index("job-wide summary of job pl:")
    assert all(WORKER_LINE.match(line) for line in lines[:end]) and lines[end + 1].startswith("8 of 8 processed.")

    assert batch.cli("pl", "reset", "--yes").returncode == 0
    status, quiet = run_on_a_terminal(batch, "pl", "-q")       # -q on a terminal: no progress line either
    assert status == 0 and "\x1b" not in quiet and not ONE_LINE.search(quiet), quiet


@pytest.mark.slow
def test_run_j_goes_on_when_its_terminal_closes(batch, tmp_path):
    """The terminal of `run -j 2` closes mid-run (its writes fail with EIO): the workers finish the
    job, and the run's exit status is still the job's (0), not a crash of the parent."""
    gate = tmp_path / "gate"
    new_job(batch, "tc", range(1, 9), GATE.format(gate=str(gate)))
    master, slave = pty.openpty()
    proc = batch.popen("tc", "run", "-j", "2", stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        seen = read_pty(master, lambda t: bool(ONE_LINE.search(t)), 120)
        assert ONE_LINE.search(seen), seen
    finally:
        os.close(master)
    gate.touch()
    assert proc.wait(timeout=120) == 0
    assert batch.cli("tc", "status").stdout.startswith("8 of 8 processed.")


def test_watch_stops_on_ctrl_c_with_130_and_no_traceback(batch):
    new_job(batch, "c", [1, 2], "x = 1\n")
    watch = batch.popen("c", "status", "--watch", "0.2")
    wait_for(lambda: watch.stdout.readline().startswith("0 of 2 processed."), 30, "a first block")
    watch.send_signal(signal.SIGINT)
    _out, err = watch.communicate(timeout=30)
    assert watch.returncode == 130 and "Traceback" not in err


RESULTS = ("batchResult('double', obsid * 2)\nbatchResult('label', 'obs%d' % obsid)\n"
           "if obsid == 3:\n    raise ValueError('three')\n")


def query(batch, sql):
    """Rows of one query, straight from the env's database."""
    if batch.backend == "sqlite":
        with sqlite3.connect(batch.root / "batch.sqlite") as db:
            return [tuple(r) for r in db.execute(sql)]
    with batch.server.admin(batch.db) as c:
        cur = c.cursor()
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]


def results_of(batch, job):
    return query(batch, f"SELECT obsid, name, value, number FROM {job}__results ORDER BY obsid, name")


@pytest.mark.slow
def test_results_are_written_only_on_success(batch):
    batch.write_cfg(run={"max_attempts": "1"})
    new_job(batch, "res", [1, 2, 3], RESULTS)
    assert batch.cli("res", "run").returncode == 1
    assert results_of(batch, "res") == [(1, "double", "2", 2.0), (1, "label", "obs1", None),
                                        (2, "double", "4", 4.0), (2, "label", "obs2", None)]
    out = batch.root / "res.csv"
    r = batch.cli("res", "results", "--csv", out)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == "obsid,double,label\n1,2,obs1\n2,4,obs2\n"
    assert batch.cli("res", "results").stdout == out.read_text()


@pytest.mark.slow
def test_results_are_replaced_on_rerun(batch):
    new_job(batch, "rr", [1, 2], RESULTS)
    batch.cli("rr", "run")
    batch.template("rr", "batchResult('triple', obsid * 3.5)\n")
    assert batch.cli("rr", "reset", "--obsids", batch.obsid_file([2], "two.txt")).returncode == 0
    assert [r[0] for r in results_of(batch, "rr")] == [1, 1]              # a reset obsid has none
    assert batch.cli("rr", "run").returncode == 0
    assert results_of(batch, "rr")[2:] == [(2, "triple", "7.0", 7.0)]
    assert batch.cli("rr", "results").stdout == "obsid,double,label,triple\n1,2,obs1,\n2,,,7.0\n"


@pytest.mark.slow
def test_report_writes_a_page_and_an_svg(batch):
    batch.write_cfg(run={"max_attempts": "2", "retry_errors": "yes"})   # script errors retried: two attempts
    new_job(batch, "p", [1, 2, 3], "if obsid == 2:\n    raise ValueError('two & <b>')\n")
    batch.cli("p", "run")
    page, picture = batch.root / "p.html", batch.root / "p.svg"
    r = batch.cli("p", "report", page, "--svg", picture)
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    assert "<svg" in text and "<script" not in text and "two &amp; &lt;b&gt;" in text
    assert str(batch.root / "jobs" / "p" / "log" / "2.stderr") in text
    bars = [e for e in ET.parse(picture).getroot().iter(SVG + "rect") if "bar" in e.get("class", "").split()]
    assert len(bars) == len(batch.table("p").history()) == 4


# ----------------------------------------------------------------- the ETA on the 2014 run, replayed
DUMP = SHARED_DATA / "blkr_v11_1.sql.gz"
SCALE = 1000.0          # a 2014 pipetime of 3,663 s takes 3.7 s here
REPLAY_WORKERS = 16




def load_blkr(batch):
    """The master table v11_1 as the 2014 dump loads it (on MySQL, the dump itself)."""
    if batch.backend == "mysql":
        batch.load_master(DUMP)
        return
    batch.load_master()
    with sqlite3.connect(batch.root / "batch.sqlite") as db:
        db.executemany("INSERT INTO v11_1 (obsid, pipetime) VALUES (?, ?)", blkr_pipetimes(DUMP))


def sample_eta(table, mark):
    """The ETA as `status --json` gives it, once `mark` of the job is done; else None."""
    counts = table.counts()
    if counts["done"] < mark * sum(counts.values()):
        return None
    data = json.loads(report.status_json("replay", counts, [], [], report.pace_of(
        table.pace_figures(report.RATE_WINDOW, report.WORKERS_WINDOW))))
    return data


@pytest.mark.slow
@pytest.mark.skipif(not DUMP.exists(), reason="../shared/data/blkr_v11_1.sql.gz absent (the 2014 dump)")
def test_eta_is_within_15_percent_on_the_2014_run_replayed(batch):
    """1,701 obsids, each sleeping its 2014 pipetime / SCALE, on 16 workers, longest first. The job
    table keeps the real pipetimes, so the ETA has to learn the speed from the first finishes."""
    pipetimes = blkr_pipetimes(DUMP)
    assert len(pipetimes) == 1701 and sum(p for _, p in pipetimes) == 1286374
    load_blkr(batch)
    # A HIPE that costs next to no CPU (sh exec'ing Python without site): 16 workers launching
    # several obsids a second must not load the two cores, or the durations measure the machine.
    hipe = batch.root / "lean-hipe"
    hipe.write_text(f'#!/bin/sh\nfor script; do :; done\nexec {sys.executable} -S -I "$script"\n')
    hipe.chmod(0o755)
    batch.write_cfg(hipe={"command": str(hipe)})
    table = ", ".join(f"{o}: {p}" for o, p in pipetimes)
    batch.template("replay", f"import time\nP = {{{table}}}\ntime.sleep(P[obsid] / {SCALE!r})\n")
    assert batch.cli("replay", "new").returncode == 0
    workers = [batch.popen("replay", "run", stdout=subprocess.DEVNULL) for _ in range(REPLAY_WORKERS)]
    samples = {}
    table = batch.table("replay")
    try:
        for mark in (0.1, 0.5, 0.9):
            # Sampled in this process, as `status --json` computes it: a command a second would load
            # the two cores the workers share.
            samples[mark] = wait_for(lambda: sample_eta(table, mark), 600, f"{mark:.0%} done", interval=0.5)
        for w in workers:
            w.communicate(timeout=600)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert [w.returncode for w in workers] == [0] * REPLAY_WORKERS
    end = query(batch, "SELECT MAX(ended) FROM replay")[0][0]
    report_lines = []
    for data in samples.values():
        real = end - data["now"]
        report_lines.append(f"at {data['progress']:.1%}: ETA {data['eta_seconds']:.1f} s, real {real:.1f} s, "
                            f"{data['workers']} workers, {data['eta_basis']}")
    print("\n".join(report_lines))
    for data, line in zip(samples.values(), report_lines):
        assert abs(data["eta_seconds"] - (end - data["now"])) <= 0.15 * (end - data["now"]), line


@pytest.mark.slow
def test_killed_or_fenced_attempts_leave_no_result(batch):
    batch.write_cfg(hipe={"timeout": "2"}, run={"max_attempts": "1"})
    new_job(batch, "k", [1, 2], "batchResult('early', 1)\nif obsid == 1:\n    import time\n    time.sleep(60)\n"
                                "else:\n    raise ValueError('after recording')\n")
    env = batch.env(TRIVIAL_HIPE_EXIT_ZERO="1")      # HIPE says 0 though the script raised
    assert batch.cli("k", "run", env=env).returncode == 1
    assert [r["state"] for r in batch.table("k").rows()] == ["failed", "failed"]
    assert results_of(batch, "k") == []
    table = batch.table("k")                           # fenced: the claim was taken back before finish
    assert table.reset(lease=30) == (2, 0)
    claim = table.claim("h", "1/1", 1, lease=0.01)      # a lease that runs out at once
    wait_for(lambda: table.reclaim_stale(lease=30, max_attempts=3) == [claim.obsid], 30, "the claim to be taken back")
    assert table.finish(claim, Outcome(True, "", 0), 3, results={"late": 2}) is None
    assert results_of(batch, "k") == []


def test_a_claim_recorded_done_stays_done_with_its_results(batch):
    """Only done rows have results (what lets a success without results skip deleting any): a finish
    that committed though its worker never heard so (a lost COMMIT reply), followed by a put-back or
    a failure of the same claim, changes nothing; a repeat of the same finish still counts."""
    new_job(batch, "once", [1], "pass\n")
    table = batch.table("once")
    claim = table.claim("h", "1/1", 1)
    assert table.finish(claim, Outcome(True, "", 0), 3, results={"x": 1}) == "done"
    assert table.finish(claim, Outcome(True, "", 0), 3, results={"x": 1}) == "done"   # the repeat
    assert table.requeue(claim, "setup broken", outcome="setup") is False
    assert table.finish(claim, Outcome(False, "late failure", 1), 3) is None
    assert [(r["state"], r["attempts"], r["reason"]) for r in table.rows()] == [("done", 1, None)]
    assert results_of(batch, "once") == [(1, "x", "1", 1.0)]
    assert [(h["attempt"], h["outcome"]) for h in table.history()] == [(1, "done")]


@pytest.mark.parametrize("record", ["finish", "requeue"])
def test_an_attempt_is_recorded_with_its_history_or_not_at_all(batch, record):
    """The row and the history are written together (on MariaDB in one multi-statement): when the
    history cannot be written, the error is said and the row stays as it was."""
    new_job(batch, "whole", [1], "pass\n")
    table = batch.table("whole")
    claim = table.claim("h", "1/1", 1)
    query(batch, "DROP TABLE whole__attempts")
    with pytest.raises(BatchError, match="whole__attempts"):
        if record == "finish":
            table.finish(claim, Outcome(True, "", 0), 3)
        else:
            table.requeue(claim, "stopped")
    assert [(r["state"], r["token"]) for r in table.rows()] == [("running", claim.token)]


@pytest.mark.slow
def test_bad_operator_input_is_one_line_and_exit_2(batch):
    new_job(batch, "b", [1], "x = 1\n")
    for args, words in ((["report"], "FILE.html"), (["status", "--watch", "0"], "--watch 0"),
                        (["results", "--csv", batch.root / "no" / "such" / "dir.csv"], "cannot write"),
                        (["report", batch.root / "no" / "page.html"], "cannot write"),
                        (["history", "--since", "last tuesday"], "--since 'last tuesday'")):
        r = batch.cli("b", *args)
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1 and words in r.stderr, (args, r)
