"""Exactly-once under real cluster faults (issue 8), with a probe in the job script.

The probe (PROBE) records every run of every obsid in output/probe.log and holds a lock file per
obsid while it runs: a run that finds the lock held by a live process logs an overlap, the one
thing that must never happen. Faults: the database frozen (SIGSTOP of a private mariadbd),
workers frozen past their lease, workers with different lease settings, `wipe` during a run,
black-hole workers that cannot start HIPE, clients stuck inside a transaction, and exceptions on
the claim -> launch -> record path. Every process a test starts is killed when it ends
(`reaper`), a frozen server is thawed whatever happens.
"""
import contextlib
import os
import signal
import sys
import time

import pytest

from conftest import TRIVIAL_HIPE, BatchEnv
from mariadb_server import MariaDB, wait_for
from test_reliability import Reaper, Worker, alive, in_transaction, proc_state

OBSID = 1342191755
FAST_HIPE = f"{sys.executable} -S {TRIVIAL_HIPE}"

# Python 3 (the trivial HIPE runs job scripts with CPython). The first run of each obsid holds
# for FIRST seconds (None: until output/go exists), later runs for LATER seconds.
PROBE = r'''
import os, time
FIRST, LATER = @FIRST@, @LATER@
me = os.getpid()
log_path = os.path.join(outDir, "probe.log")
lock = os.path.join(outDir, "lock-%d" % obsid)

def note(event, other=0):
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, ("%d %d %s %.6f %d\n" % (obsid, me, event, time.time(), other)).encode())
    os.close(fd)

def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False

n = 1
while True:
    try:
        os.close(os.open(os.path.join(outDir, "run-%d.%d" % (obsid, n)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        break
    except FileExistsError:
        n += 1
note("start", n)
try:
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
except FileExistsError:
    try:
        holder = int(open(lock).read() or 0)
    except (OSError, ValueError):
        holder = 0
    if holder == 0 or alive(holder):
        note("overlap", holder)
    fd = os.open(lock, os.O_WRONLY | os.O_TRUNC)
os.write(fd, str(me).encode())
os.close(fd)
hold = FIRST if n == 1 else LATER
go, end = os.path.join(outDir, "go"), time.time() + (300 if hold is None else hold)
while time.time() < end and not (hold is None and os.path.exists(go)):
    time.sleep(0.02)
note("end", n)
try:
    if int(open(lock).read() or 0) == me:
        os.remove(lock)
except (OSError, ValueError):
    pass
'''


def probe(first=None, later=0.05):
    return PROBE.replace("@FIRST@", repr(first)).replace("@LATER@", repr(later))


def probe_events(env, job="j"):
    """(obsid, pid, event, time, arg) of every line of the probe's log."""
    path = env.root / "jobs" / job / "output" / "probe.log"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        obsid, pid, event, when, arg = line.split()
        events.append((int(obsid), int(pid), event, float(when), int(arg)))
    return events


def probe_figures(env, job="j"):
    """What the probe saw: runs started, overlaps, and runs with no end that still live."""
    events = probe_events(env, job)
    started = {(o, p) for o, p, e, _, _ in events if e == "start"}
    ended = {(o, p) for o, p, e, _, _ in events if e == "end"}
    return {"runs": len(started), "overlaps": [ev for ev in events if ev[2] == "overlap"],
            "orphans": sorted(p for o, p in started - ended if alive(p))}


def assert_exactly_once(env, obsids, job="j"):
    """Every obsid done, recorded done once, no two runs of one obsid at the same time, no HIPE
    left running; returns the probe's figures."""
    figures = probe_figures(env, job)
    assert not figures["overlaps"], f"an obsid ran twice at once: {figures['overlaps']}"
    assert not figures["orphans"], f"job scripts still running: {figures['orphans']}"
    table = env.table(job)
    try:
        rows = table.rows()
        history = table.history()
    finally:
        table.close()
    assert {r["obsid"]: r["state"] for r in rows} == dict.fromkeys(obsids, "done")
    done = sorted(h["obsid"] for h in history if h["outcome"] == "done")
    assert done == sorted(obsids), "an obsid was recorded done twice, or not at all"
    return figures


def new_job(env, obsids=(OBSID,), job="j"):
    r = env.cli(job, "new", env.obsid_file(obsids))
    assert r.returncode == 0, r.stderr


def go(env, job="j"):
    (env.root / "jobs" / job / "output" / "go").touch()


def wait_first_run(env, reaper, obsid=OBSID, job="j", timeout=60):
    """The pid of the job script of obsid's first run, once it holds its lock."""
    lock = env.root / "jobs" / job / "output" / f"lock-{obsid}"
    wait_for(lambda: lock.exists() and lock.read_text().strip(), timeout, f"obsid {obsid}'s first run")
    return reaper.watch(int(lock.read_text()))[0]


@pytest.fixture
def reaper():
    r = Reaper()
    yield r
    r.cleanup()


# ----------------------------------------------------------------------------- a server to freeze
@pytest.fixture(scope="module")
def freezable_server(tmp_path_factory):
    """A MariaDB of this module's own, to freeze (SIGSTOP) without stalling the session's server."""
    server = MariaDB(tmp_path_factory.mktemp("freezable-mariadb")).start()
    yield server
    thaw(server)
    server.cleanup()


def freeze(server):
    os.kill(server.proc.pid, signal.SIGSTOP)
    wait_for(lambda: proc_state(server.proc.pid) in ("T", "t"), 10, "mariadbd to stop")


def thaw(server):
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)


@contextlib.contextmanager
def frozen(server):
    freeze(server)
    try:
        yield
    finally:
        thaw(server)


@pytest.fixture
def freeze_env(freezable_server, tmp_path):
    thaw(freezable_server)
    if freezable_server.proc is None:
        freezable_server.start()
    name = f"f{os.getpid()}_{tmp_path.name}"[:60].replace("-", "_")
    env = BatchEnv(tmp_path / "root", "mysql", freezable_server, freezable_server.create_database(name))
    yield env
    thaw(freezable_server)
    with freezable_server.admin() as c:
        c.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")


def stop_past_lease(worker, seconds):
    """SIGSTOP a worker (whatever it is doing) and keep it stopped for `seconds`."""
    os.kill(worker.pid, signal.SIGSTOP)
    wait_for(lambda: proc_state(worker.pid) in ("T", "t"), 10, "the worker to stop")
    time.sleep(seconds)


def wait_unrenewed(env, obsid, seconds):
    """Wait until obsid's lease has gone unrenewed for `seconds` (by the row's heartbeat)."""
    def old_enough():
        table = env.table("j")
        try:
            row = table.row(obsid)
        finally:
            table.close()
        return row["state"] == "running" and time.time() - row["heartbeat"] > seconds
    wait_for(old_enough, 30, f"obsid {obsid}'s lease to go {seconds} s unrenewed", interval=0.1)


# ----------------------------------------------------------------------------- the probe itself
def test_the_probe_sees_two_runs_of_one_obsid_at_once(sqlite_batch, reaper):
    """The probe can fail: two runs of one obsid at the same time log an overlap; one after the
    other do not."""
    env = sqlite_batch
    out = env.root / "jobs" / "j" / "output"
    out.mkdir(parents=True)
    script = env.root / "probe.py"
    script.write_text(f"obsid = {OBSID}\noutDir = {str(out) + os.sep!r}\n" + probe(first=None, later=0.05))
    import subprocess
    first = reaper.popen(subprocess.Popen([sys.executable, str(script)]))
    wait_for((out / f"lock-{OBSID}").exists, 10, "the first run to take the lock")
    second = reaper.popen(subprocess.Popen([sys.executable, str(script)]))
    assert second.wait(10) == 0
    go(env)
    assert first.wait(10) == 0
    assert len(probe_figures(env)["overlaps"]) == 1
    third = reaper.popen(subprocess.Popen([sys.executable, str(script)]))
    assert third.wait(10) == 0
    figures = probe_figures(env)
    assert figures["runs"] == 3 and len(figures["overlaps"]) == 1 and not figures["orphans"]


# ----------------------------------------------------------------------------- a frozen database
@pytest.mark.slow
def test_stop_signal_acts_while_the_database_is_frozen(freeze_env, reaper):
    """mariadbd frozen (SIGSTOP) while HIPE runs: SIGTERM to the worker stops HIPE within
    seconds, not when the server thaws; the worker exits 143 within the stop's patience, and
    the obsid is finished by a later run once the server is back."""
    env = freeze_env
    env.write_cfg(run={"lease": "6", "db_patience": "600"})
    env.template("j", probe(first=None))
    new_job(env)
    w = Worker(env, reaper, "w")
    script = wait_first_run(env, reaper)
    with frozen(env.server):
        time.sleep(1.5)   # past a heartbeat: the worker's database thread is now stuck in the server
        stopped = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not alive(script), 5, "HIPE to be stopped while the database is frozen")
        assert w.wait(30) == 128 + signal.SIGTERM, w.err()
        took = time.monotonic() - stopped
    assert took < 20, took
    assert "Traceback" not in w.err()
    r = env.cli("j", "run", timeout=120)
    assert r.returncode == 0, r.stderr
    assert_exactly_once(env, [OBSID])


@pytest.mark.slow
def test_hipe_timeout_acts_while_the_database_is_frozen(freeze_env, reaper):
    """[hipe] timeout = 2.5 with mariadbd frozen right after HIPE started (a heartbeat due every
    1.2 s meets the frozen server): HIPE is killed after 2.5 s, before its guardian's fence
    (0.7 x lease = 4.2 s) and not when the server thaws."""
    env = freeze_env
    env.write_cfg(hipe={"timeout": "2.5"}, run={"lease": "6", "max_attempts": "1", "db_patience": "600"})
    env.template("j", probe(first=None))
    new_job(env)
    w = Worker(env, reaper, "w")
    script = wait_first_run(env, reaper)
    with frozen(env.server):
        started = time.monotonic()
        wait_for(lambda: not alive(script), 8, "HIPE to be killed by [hipe] timeout while the database is frozen")
        assert time.monotonic() - started < 6
    assert w.wait(60) == 1, w.err()
    [row] = env.table("j").rows()
    assert row["state"] == "failed" and row["reason"].startswith("timeout: HIPE ran over 2.5 s")


@pytest.mark.slow
def test_database_frozen_longer_than_the_lease(freeze_env, reaper):
    """mariadbd frozen for longer than the lease while HIPE runs: the worker cannot renew its
    lease, so its guardian kills HIPE at 0.7 x lease, before anyone may take the obsid back. Once
    the server thaws a new `run` (the reclaimer of the issue) and the first worker finish the job:
    no obsid ever ran twice at once, each is done once."""
    env = freeze_env
    obsids = [OBSID, OBSID + 1]
    env.write_cfg(run={"lease": "4", "db_patience": "600"})
    env.template("j", probe(first=None))
    new_job(env, obsids)
    a = Worker(env, reaper, "a")
    script = wait_first_run(env, reaper, obsid=OBSID)
    with frozen(env.server):
        frozen_at = time.monotonic()
        wait_for(lambda: not alive(script), 10, "the guardian to fence HIPE")
        fenced_after = time.monotonic() - frozen_at
        time.sleep(max(0.0, 5 - fenced_after))   # past the lease
    assert fenced_after < 4, "HIPE outlived its worker's lease"
    go(env)
    b = Worker(env, reaper, "b")
    assert b.wait(120) == 0, b.err()
    assert a.wait(120) == 0, a.err()
    assert_exactly_once(env, obsids)


# ----------------------------------------------------------------------------- frozen workers, leases
@pytest.mark.slow
def test_worker_frozen_past_its_lease_never_overlaps(batch, reaper):
    """A worker SIGSTOPped (Ctrl-Z, a paused VM) longer than its lease while its HIPE runs: its
    guardian kills HIPE at 0.7 x lease, so when another worker takes the obsid back and runs it,
    nothing of the first run is left. Thawed, the first worker records nothing for it."""
    env = batch
    env.write_cfg(run={"lease": "3"})
    env.template("j", probe(first=None))
    new_job(env)
    a = Worker(env, reaper, "a")
    script = wait_first_run(env, reaper)
    os.kill(a.pid, signal.SIGSTOP)
    wait_for(lambda: not alive(script), 10, "the guardian to fence HIPE of the frozen worker")
    b = Worker(env, reaper, "b")
    assert b.wait(60) == 0, b.err()
    os.kill(a.pid, signal.SIGCONT)
    assert a.wait(60) == 0, a.err()
    figures = assert_exactly_once(env, [OBSID])
    assert figures["runs"] == 2
    history = env.table("j").history(OBSID)
    assert [(h["outcome"], h["pid"]) for h in history] == [("lost", a.pid), ("done", b.pid)]


@pytest.mark.slow
def test_a_reclaimer_uses_the_owners_lease_not_its_own(batch, reaper, tmp_path):
    """Two batch.cfg with different leases (a host with an old file): the owner's lease (30 s) is
    the one that counts; `reset --stale` and a worker with lease 1 s leave its obsid alone."""
    env = batch
    env.write_cfg(run={"lease": "30"})
    short = env.root / "short.cfg"
    short.write_text(env.cfg_path.read_text().replace("lease = 30", "lease = 1"))
    short.chmod(0o600)
    env.template("j", probe(first=None))
    new_job(env, [OBSID, OBSID + 1])
    a = Worker(env, reaper, "a")
    wait_first_run(env, reaper, obsid=OBSID)
    wait_unrenewed(env, OBSID, 1.5)   # past the short lease, well within the owner's
    r = env.cli("j", "reset", "--stale", "--config", short)
    assert r.returncode == 0 and r.stdout.startswith("0 obsids"), r.stdout + r.stderr
    b = Worker(env, reaper, "b", HIPE_BATCH_CONFIG=short)
    wait_for(lambda: (env.root / "jobs" / "j" / "output" / f"run-{OBSID + 1}.1").exists(), 60, "b to run the other obsid")
    wait_unrenewed(env, OBSID, 1.5)
    assert not (env.root / "jobs" / "j" / "output" / f"run-{OBSID}.2").exists(), "the short lease reclaimed a live claim"
    go(env)
    assert a.wait(60) == 0, a.err()
    assert b.wait(60) == 0, b.err()
    assert_exactly_once(env, [OBSID, OBSID + 1])


# ----------------------------------------------------------------------------- wipe during a run
def test_wipe_refuses_while_obsids_run_under_live_leases(batch, reaper):
    """`wipe --yes` while a worker runs an obsid: refused (exit 2, nothing dropped); with --force it
    drops the job and says that the running HIPEs are orphaned of a table."""
    env = batch
    env.template("j", probe(first=None))
    new_job(env, [OBSID, OBSID + 1])
    a = Worker(env, reaper, "a")
    wait_first_run(env, reaper)
    r = env.cli("j", "wipe", "--yes")
    assert r.returncode == 2, r.stdout + r.stderr
    [line] = r.stderr.splitlines()
    assert "1 obsids are running under live leases" in line and "--force" in line
    assert env.table("j").exists()
    r = env.cli("j", "wipe", "--yes", "--force")
    assert r.returncode == 0, r.stderr
    assert "orphaned" in r.stdout + r.stderr
    assert not env.table("j").exists()
    go(env)
    a.wait(60)
