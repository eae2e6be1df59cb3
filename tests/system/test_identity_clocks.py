"""A claim is taken back only on evidence that holds across machines and clocks (issue 18, items 2-3).

- Host names are not machine identities: a worker in another PID namespace with the same host name
  (`unshare --pid --fork --mount-proc`) is not "a dead worker of this host" to `reset --stale` or to
  a worker outside; a worker of another host (its host name set through SLURMD_NODENAME) that was
  SIGKILLed is still taken back, after one lease.
- Clocks step: a second worker whose clock is 60 s ahead (libfaketime), and a mariadbd whose clock
  steps 60 s forward (a private server started under libfaketime, its time read from a file), take
  no live claim back; HIPE is never started beside the owner's (the overlap probe).
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exactly_once import assert_exactly_once, go, probe
from mariadb_server import MariaDB
from support import BIN, LIBFAKETIME, OBSID, BatchEnv, Worker, new_job, pid_alive, row_of, wait_for

needs_faketime = pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime (Debian package faketime) not installed")
LOOKED = "obsids still running elsewhere"   # a waiting worker's -v line, once per look


class Taker:
    """A second `run -v` that finds nothing pending and waits, looking about once a second."""

    def __init__(self, env, reaper, name, **env_extra):
        self.err_path = env.root / f"{name}.err"
        with open(env.root / f"{name}.out", "w") as out, open(self.err_path, "w") as err:
            self.proc = reaper.popen(env.popen("j", "run", "-v", stdout=out, stderr=err, env=env.env(**env_extra)))
        self.pid = self.proc.pid

    def err(self):
        return self.err_path.read_text()

    def looks(self):
        return self.err().count(LOOKED)

    def wait(self, timeout=60):
        return self.proc.wait(timeout=timeout)


def renewal(env, obsid=OBSID):
    """(token, renewal count) of the obsid's row; the count is the heartbeat counter, or on a table
    without one (the code before it) the heartbeat time, which moves with each renewal too."""
    row = row_of(env, obsid)
    return row["token"], row.get("beats", row["heartbeat"])


def renewed_twice(env, token, since, obsid=OBSID):
    """Whether the claim `token` was renewed twice since its count `since`, or is gone (then True:
    the caller's assertion says what happened). Two renewals: a whole heartbeat interval passed."""
    now_token, count = renewal(env, obsid)
    if now_token != token:
        return True
    return count != since and (count >= since + 2 if isinstance(count, int) else True)


def lock_holder(env, obsid=OBSID):
    lock = env.root / "jobs" / "j" / "output" / f"lock-{obsid}"
    return lock.exists() and lock.read_text().strip()


def second_run(env, obsid=OBSID):
    return (env.root / "jobs" / "j" / "output" / f"run-{obsid}.2").exists()


def hold_while_watched(env, taker, token, looks=3):
    """Wait until the taker has looked `looks` times more and the owner's claim was renewed twice
    since (a whole heartbeat interval: past the moment a lease judged by a wrong clock ran out);
    then the claim must still be the owner's and HIPE must not have been started again."""
    _, count = renewal(env)
    before = taker.looks()
    wait_for(lambda: renewal(env)[0] != token or second_run(env)
             or (taker.looks() >= before + looks and renewed_twice(env, token, count)), 60,
             "the taker to look while the owner renews")
    now_token, _ = renewal(env)
    assert now_token == token, "a live claim was taken back:\n" + taker.err()[-3000:]
    assert not second_run(env), "HIPE was started beside the owner's"


def a_probe_job(env, lease):
    """The job's one obsid, its probe's first run held until go(env), under `lease` seconds."""
    env.write_cfg(run={"lease": str(lease)})
    env.template("j", probe(first=None))
    new_job(env)


def owner_running(env, reaper, lease=30, **worker_env):
    """Worker a (with worker_env) holding the obsid, its HIPE running until go(env)."""
    a_probe_job(env, lease)
    a = Worker(env, reaper, "a", **worker_env)
    wait_for(lambda: lock_holder(env), 60, "the first run")
    return a


def both_finish_with_one_run(env, a, b):
    """go(env): the owner a and the taker b end well, and the obsid ran once, done once."""
    go(env)
    assert a.wait(60) == 0, a.err() if hasattr(a, "err") else ""
    assert b.wait(60) == 0, b.err()
    assert assert_exactly_once(env, [OBSID])["runs"] == 1


# ----------------------------------------------------------------------------- host names
@pytest.mark.slow
def test_a_worker_in_another_pid_namespace_is_not_taken_for_dead(batch, reaper):
    """Two machines with one host name, each in a PID namespace of its own: the worker inside
    `unshare --pid --fork --mount-proc` records the same host name, and its pid means nothing
    outside. `reset --stale` and a second worker outside leave its obsid alone while it renews."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root")
    env = batch
    a_probe_job(env, 30)
    with open(env.root / "a.out", "w") as out, open(env.root / "a.err", "w") as err:
        a = reaper.popen(subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, str(BIN), "j", "run"],
            stdout=out, stderr=err, env=env.env(), cwd=env.root, text=True))
    wait_for(lambda: lock_holder(env), 60, "the worker in its own PID namespace to run HIPE")
    token, _ = renewal(env)
    row = env.table("j").row(OBSID)
    assert row["host"] == os.uname().nodename, row["host"]   # the same host name as outside
    r = env.cli("j", "reset", "--stale")
    assert r.returncode == 0 and r.stdout.startswith("0 obsids of lost workers taken back"), r.stdout + r.stderr
    assert renewal(env)[0] == token, "reset --stale took a live claim of another PID namespace"
    b = Taker(env, reaper, "b")
    hold_while_watched(env, b, token)
    both_finish_with_one_run(env, a, b)
    assert [h["outcome"] for h in env.table("j").history(OBSID)] == ["done"], (env.root / "a.err").read_text()


@pytest.mark.slow
def test_a_dead_worker_of_another_host_is_taken_back_after_one_lease(batch, reaper):
    """A worker that records another host name (SLURMD_NODENAME, as under Slurm) is SIGKILLed: its
    HIPE dies with it (the guardian), and its claim is no dead worker of this host. `reset --stale`
    watches it for one lease (saying so) and takes it back; a new run finishes the obsid."""
    env = batch
    a = owner_running(env, reaper, lease=3, SLURMD_NODENAME="elsewhere")
    script = int(lock_holder(env))
    assert env.table("j").row(OBSID)["host"] == "elsewhere"
    a.proc.send_signal(signal.SIGKILL)
    a.wait(30)
    wait_for(lambda: not pid_alive(script), 20, "HIPE to die with its worker")
    wait_for(lambda: env.table("j").lapsed(3)[0] == 1, 30, "the lease to run out by the database's clock")
    began = time.monotonic()
    r = env.cli("j", "reset", "--stale")
    took = time.monotonic() - began
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("1 obsid of lost workers taken back: 0 at once"), r.stdout
    assert "watching their heartbeats for one lease (3 s)" in r.stderr, r.stderr
    assert took >= 3, f"taken back after {took:.1f} s, less than the lease"
    [lost] = env.table("j").history(OBSID)
    assert (lost["outcome"], lost["host"], lost["pid"]) == ("lost", "elsewhere", a.pid)
    assert lost["reason"] == "worker lost: no heartbeat for 3 s"
    go(env)
    b = Worker(env, reaper, "b")
    assert b.wait(60) == 0, b.err()
    assert_exactly_once(env, [OBSID])
    assert [h["outcome"] for h in env.table("j").history(OBSID)] == ["lost", "done"]


# ----------------------------------------------------------------------------- clocks
@needs_faketime
@pytest.mark.slow
def test_a_worker_whose_clock_is_60_s_ahead_takes_no_live_claim(batch, reaper):
    """A second worker whose clock is 60 s ahead (libfaketime; on SQLite the leases were judged by
    each process's clock) waits for the owner's obsid and never takes it back while it is renewed."""
    env = batch
    a = owner_running(env, reaper)
    token, _ = renewal(env)
    b = Taker(env, reaper, "b", LD_PRELOAD=LIBFAKETIME, FAKETIME="+60s")
    wait_for(lambda: b.looks() >= 1 or second_run(env) or renewal(env)[0] != token, 60, "the second worker's first look")
    hold_while_watched(env, b, token)
    both_finish_with_one_run(env, a, b)


@pytest.fixture(scope="module")
def steppable_server(tmp_path_factory):
    """A MariaDB of this module's own whose wall clock is read from a file by libfaketime (its
    monotonic clock left alone): writing '+60' to `server.faketime` steps it 60 s forward."""
    if LIBFAKETIME is None:
        pytest.skip("libfaketime (Debian package faketime) not installed")
    base = tmp_path_factory.mktemp("steppable-mariadb")
    server = MariaDB(base)
    server.faketime = base / "faketimerc"
    server.faketime.write_text("+0\n")
    server.install()
    preload = {"LD_PRELOAD": LIBFAKETIME.replace("libfaketime.so", "libfaketimeMT.so"),
               "FAKETIME_TIMESTAMP_FILE": str(server.faketime), "FAKETIME_NO_CACHE": "1",
               "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    saved = {k: os.environ.get(k) for k in preload}
    os.environ.update(preload)   # inherited by mariadbd alone: this process's clock is not faked
    try:
        server.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield server
    server.cleanup()


def server_ahead(server):
    with server.admin() as c:
        cur = c.cursor()
        cur.execute("SELECT UNIX_TIMESTAMP(NOW(6))")
        return float(cur.fetchone()[0]) - time.time()


@pytest.mark.slow
def test_mariadbd_clock_stepped_forward_takes_no_live_claim(steppable_server, reaper, tmp_path):
    """The database server's clock steps 60 s forward (NTP, a resumed VM) right after a renewal,
    while a second worker waits: every lease looks run out by the server's clock until the owner's
    next heartbeat, yet the claim is not taken back, and HIPE never runs twice."""
    server = steppable_server
    server.faketime.write_text("+0\n")
    name = f"s{os.getpid()}_{tmp_path.name}"[:60].replace("-", "_")
    env = BatchEnv(tmp_path / "root", "mysql", server, server.create_database(name))
    try:
        a = owner_running(env, reaper)
        token, count = renewal(env)
        b = Taker(env, reaper, "b")
        wait_for(lambda: b.looks() >= 2, 60, "the second worker to look")
        wait_for(lambda: renewal(env)[1] != count, 30, "a renewal")   # the step right after it
        server.faketime.write_text("+60\n")
        wait_for(lambda: server_ahead(server) > 55, 10, "mariadbd's clock to step")
        hold_while_watched(env, b, token)
        both_finish_with_one_run(env, a, b)
    finally:
        server.faketime.write_text("+0\n")
        with server.admin() as c:
            c.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")


def test_the_machine_identity_is_this_kernels_boot_and_pid_namespace():
    """What a claim records of its machine: the boot id and the PID namespace, as /proc says."""
    from batchUtility.procfs import machine_identity
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert machine_identity() == f"{boot} {os.readlink('/proc/self/ns/pid')}"


def test_a_job_of_an_earlier_version_gets_the_machine_and_the_counter(batch):
    """A job table and history without `machine` and `beats` (made by an earlier version) get them
    from the next command, once; the claims of a run then record their machine and renewals."""
    from batchUtility.procfs import machine_identity
    batch.template("j", "x = 1\n")
    assert batch.cli("j", "new", batch.obsid_file([1, 2])).returncode == 0
    table = batch.table("j")
    for drop in ("ALTER TABLE {job_table} DROP COLUMN machine", "ALTER TABLE {job_table} DROP COLUMN beats",
                 "ALTER TABLE {history_table} DROP COLUMN machine"):
        table._transaction(lambda cur, drop=drop: cur.execute(table.statement(drop)), "dropping a column")
    assert not {"machine", "beats"} & set(table.rows()[0])
    table.close()
    for _ in range(2):   # idempotent
        r = batch.cli("j", "status")
        assert r.returncode == 0, r.stderr
    r = batch.cli("j", "run", "-j", "2")
    assert r.returncode == 0, r.stderr
    table = batch.table("j")
    assert [(row["state"], row["machine"], row["beats"]) for row in table.rows()] == [("done", machine_identity(), 0)] * 2
    assert {h["outcome"] for h in table.history()} == {"done"}
    def read(cur):
        cur.execute(table.statement("SELECT machine FROM {history_table}"))
        return cur.fetchall()
    machines = table._transaction(read, "reading the history", write=False)
    assert [m for (m,) in machines] == [machine_identity()] * 2
