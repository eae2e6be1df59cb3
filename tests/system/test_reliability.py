"""Reliability under faults, with real processes and real databases (issue 4).

Leases and reclaiming, fencing by claim tokens, the crash-loop cap, retries of transient database
errors, database outages, HIPE killed or hanging, workers killed, stopped or terminated. Every
test waits by polling a condition with a deadline (never a fixed sleep), and the `reaper`
fixture SIGKILLs whatever a test started, even when it fails half-way.
"""
import os
import re
import signal
import socket
import sys
import time

import MySQLdb
import pytest

from fault_soak import soak
from mariadb_server import PASSWORD, MariaDB
from support import OBSID, TRIVIAL_HIPE, BatchEnv, Worker, in_transaction, new_job, pid_alive, proc_state, wait_for

# ----------------------------------------------------------------------------- job templates
# Python 3 (the trivial HIPE runs job scripts with CPython). Attempt n of an obsid creates
# output/attempt-OBSID.n; an attempt that hangs writes output/pids-OBSID.n (its pid, and its
# grandchild's) and waits for output/go; when it gets there it creates output/finished-OBSID.n.
HANG_TEMPLATE = r'''
import os, signal, subprocess, sys, time
MODE, CHILD, IGNORE_TERM = @MODE@, @CHILD@, @IGNORE_TERM@
n = 1
while True:
    try:
        os.close(os.open(os.path.join(outDir, "attempt-%d.%d" % (obsid, n)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        break
    except FileExistsError:
        n += 1
if MODE == "always" or (MODE == "first" and n == 1):
    if IGNORE_TERM:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids = [os.getpid()]
    if CHILD:  # a grandchild of HIPE that would hang for ten minutes, deaf to SIGTERM
        pids.append(subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                      "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]).pid)
    tmp = os.path.join(outDir, ".pids-%d.%d" % (obsid, n))
    with open(tmp, "w") as f:
        f.write(" ".join(map(str, pids)))
    os.rename(tmp, os.path.join(outDir, "pids-%d.%d" % (obsid, n)))
    go, end = os.path.join(outDir, "go"), time.time() + 300
    while not os.path.exists(go) and time.time() < end:
        time.sleep(0.05)
open(os.path.join(outDir, "finished-%d.%d" % (obsid, n)), "w").close()
'''


def hang_template(mode="first", child=False, ignore_term=False):
    return (HANG_TEMPLATE.replace("@MODE@", repr(mode)).replace("@CHILD@", repr(child))
            .replace("@IGNORE_TERM@", repr(ignore_term)))


def out_dir(env, job="j"):
    return env.root / "jobs" / job / "output"


def wait_pids(env, reaper, obsid=OBSID, attempt=1, job="j", timeout=60):
    """The pids an attempt's job script wrote (script, grandchild), once it is hanging."""
    path = out_dir(env, job) / f"pids-{obsid}.{attempt}"
    wait_for(path.exists, timeout, f"{path.name} (attempt {attempt} of obsid {obsid} started)")
    return reaper.watch(*map(int, path.read_text().split()))


def hipe_pids(env, obsid=OBSID):
    """The trivial HIPE's pid of each launch for obsid, in launch order."""
    if not env.calls.exists():
        return []
    return [int(line.split()[1]) for line in env.calls.read_text().splitlines() if int(line.split()[0]) == obsid]


def start_hanging(env, reaper, name, **run):
    """[run] settings `run`, one obsid whose script hangs with a grandchild, and one worker `name`
    running it: (the worker, the script's and grandchild's pids, HIPE's pid), once it hangs."""
    if run:
        env.write_cfg(run=run)
    env.template("j", hang_template("first", child=True))
    new_job(env)
    worker = Worker(env, reaper, name)
    script_pids = wait_pids(env, reaper)
    return worker, script_pids, reaper.watch(*hipe_pids(env))[0]


def wait_dead(pids, timeout, what):
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout, what)


def state_of(env, job="j"):
    """The job table's rows and its history: what a late or fenced write must not change."""
    table = env.table(job)
    try:
        return table.rows(), sorted(table.history(), key=lambda h: (h["obsid"], h["started"] or 0))
    finally:
        table.close()


def stop_between_transactions(env, proc, timeout=30):
    """SIGSTOP a worker at a moment it holds no transaction open (a stopped worker holding a row
    lock would stall every other worker, which is not the fault under test here)."""
    deadline = time.monotonic() + timeout
    while True:
        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(lambda: proc_state(proc.pid) in ("T", "t", None), 10, "the worker to stop")
        if not in_transaction(env):
            return
        os.kill(proc.pid, signal.SIGCONT)
        assert time.monotonic() < deadline, "could not stop the worker between two transactions"
        wait_for(lambda: not in_transaction(env), 10, "the worker's transaction to end")


# ----------------------------------------------------------------------------- the soak
@pytest.mark.slow
def test_kill_soak(batch, capsys):
    """16 workers, 2,000 obsids, a third of the workers SIGKILLed at random moments; a new run
    finishes the job: every obsid done once, none lost, none run twice at once, and nothing
    recorded by a worker after it lost its claim (fault_soak.check lists every invariant).
    SQLite, the one-machine backend, gets half as many obsids to keep the suite's time down;
    `python3 tests/fault_soak.py --backend sqlite` runs it at full size."""
    figures = soak(batch, workers=16, obsids=2000 if batch.backend == "mysql" else 1000, lease=2.5, timeout=400)
    with capsys.disabled():
        print(f"\n[{batch.backend}] " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    assert figures["lost"] == figures["duplicates"] == figures["overlaps"] == 0
    assert figures["killed"] == 5


# ----------------------------------------------------------------------------- workers killed
@pytest.mark.slow
def test_killed_worker_takes_hipe_down_and_loses_its_obsid(batch, reaper):
    """SIGKILL to a worker: its HIPE's whole process group dies with it (no orphan keeps running
    while the obsid runs again elsewhere); `reset --stale` takes the obsid back (at once: the worker
    was of this host and its process is gone),
    counting the attempt; a new run finishes it."""
    a, script_pids, hipe_pid = start_hanging(batch, reaper, "a", lease="2")
    a.proc.send_signal(signal.SIGKILL)
    assert a.wait(30) == -signal.SIGKILL
    wait_dead([hipe_pid, *script_pids], 20, "HIPE, its script and their grandchild to die with their worker")

    def stale_taken():
        r = batch.cli("j", "reset", "--stale")
        assert r.returncode == 0, r.stderr
        return r.stdout.startswith("1 obsid of lost workers taken back")
    wait_for(stale_taken, 60, "reset --stale to take the obsid back", interval=0.2)
    [row] = batch.table("j").rows()
    assert (row["state"], row["attempts"], row["token"]) == ("pending", 1, None)
    [lost] = batch.table("j").history(OBSID)
    assert (lost["outcome"], lost["attempt"], lost["pid"]) == ("lost", 1, a.pid)
    assert lost["reason"] == f"worker lost: its process {a.pid} on {socket.gethostname()} is gone"   # this host: at once
    shown = batch.cli("j", "status", "--obsid", OBSID).stdout
    assert f"obsid {OBSID}: pending, 1 attempt counted: worker lost" in shown
    assert "attempt 1  lost" in shown and f"pid {a.pid}" in shown

    b = Worker(batch, reaper, "b")
    assert b.wait(60) == 0, b.err()
    [row] = batch.table("j").rows()
    assert (row["state"], row["attempts"], row["pid"]) == ("done", 2, b.pid)
    assert [(h["attempt"], h["outcome"]) for h in batch.table("j").history(OBSID)] == [(1, "lost"), (2, "done")]
    assert len(hipe_pids(batch)) == 2


@pytest.mark.slow
def test_crash_loop_is_capped(batch, reaper):
    """An obsid whose workers die max_attempts times is failed, with the reason, not retried forever."""
    batch.write_cfg(run={"lease": "2", "max_attempts": "2"})
    batch.template("j", hang_template("always"))
    new_job(batch)
    for attempt in (1, 2):   # the second worker sees the first one dead (same host: its process is gone)
        w = Worker(batch, reaper, f"w{attempt}")
        wait_pids(batch, reaper, attempt=attempt)
        w.proc.send_signal(signal.SIGKILL)
        w.wait(30)
        wait_dead(hipe_pids(batch)[-1:], 20, "HIPE to die with its worker")
    wait_for(lambda: batch.cli("j", "reset", "--stale").stdout.startswith("1 obsid "), 60,
             "the second lost claim to be taken back", interval=0.2)
    [row] = batch.table("j").rows()
    assert (row["state"], row["attempts"]) == ("failed", 2)
    assert re.fullmatch(r"worker lost: its process \d+ on \S+ is gone", row["reason"]), row["reason"]
    r = batch.cli("j", "run", timeout=60)
    assert r.returncode == 1 and len(hipe_pids(batch)) == 2, "a failed obsid was launched again"   # 1: job has a failure
    status = batch.cli("j", "status").stdout
    assert "0 of 1 processed. (0.0 %, 0 remaining)" in status
    assert f"{OBSID}  after 2 attempts: worker lost: its process " in status
    assert [h["outcome"] for h in batch.table("j").history(OBSID)] == ["lost", "lost"]


# ----------------------------------------------------------------------------- fencing
@pytest.mark.parametrize("late", ["finishes_while_stopped", "fenced_while_stopped"])
@pytest.mark.slow
def test_worker_that_lost_its_claim_cannot_record_over_the_new_one(batch, reaper, late):
    """A worker frozen (SIGSTOP) past its lease loses its obsid, which another worker reclaims and
    finishes. Its HIPE either finished while it was frozen, or was killed by its guardian at
    0.7 x lease, before anyone could take the obsid back: the obsid never runs twice at once.
    Thawed, the first worker's late outcome is refused by the claim token (fencing): b's run stands;
    a only undoes the take-back's charge and says in the history what became of its attempt."""
    a, script_pids, hipe_a = start_hanging(batch, reaper, "a", lease="3")
    stop_between_transactions(batch, a.proc)
    if late == "finishes_while_stopped":
        (out_dir(batch) / "go").touch()   # a's HIPE succeeds while a is frozen
        wait_for((out_dir(batch) / f"finished-{OBSID}.1").exists, 30, "a's HIPE to finish")
        wait_dead([hipe_a], 30, "a's HIPE to exit")
    else:
        wait_dead([hipe_a, *script_pids], 10, "a's guardian to kill HIPE and its children")
        assert not (out_dir(batch) / f"finished-{OBSID}.1").exists()

    b = Worker(batch, reaper, "b")   # waits out a's lease, reclaims the obsid, runs it to the end
    assert b.wait(60) == 0, b.err()
    after_b = state_of(batch)
    [row] = after_b[0]
    assert (row["state"], row["attempts"], row["pid"]) == ("done", 2, b.pid)
    assert [(h["attempt"], h["outcome"], h["pid"]) for h in after_b[1]] == [(1, "lost", a.pid), (2, "done", b.pid)]

    os.kill(a.pid, signal.SIGCONT)
    assert a.wait(60) == 0, a.err()
    if late == "finishes_while_stopped":
        assert "outcome not recorded: its lease of 3 s ran out and the obsid was taken back and claimed again" in a.err()
    else:
        assert "HIPE killed by the guardian: the lease was not renewed in time; the obsid had been taken back" in a.err()
    # b's run stands; a's attempt is not counted, and the history says what became of it
    # (test_late_outcomes.py): `late` (it succeeded, and ran again) or `fenced`.
    [row] = state_of(batch)[0]
    assert (row["state"], row["attempts"], row["pid"]) == ("done", 1, b.pid)
    word = "late" if late == "finishes_while_stopped" else "fenced"
    assert [(h["attempt"], h["outcome"], h["pid"]) for h in state_of(batch)[1]] == [(1, word, a.pid), (2, "done", b.pid)]
    assert "0 done, 0 failed" in a.out()


# ----------------------------------------------------------------------------- HIPE faults
@pytest.mark.slow
def test_hipe_killed_is_a_failed_attempt_then_retried(batch, reaper):
    """HIPE killed with SIGKILL: the attempt fails with the signal recorded, HIPE's leftover
    children are killed with its group, and the obsid is retried and done."""
    w, script_pids, hipe_pid = start_hanging(batch, reaper, "w", max_attempts="2")
    os.kill(hipe_pid, signal.SIGKILL)
    assert w.wait(60) == 0, w.err()   # job-level: the retry succeeded, every obsid is done
    wait_dead(script_pids, 10, "the killed HIPE's script and grandchild")
    first, second = batch.table("j").history(OBSID)
    assert (first["outcome"], first["signal_no"], first["exit_code"]) == ("failed", signal.SIGKILL, None)
    assert first["reason"] == "HIPE killed by SIGKILL"
    assert (second["attempt"], second["outcome"]) == (2, "done")
    assert "signal 9 (SIGKILL)  HIPE killed by SIGKILL" in batch.cli("j", "status", "--obsid", OBSID).stdout
    assert "1 of 1 processed." in batch.cli("j", "status").stdout


@pytest.mark.parametrize("deaf", [False, True], ids=["hangs", "hangs_deaf_to_SIGTERM"])
@pytest.mark.slow
def test_hanging_hipe_is_killed_with_its_children(batch, reaper, tmp_path, deaf):
    """[hipe] timeout: a hanging HIPE and everything it started are killed (SIGTERM to the group,
    SIGKILL after the grace period if they ignore it); no process is left behind; the obsid fails
    with the reason."""
    command = f"{sys.executable} -S {TRIVIAL_HIPE}"
    if deaf:   # HIPE itself, its script and the grandchild all ignore SIGTERM
        wrapper = tmp_path / "deaf-hipe"
        wrapper.write_text(f"#!/bin/sh\ntrap '' TERM\nexec {command} \"$@\"\n")
        wrapper.chmod(0o755)
        command = str(wrapper)
    batch.write_cfg(hipe={"command": command, "timeout": "2"}, run={"max_attempts": "1"})
    batch.template("j", hang_template("always", child=True, ignore_term=deaf))
    new_job(batch)
    started = time.monotonic()
    w = Worker(batch, reaper, "w")
    script_pids = wait_pids(batch, reaper)
    hipe_pid = reaper.watch(*hipe_pids(batch))[0]
    assert w.wait(60) == 1, w.err()
    took = time.monotonic() - started
    wait_dead([hipe_pid, *script_pids], 10, "HIPE, its script and the grandchild to be killed")
    [row] = batch.table("j").rows()
    assert row["state"] == "failed" and row["reason"] == "timeout: HIPE ran over 2 s and was killed"
    assert row["signal_no"] == (signal.SIGKILL if deaf else signal.SIGTERM)
    assert took >= (2 + 5 if deaf else 2)   # KILL_GRACE = 5 s between SIGTERM and SIGKILL
    assert not (out_dir(batch) / f"finished-{OBSID}.1").exists()


def test_hipe_gone_mid_run_stops_the_worker_without_failing_obsids(batch, reaper, tmp_path):
    """HIPE removed while a job runs: the worker cannot launch it for the next obsid. That obsid
    goes back to pending uncounted and the worker stops with one clear line and exit 2, rather
    than failing every remaining obsid in turn."""
    wrapper = tmp_path / "hipe"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -S {TRIVIAL_HIPE} \"$@\"\n")
    wrapper.chmod(0o755)
    batch.write_cfg(hipe={"command": str(wrapper)})
    batch.template("j", hang_template("first"))
    new_job(batch, [OBSID, OBSID + 1, OBSID + 2])
    w = Worker(batch, reaper, "w")
    wait_for(lambda: list(out_dir(batch).glob("pids-*.1")), 60, "HIPE to start")
    wrapper.unlink()
    (out_dir(batch) / "go").touch()
    assert w.wait(60) == 2, w.err()
    [error] = [line for line in w.err().splitlines() if line.startswith("BatchProcess.py: error: ")]
    assert f"cannot start HIPE ({wrapper}): No such file or directory; obsid" in error
    assert "put back to pending and worker stopped" in error
    rows = batch.table("j").rows()
    assert sorted((r["state"], r["attempts"]) for r in rows) == [("done", 1), ("pending", 0), ("pending", 0)]
    assert "SUMMARY: 1 obsid processed" in w.out() and "1 done, 0 failed, 1 back to pending" in w.out()


@pytest.mark.slow
def test_sigterm_to_worker_requeues_without_counting(batch, reaper):
    """SIGTERM to a worker: it stops HIPE (whole group), puts the obsid back to pending without
    counting an attempt, prints its summary and exits 128+15; a new run finishes the obsid."""
    w, script_pids, hipe_pid = start_hanging(batch, reaper, "w")
    w.proc.send_signal(signal.SIGTERM)
    assert w.wait(30) == 128 + signal.SIGTERM, w.err()
    wait_dead([hipe_pid, *script_pids], 10, "HIPE and its children to be stopped")
    assert "SLOT 1 SUMMARY: 0 obsids processed" in w.out() and "1 back to pending" in w.out()
    [row] = batch.table("j").rows()
    assert (row["state"], row["attempts"], row["reason"]) == ("pending", 0, "stopped by SIGTERM")
    [stopped] = batch.table("j").history(OBSID)
    assert (stopped["outcome"], stopped["pid"]) == ("stopped", w.pid)
    r = batch.cli("j", "run", timeout=60)
    assert r.returncode == 0, r.stderr
    [row] = batch.table("j").rows()
    assert (row["state"], row["attempts"]) == ("done", 1)


# ----------------------------------------------------------------------------- database outages
@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """A MariaDB of these tests' own, to stop and restart without disturbing the session's."""
    server = MariaDB(tmp_path_factory.mktemp("own-mariadb")).start()
    yield server
    server.cleanup()


@pytest.fixture
def outage_env(own_server, tmp_path):
    if own_server.proc is None:
        own_server.start()
    name = f"o{os.getpid()}_{tmp_path.name}"[:60].replace("-", "_")
    env = BatchEnv(tmp_path / "root", "mysql", own_server, own_server.create_database(name))
    yield env
    if own_server.proc is None:   # a test stopped it and failed before restarting it
        own_server.start()
    with own_server.admin() as c:
        c.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["shutdown", "crash"])
@pytest.mark.slow
def test_database_restart_mid_run(outage_env, reaper, how):
    """The server goes away while HIPE runs: HIPE keeps running, the worker retries with backoff,
    records the outcome once the server is back (same port and data) and finishes the job;
    nothing runs twice, nothing is lost."""
    env = outage_env
    obsids = [OBSID, OBSID + 1, OBSID + 2]
    env.write_cfg(run={"lease": "10", "db_patience": "120"})   # heartbeat every 2 s
    env.template("j", hang_template("first"))
    new_job(env, obsids)
    w = Worker(env, reaper, "w")
    wait_for(lambda: list(out_dir(env).glob("pids-*.1")), 60, "HIPE to start")
    running = int(next(out_dir(env).glob("pids-*.1")).name.split("-")[1].split(".")[0])
    hipe_pid = hipe_pids(env, running)[0]
    env.server.stop(how)
    wait_for(lambda: "database unreachable; HIPE keeps running" in w.err(), 30, "a failed heartbeat")
    assert pid_alive(hipe_pid), "HIPE was stopped because the database went away"
    (out_dir(env) / "go").touch()
    wait_for(lambda: "database trouble while recording the outcome" in w.err(), 30, "the outcome to wait")
    assert w.proc.poll() is None
    env.server.start()
    assert w.wait(120) == 0, w.err()
    rows = env.table("j").rows()
    assert [(r["state"], r["attempts"]) for r in rows] == [("done", 1)] * 3
    history = env.table("j").history()
    assert sorted((h["obsid"], h["outcome"]) for h in history) == [(o, "done") for o in obsids]
    assert sorted(env.calls_list()) == obsids, "an obsid ran twice"
    assert PASSWORD not in w.err() + w.out()


@pytest.mark.slow
def test_database_away_too_long_exits_3_losing_nothing(outage_env, reaper):
    """The server stays away past [run] db_patience: the worker exits 3 with one clear error and
    no traceback; nothing is lost: once the server is back a new run takes the obsid back after
    its lease and finishes the job."""
    env = outage_env
    env.write_cfg(run={"lease": "2", "db_patience": "3"})
    env.template("j", hang_template("first"))
    new_job(env, [OBSID, OBSID + 1])
    w = Worker(env, reaper, "w")
    wait_for(lambda: list(out_dir(env).glob("pids-*.1")), 60, "HIPE to start")
    running = int(next(out_dir(env).glob("pids-*.1")).name.split("-")[1].split(".")[0])
    env.server.stop()
    (out_dir(env) / "go").touch()
    assert w.wait(60) == 3, w.err()
    errors = [line for line in w.err().splitlines() if " ERROR " in line]
    assert len(errors) == 1, w.err()
    waited = re.search(rf"gave up recording the outcome of obsid {running} after (\d+\.\d) s", errors[0])
    assert waited and 2.0 <= float(waited.group(1)) <= 10, errors[0]      # the time really waited
    assert f"at {env.server.bind}:{env.server.port} " in errors[0]      # host and port
    assert "Nothing is lost: an obsid left running is taken back after its lease." in errors[0]
    assert "Traceback" not in w.err() and PASSWORD not in w.err() + w.out()
    env.server.start()
    r = env.cli("j", "run", timeout=120)
    assert r.returncode == 0, r.stderr
    assert [row["state"] for row in env.table("j").rows()] == ["done", "done"]
    assert [h["outcome"] for h in env.table("j").history(running)] == ["lost", "done"]


@pytest.mark.slow
def test_stop_signal_cuts_a_wait_for_the_database_short(outage_env, reaper):
    """SIGTERM while the worker waits out an outage (db_patience 600 s) ends it at once, exit 143,
    not ten minutes later; the obsid it could not record is taken back after its lease and done."""
    env = outage_env
    env.write_cfg(run={"lease": "2", "db_patience": "600"})
    env.template("j", hang_template("first"))
    new_job(env)
    w = Worker(env, reaper, "w")
    wait_pids(env, reaper)
    env.server.stop()
    (out_dir(env) / "go").touch()
    wait_for(lambda: "database trouble while recording the outcome" in w.err(), 60, "the worker to wait for the database")
    w.proc.send_signal(signal.SIGTERM)
    assert w.wait(30) == 128 + signal.SIGTERM, w.err()
    assert re.search(rf"gave up recording the outcome of obsid {OBSID} after \d+\.\d s and a stop signal", w.err())
    env.server.start()
    r = env.cli("j", "run", timeout=120)
    assert r.returncode == 0, r.stderr
    assert [h["outcome"] for h in env.table("j").history(OBSID)] == ["lost", "done"]


# ----------------------------------------------------------------------------- transient errors
@pytest.mark.slow
def test_lock_wait_timeout_is_retried(outage_env, reaper):
    """Error 1205 (lock wait timeout) while recording an outcome is retried, never shown as a
    failed obsid: a test transaction holds the obsid's row while HIPE finishes."""
    env = outage_env
    with env.server.admin() as c:
        c.cursor().execute("SET GLOBAL innodb_lock_wait_timeout = 1")   # for connections made from now
    holder = MySQLdb.connect(unix_socket=env.server.socket, user="root", database=env.db, autocommit=False)
    try:
        env.template("j", hang_template("first"))
        new_job(env)
        w = Worker(env, reaper, "w")
        wait_pids(env, reaper)
        holder.cursor().execute("SELECT * FROM j WHERE obsid = %s FOR UPDATE", (OBSID,))
        (out_dir(env) / "go").touch()
        wait_for(lambda: "Lock wait timeout exceeded" in w.err(), 60, "the worker to meet the held lock")
        assert w.proc.poll() is None
        holder.commit()
        assert w.wait(60) == 0, w.err()
    finally:
        holder.close()
        with env.server.admin() as c:
            c.cursor().execute("SET GLOBAL innodb_lock_wait_timeout = 50")
    [row] = env.table("j").rows()
    assert (row["state"], row["attempts"]) == ("done", 1)
    assert "database trouble while recording the outcome" in w.err()


@pytest.mark.slow
def test_lost_connections_are_retried(mysql_batch, reaper):
    """Connections killed by the server again and again mid-run (error 2013/2006): every
    transaction is retried on a new connection; every obsid ends done exactly once."""
    env = mysql_batch
    obsids = list(range(OBSID, OBSID + 150))
    env.write_cfg(hipe={"command": f"{sys.executable} -S {TRIVIAL_HIPE}"}, run={"lease": "3"})
    env.template("j", "pass\n")
    new_job(env, obsids)
    workers = [Worker(env, reaper, f"w{i}") for i in range(2)]
    killed, seen = 0, 0
    admin = env.server.admin()
    try:
        while any(w.proc.poll() is None for w in workers):
            wait_for(lambda: len(env.calls_list()) >= seen + 5 or all(w.proc.poll() is not None for w in workers),
                     120, "workers to make progress")
            seen = len(env.calls_list())
            cur = admin.cursor()
            cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                        (env.db,))
            for (conn_id,) in cur.fetchall():
                try:
                    cur.execute(f"KILL CONNECTION {int(conn_id)}")
                    killed += 1
                except MySQLdb.OperationalError:   # it had gone already
                    pass
    finally:
        admin.close()
    for w in workers:
        assert w.wait(60) == 0, w.err()
    assert killed >= 10
    assert any("database trouble" in w.err() for w in workers)
    rows = env.table("j").rows()
    assert [r["state"] for r in rows] == ["done"] * len(obsids)
    done = [h["obsid"] for h in env.table("j").history() if h["outcome"] == "done"]
    assert sorted(done) == obsids
    assert not [h for h in env.table("j").history() if h["outcome"] == "failed"]


