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
import errno
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exactly_once import FAST_HIPE, assert_exactly_once, frozen, go, probe, probe_events, probe_figures, wait_first_run
from mariadb_server import PASSWORD, USER
from support import LIBFAKETIME, OBSID, ROOT, Worker, in_transaction, new_job, proc_state, row_of, wait_for
from support import pid_alive as alive


def stop_past_lease(worker, seconds):
    """SIGSTOP a worker (whatever it is doing) and keep it stopped for `seconds`."""
    os.kill(worker.pid, signal.SIGSTOP)
    wait_for(lambda: proc_state(worker.pid) in ("T", "t"), 10, "the worker to stop")
    time.sleep(seconds)


def wait_unrenewed(env, obsid, seconds):
    """Wait until obsid's lease has gone unrenewed for `seconds` (by the row's heartbeat)."""
    def old_enough():
        row = row_of(env, obsid)
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
def worker_running_hipe(env, reaper, lease):
    """A worker (lease seconds, patient with the database) whose HIPE runs until go(env): (worker, HIPE's pid)."""
    env.write_cfg(run={"lease": str(lease), "db_patience": "600"})
    env.template("j", probe(first=None))
    new_job(env)
    w = Worker(env, reaper, "w")
    return w, wait_first_run(env, reaper)


@pytest.mark.slow
def test_stop_signal_acts_while_the_database_is_frozen(freeze_env, reaper):
    """mariadbd frozen (SIGSTOP) while HIPE runs: SIGTERM to the worker stops HIPE within
    seconds, not when the server thaws; the worker exits 143 within the stop's patience, and
    the obsid is finished by a later run once the server is back."""
    env = freeze_env
    w, script = worker_running_hipe(env, reaper, lease=6)
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
def test_a_stopped_worker_waiting_for_a_frozen_database_says_hipe_has_ended(freeze_env, reaper):
    """SIGTERM the moment mariadbd is frozen, lease 15 s: a renewal then blocks for 5 s, so the first
    one to fail does so while HIPE is being stopped or after, while the worker tries to put the obsid back.
    Its warning says HIPE is being stopped or has ended already, never that HIPE keeps running."""
    env = freeze_env
    w, script = worker_running_hipe(env, reaper, lease=15)
    with frozen(env.server):
        w.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not alive(script), 5, "HIPE to be stopped while the database is frozen")
        assert w.wait(60) == 128 + signal.SIGTERM, w.err()
    err = w.err()
    # A renewal already waiting on the frozen server may fail while HIPE is being stopped, or after.
    assert re.search(r"database unreachable; HIPE (has ended already|is being stopped \(SIGTERM\))", err), err
    assert "HIPE keeps running" not in err, err
    assert "stopped by SIGTERM: HIPE stopped; " in err and "the obsid stays claimed until its lease runs out" in err, err


@pytest.mark.slow
def test_hipe_compiling_its_first_template_while_the_database_is_frozen_can_be_stopped(freeze_env, reaper):
    """The first run of a template version is a probe: when HIPE has compiled it the worker says so in
    the database. HIPE held until mariadbd is frozen, then let go: that saying waits on the frozen
    server (lease 60 s: up to a call timeout of 20 s), yet SIGTERM to the worker stops HIPE within
    seconds. It once waited in the thread that watches HIPE."""
    env = freeze_env
    gate = env.root / "gate"
    held = env.root / "held-hipe"
    held.write_text(f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.05; done\nexec {sys.executable} "
                    f"{ROOT / 'tests' / 'bin' / 'trivial-hipe'} \"$@\"\n")
    held.chmod(0o755)
    env.write_cfg(hipe={"command": str(held)}, run={"lease": "60", "db_patience": "600"})
    env.template("j", probe(first=None))
    new_job(env)
    w = Worker(env, reaper, "w")
    wait_for(lambda: _running(str(held)), 60, "HIPE launched (held until the gate opens)")
    with frozen(env.server):
        gate.touch()
        script = wait_first_run(env, reaper)   # the template compiled: the verdict is due
        w.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not alive(script), 5, "HIPE to be stopped while its compiling is told to a frozen database")
        assert w.wait(180) == 128 + signal.SIGTERM, w.err()
    r = env.cli("j", "run", timeout=120)
    assert r.returncode == 0, r.stderr
    assert_exactly_once(env, [OBSID])


def _running(command: str) -> bool:
    """Whether a process runs the command (its first arguments name it): a held HIPE launched."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if command.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2]:
                return True
        except OSError:
            pass
    return False


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


@pytest.mark.slow
def test_late_success_of_a_claim_nobody_took_is_recorded(freeze_env, reaper):
    """HIPE succeeds while mariadbd is frozen, and the freeze outlasts the lease: nobody took the
    claim (its token is unchanged), so once the server thaws the success is recorded, not thrown
    away or counted lost."""
    env = freeze_env
    w, script = worker_running_hipe(env, reaper, lease=6)
    with frozen(env.server):
        go(env)
        wait_for(lambda: not alive(script), 10, "HIPE to succeed while the database is frozen")
        wait_for(lambda: "database trouble while recording the outcome" in w.err()
                 or "database unreachable" in w.err(), 30, "the worker to meet the frozen server")
        time.sleep(6.5)   # past the lease: the row's lease_expires is behind the database's clock now
    assert w.wait(60) == 0, w.err()
    assert_exactly_once(env, [OBSID])
    [row] = env.table("j").rows()
    assert (row["state"], row["attempts"]) == ("done", 1)


@pytest.mark.slow
def test_password_changed_mid_run_is_an_outage_not_bad_input(freeze_env, reaper):
    """The database password changed (and connections cut) while HIPE runs: the worker's reconnects
    are refused (1045); that is an outage to ride out, not `nothing changed, exit 2`. Once the
    password is back, the success is recorded."""
    env = freeze_env
    env.write_cfg(run={"lease": "30", "db_patience": "120"})
    env.template("j", probe(first=None))
    new_job(env)
    w = Worker(env, reaper, "w")
    wait_first_run(env, reaper)
    with env.server.admin() as c:
        cur = c.cursor()
        cur.execute("ALTER USER %s@'%%' IDENTIFIED BY 'another-password'", (USER,))
        try:
            cur.execute("SELECT id FROM information_schema.processlist WHERE user = %s", (USER,))
            for (conn_id,) in cur.fetchall():
                cur.execute(f"KILL CONNECTION {int(conn_id)}")
            go(env)
            wait_for(lambda: "database trouble while recording the outcome" in w.err(), 30,
                     "the worker to meet the cut connection")
            time.sleep(3)   # reconnects refused meanwhile (1045), each retried with backoff
            assert w.proc.poll() is None, w.err()
        finally:
            cur.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (USER, PASSWORD))
    assert w.wait(60) == 0, w.err()
    assert_exactly_once(env, [OBSID])


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
    # Thawed, a says what became of its attempt (fenced), which is not counted (test_late_outcomes.py).
    assert [(h["outcome"], h["pid"]) for h in history] == [("fenced", a.pid), ("done", b.pid)]
    assert env.table("j").row(OBSID)["attempts"] == 1


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
@pytest.mark.slow
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
    assert "1 obsid is running under live leases" in line and "--force" in line
    assert env.table("j").exists()
    if LIBFAKETIME and env.backend == "sqlite":
        # SQLite's clock is the reader's own: an hour ahead, every lease looks lapsed. Refused all the
        # same (before: the table dropped under the live worker).
        r = env.cli("j", "wipe", "--yes", env=env.env(LD_PRELOAD=LIBFAKETIME, FAKETIME="+1h"))
        assert r.returncode == 2 and "1 obsid is running" in r.stderr and "reset --stale" in r.stderr, r.stderr
        assert env.table("j").exists()
    r = env.cli("j", "wipe", "--yes", "--force")
    assert r.returncode == 0, r.stderr
    assert "orphaned" in r.stdout + r.stderr
    assert not env.table("j").exists()
    go(env)
    a.wait(60)


@pytest.mark.slow
def test_wipe_force_and_new_while_a_worker_runs_counts_nothing_of_the_old_job(batch, reaper):
    """`wipe --force` then `new` of the same job and obsids while a worker's HIPE runs: that old run
    is not counted in the new job (its claim is unknown there; the worker says so), and the new job
    has each obsid run and recorded done once, by claims made after it was created."""
    env = batch
    env.template("j", probe(first=None))
    new_job(env, [OBSID, OBSID + 1])
    a = Worker(env, reaper, "a")
    wait_first_run(env, reaper)
    assert env.cli("j", "wipe", "--yes", "--force").returncode == 0
    new_job(env, [OBSID, OBSID + 1])
    created = env.table("j").clock()
    go(env)
    assert a.wait(60) == 0, a.err()
    assert "outcome not recorded: the obsid is no longer this worker's" in a.err()
    history = env.table("j").history()
    assert sorted((h["obsid"], h["outcome"]) for h in history) == [(OBSID, "done"), (OBSID + 1, "done")], history
    assert all(h["started"] >= created for h in history), history
    assert [r["state"] for r in env.table("j").rows()] == ["done", "done"]
    assert not probe_figures(env)["overlaps"]


# ----------------------------------------------------------------------------- black holes
class ProcessLimit:
    """A cgroup (v1 pids controller) whose processes can start no more processes or threads: what a
    node at its process limit does (root ignores RLIMIT_NPROC)."""

    def __init__(self, group):
        self.group = group

    def freeze(self, pid):
        """Move a running process in, limited to the processes and threads it has now."""
        (self.group / "cgroup.procs").write_text(str(pid))
        (self.group / "pids.max").write_text((self.group / "pids.current").read_text())

    def enter(self):
        """preexec_fn: the child starts inside, unable to fork (the limit counts it alone)."""
        (self.group / "pids.max").write_text("1")
        (self.group / "cgroup.procs").write_text(str(os.getpid()))


@contextlib.contextmanager
def process_limit(name):
    group = Path("/sys/fs/cgroup/pids") / f"batch-test-{name}-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as e:
        pytest.skip(f"no pids cgroup to limit processes with ({e})")
    try:
        yield ProcessLimit(group)
    finally:
        (group / "pids.max").write_text("max")
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):   # gone meanwhile
                Path("/sys/fs/cgroup/pids/cgroup.procs").write_text(pid)
        wait_for(lambda: not (group / "cgroup.procs").read_text().split(), 30, "the limited processes to leave")
        group.rmdir()


def limit_descriptors(pid):
    """EMFILE from now on: the worker's file-descriptor limit lowered to what it holds already."""
    held = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    lowest_free = min(set(range(len(held) + 1)) - held)   # a new descriptor would take this number
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, lowest_free))
    return contextlib.nullcontext()


@contextlib.contextmanager
def limit_processes(pid):
    """EAGAIN from now on for fork and new threads: the worker in a pids cgroup at its count."""
    with process_limit("fork") as limit:
        limit.freeze(pid)
        yield


@pytest.mark.slow
@pytest.mark.parametrize("limit, error", [(limit_descriptors, "Too many open files"),
                                          (limit_processes, "Resource temporarily unavailable")],
                         ids=["descriptors", "processes"])
def test_worker_at_a_limit_stops_without_failing_obsids(batch, reaper, limit, error):
    """A worker that cannot start HIPE any more (no file descriptors left; the node at its process
    limit) finishes what it runs, puts the next obsid back uncounted and stops with one line, exit 2,
    no traceback; it does not fail the job's obsids one after the other. A healthy run then finishes the job."""
    env = batch
    obsids = [OBSID, OBSID + 1, OBSID + 2, OBSID + 3]
    env.template("j", probe(first=None))
    new_job(env, obsids)
    w = Worker(env, reaper, "w")
    wait_first_run(env, reaper)
    with limit(w.pid):
        go(env)
        assert w.wait(60) == 2, w.err()
    [line] = [x for x in w.err().splitlines() if x.startswith("BatchProcess.py: error: ")]
    assert error in line and "put back to pending and worker stopped" in line, line
    assert "Traceback" not in w.err()
    rows = env.table("j").rows()
    assert sorted(r["state"] for r in rows) == ["done", "pending", "pending", "pending"], rows
    assert all(r["attempts"] == 0 for r in rows if r["state"] == "pending")
    r = env.cli("j", "run", timeout=120)
    assert r.returncode == 0, r.stderr
    assert_exactly_once(env, obsids)


@pytest.mark.parametrize("workers", [[], ["-j", "2"]], ids=["run", "run-j2"])
def test_run_on_a_node_that_cannot_start_processes(batch, reaper, workers):
    """`run` (it forks its guardian) and `run -j 2` (it forks its workers) where no process can be
    started: one line that says so, exit 2, no traceback, no obsid claimed."""
    env = batch
    new_job(env, [OBSID, OBSID + 1])
    with process_limit("start") as limit:
        p = reaper.popen(env.popen("j", "run", *workers, preexec_fn=limit.enter))
        assert p.wait(60) == 2
        err = p.stderr.read()
    errors = [x for x in err.splitlines() if x.startswith("BatchProcess.py: error: ")]
    assert len(errors) == 1 and "Resource temporarily unavailable" in errors[0], err
    assert ("the guardian" if not workers else "worker of slot 1/2 and the 1 after it") in errors[0], err
    assert "Traceback" not in err
    assert [(r["state"], r["attempts"], r["token"]) for r in env.table("j").rows()] == [("pending", 0, None)] * 2


@pytest.mark.slow
def test_black_hole_worker_stops_while_others_succeed(batch, reaper, tmp_path):
    """A worker whose HIPE fails at once every time (a broken Java on its host) while another
    worker succeeds: after 5 quick failures in a row it stops, saying so (exit 2); the job goes on
    and every obsid ends done, none failed for good."""
    env = batch
    obsids = list(range(OBSID, OBSID + 30))
    # (max_attempts above the 5 failures: a retry is claimed at once, often by the same worker; HIPE's
    # exit status 1 looks like a script error, which is not retried unless retry_errors says so)
    env.write_cfg(hipe={"command": FAST_HIPE}, run={"max_attempts": "6", "retry_errors": "yes"})
    broken = tmp_path / "broken-hipe"
    broken.write_text("#!/bin/sh\necho 'Error: could not find libjava.so' >&2\nexit 1\n")
    broken.chmod(0o755)
    bad_cfg = env.root / "bad.cfg"
    bad_cfg.write_text(env.cfg_path.read_text().replace(f"command = {FAST_HIPE}", f"command = {broken}"))
    bad_cfg.chmod(0o600)
    env.template("j", probe(first=0.1, later=0.1))
    new_job(env, obsids)
    good = Worker(env, reaper, "good")
    wait_for(lambda: any(e[2] == "end" for e in probe_events(env)), 60, "the good worker's first success")
    bad = Worker(env, reaper, "bad", HIPE_BATCH_CONFIG=bad_cfg)
    assert bad.wait(60) == 2, bad.err()
    [line] = [x for x in bad.err().splitlines() if x.startswith("BatchProcess.py: error: ")]
    assert "last 5 attempts all failed" in line and "could not find libjava.so" in line, line
    assert good.wait(120) == 0, good.err()
    assert_exactly_once(env, obsids)
    assert sum(h["outcome"] == "failed" for h in env.table("j").history()) == 5


# ----------------------------------------------------------------------------- stuck transactions
# A worker stopped between marking its claim and COMMIT: it claims with the project's own code
# (and session settings), then freezes itself inside the transaction.
STUCK_CLAIM = r'''
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from batchUtility import config
from batchUtility.storage import open_table
cfg = config.load(sys.argv[2])
table = open_table(cfg.sql, "j", call_timeout=cfg.run.call_timeout)
def stuck(cur):
    obsid, *_ = table._pick_and_claim(cur, {"token": "f" * 32, "host": "frozen", "worker": "1/1", "pid": os.getpid(),
                                              "lease": 2, "pid_start": None, "machine": None})
    print(obsid, flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
table._transaction(stuck, "claiming and freezing")
'''


@pytest.mark.slow
def test_client_frozen_inside_a_transaction_stalls_nobody(mysql_batch, reaper):
    """A client frozen between its UPDATE and its COMMIT holds a row lock: the other workers claim
    past it (SKIP LOCKED) and finish everything else; the server aborts the frozen transaction
    after idle_transaction_timeout, so its row is free again and a later run finishes it."""
    env = mysql_batch
    obsids = [OBSID, OBSID + 1, OBSID + 2, OBSID + 3]
    env.write_cfg(hipe={"command": FAST_HIPE}, run={"lease": "6", "db_patience": "20"})
    env.template("j", probe(first=0.05))
    new_job(env, obsids)
    lib = ROOT / "lib"
    stuck = reaper.popen(subprocess.Popen([sys.executable, "-c", STUCK_CLAIM, str(lib), str(env.cfg_path)],
                                          stdout=subprocess.PIPE, text=True))
    held = int(stuck.stdout.readline())
    wait_for(lambda: proc_state(stuck.pid) == "T", 10, "the client to freeze inside its transaction")
    assert in_transaction(env)
    started = time.monotonic()
    r = env.cli("j", "run", timeout=60)
    # not 3 after db_patience (20 s), waiting for the row lock; 1 (job-level) while the held row is not done
    assert r.returncode in (0, 1), r.stderr
    assert time.monotonic() - started < 40
    states = {row["obsid"]: row["state"] for row in env.table("j").rows()}
    assert states == {**dict.fromkeys(obsids, "done"), held: states[held]}
    assert states[held] in ("pending", "done")   # done if the server aborted the frozen transaction meanwhile
    wait_for(lambda: not in_transaction(env), 15, "the server to abort the frozen transaction")
    r = env.cli("j", "run", timeout=60)
    assert r.returncode == 0, r.stderr
    assert_exactly_once(env, obsids)


def test_status_answers_while_an_sqlite_writer_is_frozen(sqlite_batch, reaper):
    """SQLite: a writer frozen inside its transaction holds the file's one write lock. `status`
    still answers at once (WAL: readers do not wait for writers)."""
    env = sqlite_batch
    new_job(env, [OBSID, OBSID + 1])
    stuck = reaper.popen(subprocess.Popen([sys.executable, "-c", STUCK_CLAIM, str(ROOT / "lib"),
                                           str(env.cfg_path)], stdout=subprocess.PIPE, text=True))
    stuck.stdout.readline()
    wait_for(lambda: proc_state(stuck.pid) == "T", 10, "the writer to freeze inside its transaction")
    assert in_transaction(env)
    started = time.monotonic()
    r = env.cli("j", "status", timeout=30)
    assert r.returncode == 0 and "0 of 2 processed" in r.stdout, r.stdout + r.stderr
    assert time.monotonic() - started < 5


# ----------------------------------------------------------------------------- exceptions on the path
def test_broken_pipe_on_stdout_loses_nothing(batch):
    """`run | head -1`: the reader goes away after one line; the worker goes on, every obsid is
    done, and no traceback is printed."""
    env = batch
    obsids = [OBSID, OBSID + 1, OBSID + 2]
    env.write_cfg(hipe={"command": FAST_HIPE})
    env.template("j", "pass\n")
    new_job(env, obsids)
    proc = env.popen("j", "run", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert {r["state"] for r in env.table("j").rows()} == {"done"}


@pytest.mark.parametrize("fault", ["log_folder_gone", "tmpdir_gone"])
def test_a_fault_of_ours_mid_run_puts_the_obsid_back(batch, reaper, tmp_path, fault):
    """The log folder replaced by a file, or TMPDIR removed, while the first obsid runs (a full disk
    fails the same calls with ENOSPC): the next obsid cannot be launched; it goes back to pending
    uncounted and the worker stops with one line (exit 2), no traceback; nothing else counted failed."""
    env = batch
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env.template("j", probe(first=None))
    new_job(env, [OBSID, OBSID + 1])
    w = Worker(env, reaper, "w", TMPDIR=tmpdir)
    first = wait_first_run(env, reaper, obsid=OBSID)
    if fault == "log_folder_gone":
        log = env.root / "jobs" / "j" / "log"
        log.rename(env.root / "jobs" / "j" / "log.old")
        log.write_text("not a folder\n")
    else:
        tmpdir.rename(tmp_path / "tmpdir.old")
    go(env)
    wait_for(lambda: not alive(first), 30, "the first run to end")
    assert w.wait(60) == 2, w.err()
    [line] = [x for x in w.err().splitlines() if x.startswith("BatchProcess.py: error: ")]
    assert "put back to pending and worker stopped" in line, line
    assert ("cannot create a temporary folder" if fault == "tmpdir_gone" else "cannot write") in line, line
    assert "Traceback" not in w.err()
    rows = {r["obsid"]: (r["state"], r["attempts"]) for r in env.table("j").rows()}
    assert rows[OBSID + 1] == ("pending", 0)
    # (with TMPDIR gone, the first run cannot write its end marker there: to anyone looking, a script
    # that stopped before its end, which is not retried unless retry_errors says so)
    assert rows[OBSID] == (("failed", 1) if fault == "tmpdir_gone" else ("done", 1))


def test_a_pool_cache_that_cannot_be_emptied_stops_the_worker(batch, tmp_path):
    """The first obsid's script leaves a file in its pool cache that nobody can remove (immutable):
    the next launch cannot give HIPE an empty cache, so that obsid goes back to pending uncounted and
    the worker stops with one line naming the folder and the file (exit 2); the first stays done."""
    env = batch
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    trial = tmpdir / "trial"
    trial.write_text("")
    if subprocess.run(["chattr", "+i", str(trial)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a file immutable here (chattr +i needs root and a file system that has it)")
    subprocess.run(["chattr", "-i", str(trial)], check=True)
    env.template("j", f"""import os, subprocess
if obsid == {OBSID}:
    cache = [line.split()[3] for line in open(os.environ['TRIVIAL_HIPE_CALLS']) if line.split()[0] == str(obsid)][-1]
    locked = os.path.join(cache, 'locked')
    open(locked, 'w').write('x')
    subprocess.check_call(['chattr', '+i', locked])
""")
    new_job(env, [OBSID, OBSID + 1])
    try:
        r = env.cli("j", "run", env=env.env(TMPDIR=tmpdir))
    finally:
        for locked in tmpdir.rglob("locked"):
            subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert r.returncode == 2, r.stderr
    [line] = [x for x in r.stderr.splitlines() if x.startswith("BatchProcess.py: error: ")]
    assert "cannot empty the pool cache folder in " in line and "/locked): Operation not permitted" in line, line
    assert f"obsid {OBSID + 1} put back to pending and worker stopped" in line, line
    assert "Traceback" not in r.stderr
    assert {row["obsid"]: (row["state"], row["attempts"]) for row in env.table("j").rows()} == {
        OBSID: ("done", 1), OBSID + 1: ("pending", 0)}


@pytest.fixture
def small_tmpfs():
    """mount(folder): a 256 KiB tmpfs mounted on folder (a disk to fill); unmounted at the end.
    Skips the test where mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
    mounted = []

    def mount(folder):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(folder)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {r.stderr.strip()}")
        mounted.append(folder)
        return folder
    yield mount
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder, leave=0):
    """Fill folder's file system up to its last block (ENOSPC), then free `leave` bytes; returns
    the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(4096))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("full", ["log", "log, the script failing", "tmpdir"])
def test_a_full_disk_puts_the_obsid_back_uncounted(batch, reaper, tmp_path, small_tmpfs, full):
    """A full disk (ENOSPC): log/'s fills up while the first obsid runs (whose script then succeeds,
    or fails), or TMPDIR's is so nearly full that a launch's files do not fit. The obsid whose HIPE
    ends on the full log disk, or cannot be launched, goes back to pending uncounted: its log may
    have lost lines unseen (a JVM ignores failed writes), and a failure may be the disk's doing.
    The worker stops with one line naming the full disk (exit 2, no traceback), a new `run` on the
    full disk refuses to start and claims nothing, and once space is freed the job finishes, each
    obsid recorded done once, never run twice at once. (With TMPDIR full while HIPE runs, the
    launch's own files go when it ends, and the next launch finds their room.)"""
    env = batch
    failing = f"\nif obsid == {OBSID} and n == 1:\n    raise RuntimeError('its first run fails')\n" if "failing" in full else ""
    env.template("j", probe(first=None) + failing)
    new_job(env, [OBSID, OBSID + 1])
    log, tmpdir = env.root / "jobs" / "j" / "log", tmp_path / "tmpdir"
    for folder in (log, tmpdir):
        folder.mkdir(parents=True, exist_ok=True)
    disk = small_tmpfs(log if full.startswith("log") else tmpdir)
    before = {OBSID: ("pending", 0), OBSID + 1: ("pending", 0)}
    if full.startswith("log"):
        w = Worker(env, reaper, "w", TMPDIR=tmpdir)
        wait_first_run(env, reaper, obsid=OBSID)
        filler = fill(disk)
        go(env)
    else:
        filler = fill(disk, leave=4096)   # room for run's check at its start, not for a launch's files
        w = Worker(env, reaper, "w", TMPDIR=tmpdir)
    assert w.wait(60) == 2, w.err()
    [line] = [x for x in w.err().splitlines() if x.startswith("BatchProcess.py: error: ")]
    assert "cannot write" in line and "No space left on device" in line and str(disk) in line, line
    assert f"obsid {OBSID} put back to pending and worker stopped" in line, line
    if full.startswith("log"):
        ended = "failed" if failing else "succeeded"
        assert f"when HIPE ended, so its log may be incomplete (it {ended})" in line, line
    assert "Traceback" not in w.err()
    assert {r["obsid"]: (r["state"], r["attempts"]) for r in env.table("j").rows()} == before

    fill(disk)
    r = env.cli("j", "run", env=env.env(TMPDIR=tmpdir))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert f"{disk} is not writable: No space left on device" in r.stderr, r.stderr
    assert {r["obsid"]: (r["state"], r["attempts"]) for r in env.table("j").rows()} == before
    filler.unlink()
    go(env)
    r = env.cli("j", "run", env=env.env(TMPDIR=tmpdir))
    assert r.returncode == 0, r.stderr
    figures = assert_exactly_once(env, [OBSID, OBSID + 1])
    assert figures["runs"] == (3 if full.startswith("log") else 2)   # the run on the full log disk is run again
    assert [h["outcome"] for h in env.table("j").history(OBSID)] == ["setup", "done"]
    assert env.table("j").row(OBSID)["attempts"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("script", ["writes nothing there", "fails to write its product"])
def test_a_full_output_disk_puts_the_obsid_back_uncounted(batch, tmp_path, small_tmpfs, script):
    """output/ (the script's outDir) on a disk of its own that fills while the first obsid runs:
    whether its script then succeeds (writing nothing there) or fails to write its product, the
    obsid goes back to pending uncounted, not failed for the disk's fault nor done with products
    that may be incomplete, and the worker stops with one line naming output/. A new `run` refuses
    while it is full; once space is freed the job finishes."""
    env = batch
    go, started = tmp_path / "go", tmp_path / "started"
    env.template("j", f"""import os, time
open({str(started)!r}, 'a').write('%d\\n' % obsid)
while not os.path.exists({str(go)!r}):
    time.sleep(0.02)
if {"fails" in script!r}:
    open(os.path.join(outDir, 'product-%d.fits' % obsid), 'w').write('x' * 100000)
""")
    new_job(env, [OBSID, OBSID + 1])
    output = env.root / "jobs" / "j" / "output"
    output.mkdir(parents=True, exist_ok=True)
    disk = small_tmpfs(output)
    proc = env.popen("j", "run", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: started.exists() and started.read_text() == f"{OBSID}\n", 60, "the first obsid to run")
    filler = fill(disk)
    go.touch()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    [line] = [x for x in err.splitlines() if x.startswith("BatchProcess.py: error: ")]
    ended = "failed" if "fails" in script else "succeeded"
    assert (f"cannot write {output}: No space left on device when HIPE ended, so its products may be incomplete "
            f"(it {ended}); obsid {OBSID} put back to pending and worker stopped") in line, line
    assert "Traceback" not in err
    pending = {OBSID: ("pending", 0), OBSID + 1: ("pending", 0)}
    assert {r["obsid"]: (r["state"], r["attempts"]) for r in env.table("j").rows()} == pending

    r = env.cli("j", "run")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert f"folder {output} is not writable: No space left on device" in r.stderr, r.stderr
    assert {r["obsid"]: (r["state"], r["attempts"]) for r in env.table("j").rows()} == pending
    filler.unlink()
    for leftover in output.glob("product-*"):
        leftover.unlink()
    r = env.cli("j", "run")
    assert r.returncode == 0, r.stderr
    assert {r["obsid"]: (r["state"], r["attempts"]) for r in env.table("j").rows()} == {
        OBSID: ("done", 1), OBSID + 1: ("done", 1)}
    assert [h["outcome"] for h in env.table("j").history(OBSID)] == ["setup", "done"]


@pytest.mark.slow
def test_a_full_disk_under_batch_sqlite_is_waited_for(sqlite_batch, reaper, small_tmpfs):
    """batch.sqlite on a small disk of its own that fills while HIPE runs (SQLITE_FULL, 'database or
    disk is full'): HIPE ends well, and recording the outcome fails for want of room. That is waited
    for like an outage, within db_patience: the worker stays, the obsid stays running, uncounted and
    not done; once space is freed, the success is recorded, the next obsid runs, each once.
    (Before: the worker stopped, the obsid stayed claimed, and a later run took it back counted and
    ran it again.)"""
    env = sqlite_batch
    folder = env.root / "db"
    folder.mkdir()
    small_tmpfs(folder)
    env.write_cfg(sql={"path": "db/batch.sqlite"}, run={"lease": "30", "db_patience": "600"})
    env.template("j", probe(first=None))
    new_job(env, [OBSID, OBSID + 1])
    w = Worker(env, reaper, "w")
    script = wait_first_run(env, reaper, obsid=OBSID)
    filler = fill(folder)
    go(env)
    wait_for(lambda: not alive(script), 10, "HIPE to succeed")
    wait_for(lambda: "disk is full" in w.err(), 30, "the worker to meet the full disk")
    time.sleep(2)   # retries meanwhile: the worker waits, as for a server away
    assert w.proc.poll() is None, w.err()
    filler.unlink()
    assert w.wait(60) == 0, w.err()
    assert "Traceback" not in w.err()
    figures = assert_exactly_once(env, [OBSID, OBSID + 1])
    assert figures["runs"] == 2
    assert {r["obsid"]: (r["state"], r["attempts"]) for r in env.table("j").rows()} == {
        OBSID: ("done", 1), OBSID + 1: ("done", 1)}
    assert [h["outcome"] for h in env.table("j").history(OBSID)] == ["done"]


def test_run_refuses_an_empty_or_comment_only_template(batch):
    """A template with nothing but blank lines and comments would count every obsid done with
    nothing done: `run` refuses it, exit 2, one line, nothing claimed."""
    env = batch
    new_job(env)
    for text in ("", "\n\n", "# TODO: write the job\n   # really\n"):
        env.template("j", text)
        r = env.cli("j", "run")
        assert r.returncode == 2 and "holds no statement" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert [row["state"] for row in env.table("j").rows()] == ["pending"]


# ----------------------------------------------------------------------------- smaller faults
def test_two_simultaneous_new_of_one_job_one_fails(batch, reaper):
    """Two `new` of one job at the same moment, with different obsids: one succeeds, the other
    fails (exit 2, the job exists) and leaves the winner's job as it made it."""
    env = batch
    for round_ in range(3):
        job = f"twin{round_}"
        files = [env.obsid_file([OBSID + 10 * side + i for i in range(3)], f"twin{round_}-{side}.txt") for side in (0, 1)]
        procs = [reaper.popen(env.popen(job, "new", f)) for f in files]
        results = [(p.wait(60), p.stdout.read(), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 2], results
        winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
        loser_err = results[1 - winner][2]
        assert "exists already" in loser_err and len(loser_err.splitlines()) == 1, loser_err
        rows = env.table(job).rows()
        assert sorted(r["obsid"] for r in rows) == [OBSID + 10 * winner + i for i in range(3)]


def test_planted_symlinks_in_log_are_moved_aside_not_followed(batch, tmp_path):
    """A dangling OBSID.stdout link does not make the worker create its target; a link to an
    existing file does not get HIPE's output written into that file. Both are moved aside."""
    env = batch
    env.write_cfg(hipe={"command": FAST_HIPE})
    env.template("j", "print('hello from obsid %d' % obsid)\n")
    new_job(env)
    log = env.root / "jobs" / "j" / "log"
    log.mkdir(parents=True, exist_ok=True)
    target, victim = tmp_path / "created-by-root", tmp_path / "victim"
    victim.write_text("")
    (log / f"{OBSID}.stdout").symlink_to(target)
    (log / f"{OBSID}.stderr").symlink_to(victim)
    r = env.cli("j", "run")
    assert r.returncode == 0, r.stderr
    assert not target.exists() and victim.read_text() == ""
    assert (log / f"{OBSID}.stdout").read_text() == f"hello from obsid {OBSID}\n"
    assert not (log / f"{OBSID}.stdout").is_symlink() and (log / f"{OBSID}.stdout.1").is_symlink()
    assert (log / f"{OBSID}.stderr.1").is_symlink()


def test_master_table_values_are_checked_like_file_lines(batch):
    """Master-table obsids 'abc' or '1342191756abc' (a VARCHAR column) are refused as a file's lines
    are, not turned into 0 or 1342191756: exit 2, one line naming the value, no job created."""
    env = batch
    create = "CREATE TABLE loose (obsid VARCHAR(20), pipetime INT)"
    insert = "INSERT INTO loose VALUES ('1342191755', 10), ('1342191756abc', 20), ('abc', 30)"
    if env.backend == "sqlite":
        import sqlite3
        db = sqlite3.connect(env.root / "batch.sqlite")
        db.executescript(f"{create}; {insert};")
        db.close()
    else:
        with env.server.admin(env.db) as c:
            c.cursor().execute(create)
            c.cursor().execute(insert)
    env.write_cfg(sql={"table": "loose"})
    r = env.cli("j", "new")
    assert r.returncode == 2, r.stdout + r.stderr
    [line] = r.stderr.splitlines()
    assert "master table 'loose'" in line and ("'1342191756abc'" in line or "'abc'" in line), line
    assert not env.table("j", create=True).exists()


def test_a_password_batch_cfg_would_cut_is_refused(mysql_batch):
    """pswd holding ' #' (an inline comment to an ini file) or ending in a space: one clear line,
    exit 2, the password not shown; never silently cut."""
    env = mysql_batch
    for password in ("pw #1", "pw;x ;y", "trailing "):
        env.write_cfg(raw=env.cfg_path.read_text().split("[sql]\n", 1)[0] + "[sql]\n"
                      + "".join(f"{k} = {v}\n" for k, v in env.sql_section().items() if k != "pswd")
                      + f"pswd = {password}\n")
        r = env.cli("j", "status")
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert "[sql] pswd" in r.stderr and "~/.my.cnf" in r.stderr and password.strip() not in r.stderr


def test_sqlite_job_names_differing_only_in_case_are_refused(sqlite_batch):
    """SQLite's table names ignore case: `HIFI wipe --yes` must not drop the job `hifi`."""
    env = sqlite_batch
    new_job(env, job="hifi")
    r = env.cli("HIFI", "wipe", "--yes")
    assert r.returncode == 2 and "differs only in case" in r.stderr and "'hifi'" in r.stderr, r.stderr
    r = env.cli("HIFI", "new", env.obsid_file([OBSID + 1], "more.txt"))
    assert r.returncode == 2 and "differs only in case" in r.stderr, r.stderr
    assert [row["obsid"] for row in env.table("hifi").rows()] == [OBSID]


def test_sqlite_file_replaced_mid_run_stops_the_worker(sqlite_batch, reaper):
    """The SQLite file replaced under a running worker (a copy moved over it): the worker notices
    at its next transaction and stops with one line, instead of writing into the old file."""
    env = sqlite_batch
    env.template("j", probe(first=None))
    new_job(env, [OBSID, OBSID + 1])
    w = Worker(env, reaper, "w")
    wait_first_run(env, reaper)
    path = env.root / "batch.sqlite"
    copy = env.root / "copy.sqlite"
    import shutil
    shutil.copyfile(path, copy)
    os.replace(copy, path)
    go(env)
    assert w.wait(60) == 1, w.err()
    [line] = [x for x in w.err().splitlines() if x.startswith("BatchProcess.py: error: ")]
    assert "was deleted or replaced while in use" in line, line
    assert "Traceback" not in w.err()


# ----------------------------------------------------------------------------- provenance
@pytest.mark.slow
def test_each_attempt_records_the_template_version(batch, reaper):
    """Each attempt records its template's content hash; `status --obsid` shows it; a template
    changed mid-run is logged once, and the attempts after it carry the new version. A template
    emptied mid-run (rewritten in place) is never counted a success: the obsid goes back."""
    import hashlib
    env = batch
    obsids = [OBSID, OBSID + 1, OBSID + 2]
    first_text = probe(first=None)
    env.template("j", first_text)
    new_job(env, obsids)
    w = Worker(env, reaper, "w")
    wait_first_run(env, reaper)
    second_text = probe(first=0.05) + "# version 2\n"
    env.template("j", second_text)
    go(env)
    assert w.wait(60) == 0, w.err()
    assert w.err().count("changed while this worker ran") == 1, w.err()
    version = {text: hashlib.sha256(text.encode()).hexdigest()[:12] for text in (first_text, second_text)}
    history = {h["obsid"]: h["template"] for h in env.table("j").history()}
    assert history == {OBSID: version[first_text], OBSID + 1: version[second_text], OBSID + 2: version[second_text]}
    shown = env.cli("j", "status", "--obsid", OBSID).stdout
    assert f"[template {version[first_text]}]" in shown, shown

    env.cli("j", "reset", "--yes")
    for old in (env.root / "jobs" / "j" / "output").glob("*"):
        old.unlink()   # the probe starts counting runs again: the first one holds
    env.template("j", probe(first=None))
    w = Worker(env, reaper, "w2")
    wait_first_run(env, reaper, obsid=OBSID)
    env.template("j", "# being rewritten\n")
    go(env)
    assert w.wait(60) == 2, w.err()
    assert "holds no statement now; obsid" in w.err()
    rows = {r["obsid"]: (r["state"], r["attempts"]) for r in env.table("j").rows()}
    assert sorted(rows.values()) == [("done", 1), ("pending", 0), ("pending", 0)]


@pytest.mark.slow
def test_a_job_table_of_an_older_version_gets_the_new_columns(batch, reaper):
    """A job created before lease_expires and template existed: the first command adds them
    (idempotently: two workers starting at once both try), and the job runs to its end."""
    env = batch
    env.write_cfg(hipe={"command": FAST_HIPE})
    env.template("j", "pass\n")
    new_job(env, [OBSID, OBSID + 1])
    drops = ["ALTER TABLE j DROP COLUMN lease_expires", "ALTER TABLE j DROP COLUMN template",
             "ALTER TABLE j__attempts DROP COLUMN template"]
    if env.backend == "sqlite":
        import sqlite3
        db = sqlite3.connect(env.root / "batch.sqlite")
        for statement in drops:
            db.execute(statement)
        db.commit()
        db.close()
    else:
        with env.server.admin(env.db) as c:
            for statement in drops:
                c.cursor().execute(statement)
    workers = [reaper.popen(env.popen("j", "run")) for _ in range(2)]
    for w in workers:
        _out, err = w.communicate(timeout=60)
        assert w.returncode == 0, err
    table = env.table("j")
    assert {"lease_expires", "template"} <= set(table.rows()[0])
    assert {"template"} <= set(table.history()[0])
    assert {r["state"] for r in table.rows()} == {"done"}
