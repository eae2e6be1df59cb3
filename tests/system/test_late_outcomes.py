"""A claim taken back while its worker could not answer (issue 18, item 8): the attempt is never charged.

A worker frozen (SIGSTOP: a paused VM, Ctrl-Z) or cut off from the database for longer than its
lease cannot renew it; another worker then takes the obsid back as `lost`, which counts an attempt.
When the worker comes back with its outcome:
- a success is recorded done if nobody claimed the obsid since (else the history says `late`: it
  succeeded, and ran again);
- HIPE fenced by its guardian (the lease not renewed in time) is `fenced` in the history;
and either way the attempt is not counted (with max_attempts = 1 the take-back had failed the obsid).
Both backends; the probe of exactly_once.py sees every run. On MariaDB also a real partition: the
worker reaches the server through a TCP proxy (mysql_proxy.py) that cuts it off, while the other
worker reaches the server directly.
"""
import os
import signal

import pytest

from exactly_once import assert_exactly_once, go, probe, wait_first_run
from mysql_proxy import MySQLProxy
from support import OBSID, Worker, new_job, proc_state, wait_for
from support import pid_alive as alive


def frozen_worker_running_hipe(env, reaper, lease, max_attempts):
    """Worker a, its HIPE running (until go(env)), then SIGSTOPped: (a, HIPE's pid)."""
    env.write_cfg(run={"lease": str(lease), "max_attempts": str(max_attempts), "db_patience": "600"})
    env.template("j", probe(first=None))
    new_job(env)
    a = Worker(env, reaper, "a")
    script = wait_first_run(env, reaper)
    os.kill(a.pid, signal.SIGSTOP)
    wait_for(lambda: proc_state(a.pid) in ("T", "t"), 10, "worker a to stop")
    return a, script


def taken_back(env, reaper):
    """Worker b, started while a is frozen, takes a's obsid back after its lease (and runs it again
    if attempts are left); it exits once nothing is left to do."""
    b = Worker(env, reaper, "b")
    assert b.wait(120) in (0, 1), b.err()   # 1: the take-back failed the obsid (max_attempts 1)
    assert "took back 1 obsid(s) of lost workers" in b.err(), b.err()
    return b


def outcomes(env):
    return [(h["outcome"], h["pid"]) for h in env.table("j").history(OBSID)]


@pytest.mark.slow
@pytest.mark.parametrize("max_attempts", [1, 3])
def test_a_success_while_frozen_past_the_lease_is_not_charged(batch, reaper, max_attempts):
    """HIPE succeeds while its worker is frozen; the freeze outlasts the lease and worker b takes
    the obsid back. max_attempts 1: the take-back failed the obsid, nobody ran it since, so the
    thawed worker records its success (before: failed). max_attempts 3: b ran it again; the first
    success is `late` in the history and the obsid counts one attempt (before: `lost`, 2)."""
    env = batch
    a, script = frozen_worker_running_hipe(env, reaper, lease=8, max_attempts=max_attempts)
    go(env)   # HIPE ends well long before the guardian's deadline (70 % of the lease)
    wait_for(lambda: not alive(script), 10, "HIPE to succeed while its worker is frozen")
    b = taken_back(env, reaper)
    os.kill(a.pid, signal.SIGCONT)
    assert a.wait(60) == 0, a.err()
    figures = assert_exactly_once(env, [OBSID])
    row = env.table("j").row(OBSID)
    if max_attempts == 1:
        assert figures["runs"] == 1
        assert outcomes(env) == [("done", a.pid)]
        assert "nobody ran it since: recorded done" in a.err(), a.err()
    else:
        assert figures["runs"] == 2
        assert outcomes(env) == [("late", a.pid), ("done", b.pid)]
        assert "the attempt is not counted (history: late)" in a.err(), a.err()
    assert row["attempts"] == 1, row
    assert "Traceback" not in a.err()


@pytest.mark.slow
@pytest.mark.parametrize("max_attempts", [1, 3])
def test_a_fenced_attempt_is_not_charged(batch, reaper, max_attempts):
    """HIPE runs on while its worker is frozen: the guardian kills it at 70 % of the lease, and
    worker b takes the obsid back after the lease. Thawed, the worker says the attempt is not
    counted and the history says `fenced`. max_attempts 1: the obsid, failed by the take-back, is
    pending again and the thawed worker runs it (before: failed for good). max_attempts 3: b ran it,
    and it counts one attempt (before: 2)."""
    env = batch
    a, script = frozen_worker_running_hipe(env, reaper, lease=3, max_attempts=max_attempts)
    wait_for(lambda: not alive(script), 10, "the guardian to fence HIPE of the frozen worker")
    b = taken_back(env, reaper)
    os.kill(a.pid, signal.SIGCONT)
    assert a.wait(60) == 0, a.err()
    figures = assert_exactly_once(env, [OBSID])
    assert figures["runs"] == 2
    assert outcomes(env) == [("fenced", a.pid), ("done", a.pid if max_attempts == 1 else b.pid)]
    assert env.table("j").row(OBSID)["attempts"] == 1
    assert "the attempt is not counted" in a.err(), a.err()
    assert "Traceback" not in a.err()


@pytest.fixture
def partitioned(mysql_batch):
    """mysql_batch whose batch.cfg reaches the server through a proxy that can cut it off
    (env.proxy), and direct.cfg that reaches it directly, for the other workers."""
    env = mysql_batch
    env.write_cfg(run={"lease": "5", "max_attempts": "1", "db_patience": "600"})
    env.direct = env.root / "direct.cfg"
    env.direct.write_text(env.cfg_path.read_text())
    env.direct.chmod(0o600)
    env.proxy = MySQLProxy(env.server.bind, env.server.port)
    env.write_cfg(sql={"port": str(env.proxy.port)}, run={"lease": "5", "max_attempts": "1", "db_patience": "600"})
    yield env
    env.proxy.close()


@pytest.mark.slow
@pytest.mark.parametrize("ends", ["succeeds", "is fenced"])
def test_a_worker_cut_off_from_the_database_past_its_lease_is_not_charged(partitioned, reaper, ends):
    """Worker a cut off from the server (a partition: its connections cut, new ones refused) while
    its HIPE runs; worker b, reaching the server directly, takes the obsid back after its lease of
    5 s, which with max_attempts 1 fails it. HIPE succeeds meanwhile, or its guardian fences it at
    70 % of the lease. The partition mended, a records the success (nobody ran the obsid since), or
    puts the fenced obsid back to pending and runs it: done, 1 attempt. (Before: failed.)"""
    env = partitioned
    env.template("j", probe(first=None))
    new_job(env)
    a = Worker(env, reaper, "a")
    script = wait_first_run(env, reaper)
    env.proxy.cut()
    if ends == "succeeds":
        go(env)
        wait_for(lambda: not alive(script), 10, "HIPE to succeed while its worker is cut off")
    else:
        wait_for(lambda: not alive(script), 10, "the guardian to fence HIPE of the cut-off worker")
    b = Worker(env, reaper, "b", HIPE_BATCH_CONFIG=env.direct)
    assert b.wait(120) in (0, 1), b.err()
    assert "took back 1 obsid(s) of lost workers" in b.err(), b.err()
    with env.server.admin() as c:   # batch.cfg's way to the server is cut: the admin's
        cur = c.cursor()
        cur.execute(f"SELECT state FROM `{env.db}`.j WHERE obsid = %s", (OBSID,))
        assert cur.fetchone()[0] == "failed"   # by the take-back: max_attempts 1
    env.proxy.mend()
    assert a.wait(120) == 0, a.err()
    figures = assert_exactly_once(env, [OBSID])
    assert figures["runs"] == (1 if ends == "succeeds" else 2)
    assert [h["outcome"] for h in env.table("j").history(OBSID)] == (
        ["done"] if ends == "succeeds" else ["fenced", "done"])
    assert env.table("j").row(OBSID)["attempts"] == 1
    assert "Traceback" not in a.err()
