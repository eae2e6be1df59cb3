"""Files the tool writes or reads in folders others may write too (issue 18, items 5 and 6): nothing is
written or read through a link planted there, no FIFO blocks a worker, and a template written in place
the slow way never runs half.

One way opens them all (workdir.open_to_write, workdir.open_to_read); these tests plant a link, a
dangling link or a FIFO where `run -j` keeps its slot locks, where a launch writes its log, in place
of the template, and where `report` writes its page; and rewrite the template in place while a run
goes on. The hostfile of the Slurm launcher and the functions themselves: unit/test_shared_files.py."""
import hashlib
import os
import signal
import subprocess
import sys
import threading

import pytest

from batchUtility.slot import host_name
from support import OBSID, Worker, new_job, wait_for

OK_TEMPLATE = "print('obsid %d' % obsid)\n"


def job_dir(env, job="j"):
    return env.root / "jobs" / job


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("BatchProcess.py: error: ")]


def states(env, job="j"):
    return {r["obsid"]: (r["state"], r["attempts"]) for r in env.table(job).rows()}


# ----------------------------------------------------------------------------- slot locks
@pytest.mark.slow
def test_links_and_a_fifo_planted_at_slot_locks_are_replaced_never_followed(batch, tmp_path):
    """`run -j 3` with jobs/j/.slots/HOST.1.lock a link to a file outside the job, HOST.2.lock a dangling
    link and HOST.3.lock a FIFO: the file outside is left as it was, nothing is created where the
    dangling link points, nothing blocks, and the run works (each replaced by a lock file of its own)."""
    env = batch
    new_job(env, list(range(OBSID, OBSID + 6)), template=OK_TEMPLATE)
    slots = job_dir(env) / ".slots"
    slots.mkdir(parents=True)
    host = host_name(os.environ)
    victim, nowhere = tmp_path / "victim.txt", tmp_path / "created-by-root"
    victim.write_text("a file of someone's\n")
    os.utime(victim, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = victim.stat()
    (slots / f"{host}.1.lock").symlink_to(victim)
    (slots / f"{host}.2.lock").symlink_to(nowhere)
    os.mkfifo(slots / f"{host}.3.lock")
    r = env.cli("j", "run", "-j", "3", timeout=120)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "a file of someone's\n"
    after = victim.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert not os.path.lexists(nowhere)
    for rank in (1, 2, 3):
        lock = slots / f"{host}.{rank}.lock"
        assert lock.is_file() and not lock.is_symlink(), lock
    assert env.table("j").counts()["done"] == 6


@pytest.mark.slow
def test_a_link_in_place_of_the_slots_folder_is_replaced_never_followed(batch, tmp_path):
    """jobs/j/.slots a link to a folder elsewhere: `run -j 2` replaces it by a folder of its own,
    creates nothing in the folder elsewhere, and works."""
    env = batch
    new_job(env, template=OK_TEMPLATE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    slots = job_dir(env) / ".slots"
    slots.symlink_to(elsewhere)
    r = env.cli("j", "run", "-j", "2", timeout=60)
    assert r.returncode == 0, r.stderr
    assert list(elsewhere.iterdir()) == []
    assert slots.is_dir() and not slots.is_symlink()
    assert states(env) == {OBSID: ("done", 1)}


# ----------------------------------------------------------------------------- logs
def stopped_with_one_line(env, reaper):
    """A worker run to its end, which must come within a minute (not blocked on a FIFO) with exit 2
    and one error line: (the worker, that line)."""
    w = Worker(env, reaper, "w")
    try:
        assert w.wait(60) == 2, w.err()
    except subprocess.TimeoutExpired:
        pytest.fail("the worker blocked on the FIFO")
    [line] = error_lines(w.err())
    return w, line


@pytest.mark.slow
def test_a_fifo_planted_at_a_log_file_is_refused_without_blocking(batch, reaper):
    """log/OBSID.stdout a FIFO nobody reads: the worker used to block in open() for good (no timeout,
    SIGTERM ignored, its lease renewed forever). Now: one line naming the file, the obsid back to
    pending uncounted, exit 2, within seconds; the FIFO left as it is."""
    env = batch
    new_job(env, template=OK_TEMPLATE)
    log = job_dir(env) / "log"
    log.mkdir(parents=True, exist_ok=True)
    fifo = log / f"{OBSID}.stdout"
    os.mkfifo(fifo)
    w, line = stopped_with_one_line(env, reaper)
    assert f"cannot write {fifo}: a FIFO" in line and f"obsid {OBSID} put back to pending" in line, line
    assert "Traceback" not in w.err()
    assert states(env) == {OBSID: ("pending", 0)}
    assert [h["outcome"] for h in env.table("j").history(OBSID)] == ["setup"]
    assert fifo.is_fifo()


# ----------------------------------------------------------------------------- the template
@pytest.mark.slow
def test_a_fifo_in_place_of_the_template_is_refused_without_blocking(batch, reaper):
    """The template replaced by a FIFO while a run goes on (the first obsid's script does it): the next
    claim's read does not block; that obsid goes back to pending uncounted, one line naming the
    template, exit 2. A new `run` refuses at once (one line, exit 2), claiming nothing; the FIFO is
    left as it is."""
    env = batch
    template = job_dir(env) / "j.py"
    new_job(env, [OBSID, OBSID + 1, OBSID + 2], template=f"""import os, stat
if not stat.S_ISFIFO(os.lstat({str(template)!r}).st_mode):
    os.unlink({str(template)!r})
    os.mkfifo({str(template)!r})
""")
    _, line = stopped_with_one_line(env, reaper)
    assert f"cannot read template {template}: a FIFO" in line, line
    after = states(env)
    assert sorted(after.values()) == [("done", 1), ("pending", 0), ("pending", 0)], after
    assert any(f"obsid {o} put back to pending" in line for o, (state, _) in after.items() if state == "pending"), line
    assert template.is_fifo()
    r = env.cli("j", "run", timeout=60)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert f"template {template} cannot be read: a FIFO" in r.stderr, r.stderr
    assert states(env) == after


SLOW_WRITER = r"""
import os, sys, time
path, half, rest, calls = sys.argv[1:5]
rewrites, pause = int(sys.argv[5]), float(sys.argv[6])
while not os.path.exists(calls) or len(open(calls).read().splitlines()) < 2:
    time.sleep(0.02)
for _ in range(rewrites):
    with open(path, "r+") as f:           # in place: the same inode, as cp over NFS or an editor does
        f.truncate(0)
        f.write(open(half).read())
        f.flush()
        time.sleep(pause)                 # half written, for a while
        f.write(open(rest).read())
    time.sleep(0.3)
print("done", flush=True)
"""


@pytest.mark.slow
def test_a_template_rewritten_in_place_the_slow_way_never_runs_half(batch, tmp_path, reaper):
    """A helper process rewrites the template in place three times while `run -j 2` goes on over 40
    obsids: truncated, its first half written, the rest a second later. The template's last line writes
    the obsid's product: every obsid done has its product, every attempt recorded ran the whole
    template (its hash), and each worker that waited said so in one line. (Before: 12-14 of 40 done
    without their product.)"""
    env = batch
    pad = "".join(f"step_{i} = {i}\n" for i in range(400))
    whole = pad + "open(outDir + 'product-%d' % obsid, 'w').write('made')\n"
    half_text = pad[:pad.index("step_200 = ")]
    half, rest = tmp_path / "half", tmp_path / "rest"
    half.write_text(half_text)
    rest.write_text(whole[len(half_text):])
    obsids = list(range(OBSID, OBSID + 40))
    template = job_dir(env) / "j.py"
    new_job(env, obsids, template=whole)
    writer = reaper.popen(subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(template), str(half), str(rest), str(env.calls), "3", "1.0"],
        stdout=subprocess.PIPE, text=True))
    r = env.cli("j", "run", "-j", "2", timeout=300)
    assert writer.wait(60) == 0 and writer.stdout.read() == "done\n"
    assert template.read_text() == whole
    output = job_dir(env) / "output"
    done = [o for o, (state, _) in states(env).items() if state == "done"]
    assert [o for o in done if not (output / f"product-{o}").exists()] == [], "done without their product"
    whole_hash = hashlib.sha256(whole.encode()).hexdigest()[:12]
    ran = {h["template"] for h in env.table("j").history()}
    assert ran == {whole_hash}, (ran, whole_hash)
    assert r.returncode == 0 and sorted(done) == obsids, r.stderr
    waited = [line for line in r.stderr.splitlines() if "is being written" in line]
    assert 1 <= len(waited) <= 2 * 3, r.stderr


@pytest.mark.slow
def test_a_stop_while_the_template_is_being_written_puts_the_obsid_back(batch, reaper):
    """A template that keeps changing (touched every 0.2 s) keeps a worker waiting; SIGTERM then stops it
    within seconds, its obsid back to pending uncounted (`stopped`), exit 143."""
    env = batch
    template = job_dir(env) / "j.py"
    new_job(env, template=OK_TEMPLATE)
    stop = threading.Event()

    def keep_touching():
        while not stop.is_set():
            os.utime(template)
            stop.wait(0.2)
    toucher = threading.Thread(target=keep_touching, daemon=True)
    toucher.start()
    try:
        w = Worker(env, reaper, "w")
        wait_for(lambda: "is being written" in w.err(), 60, "the worker to wait for the template")
        os.kill(w.pid, signal.SIGTERM)
        assert w.wait(20) == 128 + signal.SIGTERM, w.err()
    finally:
        stop.set()
        toucher.join()
    assert states(env) == {OBSID: ("pending", 0)}
    assert [h["outcome"] for h in env.table("j").history(OBSID)] == ["stopped"]
    assert env.calls.exists() is False   # HIPE never started
    assert len([line for line in w.err().splitlines() if "is being written" in line]) == 1, w.err()


# ----------------------------------------------------------------------------- the report
@pytest.mark.parametrize("planted", ["link", "dangling link", "fifo"])
def test_a_link_or_fifo_at_the_reports_file_is_refused(batch, tmp_path, planted):
    """`report FILE.html` (and `--svg FILE.svg`, and `results --csv FILE`) where FILE is a link to a
    file, a dangling link or a FIFO: refused with one line naming the file (exit 2), never blocking;
    the target untouched."""
    env = batch
    new_job(env, template=OK_TEMPLATE)
    victim, nowhere = tmp_path / "victim.html", tmp_path / "nowhere.html"
    victim.write_text("someone's page\n")
    for command, option, name in (("report", [], "page.html"), ("report", ["--svg"], "timeline.svg"),
                                  ("results", ["--csv"], "results.csv")):
        path = tmp_path / name
        if planted == "link":
            path.symlink_to(victim)
        elif planted == "dangling link":
            path.symlink_to(nowhere)
        else:
            os.mkfifo(path)
        r = env.cli("j", command, *option, path, timeout=60)
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r
        kind = "a FIFO" if planted == "fifo" else "a symbolic link"
        assert f"cannot write {path}: {kind}" in r.stderr, r.stderr
        assert victim.read_text() == "someone's page\n" and not os.path.lexists(nowhere)
        assert path.is_fifo() if planted == "fifo" else path.is_symlink()
    r = env.cli("j", "report", tmp_path / "fine.html", timeout=60)   # a plain name still works
    assert r.returncode == 0, r.stderr
    assert "<svg" in (tmp_path / "fine.html").read_text(), "the page has its timeline"
