"""The ambiguous COMMIT (issue 8): the server committed, its answer never reached the worker.

A real TCP proxy (`mysql_proxy.py`) sits between the workers and the session's MariaDB; armed, it
lets a COMMIT through and swallows the server's reply, cutting the connection (the client gets
error 2013 and cannot tell whether it committed). A claim so cut must keep the obsid it really
claimed (found again by its token) and run it once; a finish so cut must be counted done once,
never lost or run again; a put-back so cut must be known for the worker's own, even once another
worker has claimed the obsid again. The job script is the probe of test_faults.py (overlaps, runs) and the
trivial HIPE logs every launch, so "exactly once" is checked on the processes, not only the rows.
"""
import signal
import threading

import pytest

from exactly_once import FAST_HIPE, assert_exactly_once, probe, wait_first_run
from mysql_proxy import MySQLProxy
from support import OBSID, Worker, new_job, wait_for

CLAIM_UPDATE = r"SET state = 'running'"   # the claim's UPDATE (storage.CLAIM), values filled in by the driver
FINISH_DONE = r"SET state = 'done'"       # a success's UPDATE (storage.FINISH)
PUT_BACK = r"SET state = 'pending', ended"  # a put-back's UPDATE (storage.REQUEUE; FINISH sets pipelined next)
FINISH_RETRY = r"SET state = 'pending', pipelined"   # a failure's UPDATE (storage.FINISH) when it is to be retried


@pytest.fixture
def proxied(mysql_batch):
    """mysql_batch with batch.cfg pointing at a proxy in front of the server."""
    proxy = MySQLProxy(mysql_batch.server.bind, mysql_batch.server.port)
    mysql_batch.write_cfg(sql={"port": str(proxy.port)}, hipe={"command": FAST_HIPE})
    mysql_batch.proxy = proxy
    yield mysql_batch
    proxy.close()


@pytest.mark.parametrize("commit", ["alone", "last of a multi-statement"])
def test_the_proxy_loses_the_reply_to_a_commit_that_happened(proxied, commit):
    """The fault itself, so that the tests below can fail: the COMMIT a worker's driver sends is
    COM_QUERY "COMMIT", or on MariaDB the last statement of the transaction's one query; armed, the
    proxy lets it commit and the client sees 2013."""
    import MySQLdb
    from MySQLdb.constants import CLIENT
    env = proxied
    new_job(env, [OBSID])
    s = env.config().sql
    conn = MySQLdb.connect(host=s.host, port=s.port, user=s.user, password=s.password, database=s.db,
                           autocommit=False, client_flag=CLIENT.MULTI_STATEMENTS)
    env.proxy.log_queries = True
    env.proxy.lose_commit_reply(r"SET expected = 42")
    cur = conn.cursor()
    with pytest.raises(MySQLdb.OperationalError) as lost:
        if commit == "alone":
            cur.execute("UPDATE j SET expected = 42")
            conn.commit()
        else:
            cur.execute("UPDATE j SET expected = 42;\nCOMMIT")
            while cur.nextset():
                pass
    assert lost.value.args[0] in (2013, 2006), lost.value
    assert env.proxy.queries[-1].endswith(b"COMMIT")
    assert [r["expected"] for r in env.table("j").rows()] == [42]   # committed all the same


@pytest.mark.slow
@pytest.mark.parametrize("lost", ["claims", "finishes", "both"])
def test_a_lost_commit_reply_never_runs_or_counts_an_obsid_twice(proxied, lost):
    """The replies to the COMMITs of the first two claims and/or the first two successes are lost.
    Each claim is resolved by reading the row (the worker keeps the obsid it really claimed, found by
    its token), each success is recorded once: every obsid HIPE-run exactly once, done with one
    attempt, one history row each (none dropped, none `lost` or `failed`), the worker's own count right."""
    env = proxied
    obsids = [OBSID + i for i in range(4)]
    env.template("j", probe(first=0.05))
    new_job(env, obsids)
    patterns = {"claims": [CLAIM_UPDATE] * 2, "finishes": [FINISH_DONE] * 2}
    for pattern in patterns.get(lost, patterns["claims"] + patterns["finishes"]):
        env.proxy.lose_commit_reply(pattern)
    r = env.cli("j", "run", timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(env.proxy.fired) == (4 if lost == "both" else 2), env.proxy.fired   # the faults happened
    assert "Traceback" not in r.stderr and "not recorded" not in r.stderr and "taken back" not in r.stderr, r.stderr
    assert "Lost connection" in r.stderr, r.stderr   # the worker met them
    figures = assert_exactly_once(env, obsids)
    assert figures["runs"] == len(obsids)
    assert sorted(env.calls_list()) == obsids, "HIPE ran an obsid twice, or not at all"
    table = env.table("j")
    assert {r["obsid"]: (r["state"], r["attempts"]) for r in table.rows()} == dict.fromkeys(obsids, ("done", 1))
    history = table.history()
    assert sorted((h["obsid"], h["attempt"], h["outcome"]) for h in history) == [(o, 1, "done") for o in obsids]
    assert f"{len(obsids)} obsids processed" in r.stdout and f"{len(obsids)} done, 0 failed" in r.stdout, r.stdout


@pytest.mark.slow
def test_a_lost_commit_reply_to_a_put_back_is_known_for_its_own(proxied, reaper):
    """SIGTERM to a worker running HIPE: its put-back commits, the reply is lost, and before the
    worker retries (the proxy holds the cut) another worker claims the obsid again. The retry finds
    its own put-back (the history row of its token) and the worker says the obsid was put back, not
    that it had been taken back; one `stopped` attempt in the history, the obsid the other's."""
    env = proxied
    env.write_cfg(sql={"port": str(env.proxy.port)}, run={"lease": "60"})   # a call may wait 20 s for its answer
    env.template("j", probe(first=None))
    new_job(env, [OBSID])
    env.proxy.hold = threading.Event()
    env.proxy.lose_commit_reply(PUT_BACK)
    w = Worker(env, reaper, "w")
    wait_first_run(env, reaper)
    w.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: env.proxy.swallowed, 30, "the put-back to commit, its answer swallowed")
    other = env.table("j")
    again = other.claim("elsewhere", "1/1", 1, 60)
    assert again is not None and again.obsid == OBSID
    env.proxy.hold.set()   # the cut: the worker gets 2013 and retries
    assert w.wait(60) == 128 + signal.SIGTERM, w.err()
    err = w.err()
    assert env.proxy.fired == [PUT_BACK.encode()] and "Lost connection" in err, err
    assert "stopped by SIGTERM: HIPE stopped, obsid put back to pending: worker stopping" in err, err
    assert "taken back" not in err and "Traceback" not in err, err
    assert [h["outcome"] for h in other.history(OBSID)] == ["stopped"]
    [row] = other.rows()
    assert (row["state"], row["host"], row["attempts"]) == ("running", "elsewhere", 0)


@pytest.mark.slow
def test_a_lost_commit_reply_to_a_retried_failure_is_known_for_its_own(proxied, reaper):
    """An attempt fails and is to be retried: its outcome commits (the obsid pending again), the reply
    is lost, and before the worker retries another worker claims the obsid. The retry finds its own
    recorded failure (the history row of its token) and the worker says so, not "not recorded"."""
    env = proxied
    env.write_cfg(sql={"port": str(env.proxy.port)}, run={"lease": "60", "retry_errors": "yes", "max_attempts": "3"})
    env.template("j", "raise ValueError('fails')\n")
    new_job(env, [OBSID])
    env.proxy.hold = threading.Event()
    env.proxy.lose_commit_reply(FINISH_RETRY)
    w = Worker(env, reaper, "w")
    wait_for(lambda: env.proxy.swallowed, 60, "the failure to commit, its answer swallowed")
    other = env.table("j")
    again = other.claim("elsewhere", "1/1", 1, 60)
    assert again is not None and again.obsid == OBSID and again.attempt == 2
    env.proxy.hold.set()   # the cut: the worker gets 2013 and retries
    wait_for(lambda: "will be retried (attempt 1 of 3)" in w.err(), 60, "the worker to log its failure")
    w.proc.send_signal(signal.SIGTERM)   # it waits for the obsid running elsewhere
    assert w.wait(60) == 128 + signal.SIGTERM, w.err()
    err = w.err()
    assert env.proxy.fired == [FINISH_RETRY.encode()] and "Lost connection" in err, err
    assert "not recorded" not in err and "Traceback" not in err, err
    assert [(h["attempt"], h["outcome"]) for h in other.history(OBSID)] == [(1, "failed")]
    [row] = other.rows()
    assert (row["state"], row["host"], row["attempts"]) == ("running", "elsewhere", 1)


# An outcome and the next claim in one transaction (issue 21): one query, the success's UPDATE first.
OUTCOME_AND_CLAIM = FINISH_DONE + r".*" + CLAIM_UPDATE


def test_an_outcome_and_the_next_claim_are_one_commit(proxied):
    """Steady state, one worker: each success is recorded and the next obsid claimed in one query
    ending with its COMMIT; only the first claim goes alone, and no outcome goes without a claim."""
    import re
    env = proxied
    obsids = [OBSID + i for i in range(5)]
    env.template("j", probe(first=0.05))
    new_job(env, obsids)
    env.proxy.log_queries = True
    r = env.cli("j", "run", timeout=120)
    assert r.returncode == 0, r.stderr
    assert_exactly_once(env, obsids)
    queries = [q.decode(errors="replace") for q in env.proxy.queries]
    outcomes = [q for q in queries if re.search(FINISH_DONE, q)]
    claims_alone = [q for q in queries if re.search(CLAIM_UPDATE, q) and not re.search(FINISH_DONE, q)]
    assert len(outcomes) == len(obsids), outcomes
    assert all(re.search(OUTCOME_AND_CLAIM, q, re.S) and q.rstrip().endswith("COMMIT") for q in outcomes), outcomes
    assert len(claims_alone) == 1, claims_alone


@pytest.mark.slow
def test_a_lost_commit_reply_to_an_outcome_and_claim_is_resolved_for_both(proxied):
    """The replies to the first two transactions that record a success and claim the next obsid are
    lost: each retry finds the claim by its token (and the outcome by its history row), so the worker
    runs the obsid it really claimed, once, and counts the success once."""
    env = proxied
    obsids = [OBSID + i for i in range(4)]
    env.template("j", probe(first=0.05))
    new_job(env, obsids)
    for _ in range(2):
        env.proxy.lose_commit_reply(OUTCOME_AND_CLAIM)
    r = env.cli("j", "run", timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(env.proxy.fired) == 2 and "Lost connection" in r.stderr, (env.proxy.fired, r.stderr)
    assert "Traceback" not in r.stderr and "not recorded" not in r.stderr and "taken back" not in r.stderr, r.stderr
    assert assert_exactly_once(env, obsids)["runs"] == len(obsids)
    assert sorted(env.calls_list()) == obsids, "HIPE ran an obsid twice, or not at all"
    table = env.table("j")
    assert {r["obsid"]: (r["state"], r["attempts"]) for r in table.rows()} == dict.fromkeys(obsids, ("done", 1))
    assert sorted((h["obsid"], h["attempt"], h["outcome"]) for h in table.history()) == [(o, 1, "done") for o in obsids]
    assert f"{len(obsids)} obsids processed" in r.stdout and f"{len(obsids)} done, 0 failed" in r.stdout, r.stdout


@pytest.mark.slow
def test_a_worker_killed_after_its_outcome_and_claim_committed(proxied, reaper):
    """SIGKILL to a worker waiting for the reply to the transaction that recorded its success and
    claimed the next obsid (it committed; the proxy holds the reply): the success stays counted once,
    and the obsid claimed by the dead worker, never started, is taken back by the next worker of the
    host (its process is gone) and run once."""
    env = proxied
    obsids = [OBSID + i for i in range(3)]
    env.template("j", probe(first=0.05))
    new_job(env, obsids)
    env.proxy.hold = threading.Event()
    env.proxy.lose_commit_reply(OUTCOME_AND_CLAIM)
    w = Worker(env, reaper, "w")
    wait_for(lambda: env.proxy.swallowed, 60, "an outcome and a claim to commit, the reply held")
    w.proc.kill()
    assert w.wait(30) == -signal.SIGKILL
    env.proxy.hold.set()
    table = env.table("j")
    states = {r["obsid"]: r["state"] for r in table.rows()}
    assert sorted(states.values()) == ["done", "pending", "running"], states   # one done, the next claimed
    [claimed] = [o for o, s in states.items() if s == "running"]
    other = Worker(env, reaper, "other")
    assert other.wait(120) == 0, other.err()
    assert "took back 1 obsid(s) of dead workers of this host" in other.err(), other.err()
    assert assert_exactly_once(env, obsids)["runs"] == len(obsids)
    assert sorted(env.calls_list()) == obsids, "HIPE ran an obsid twice, or not at all"
    assert [(h["attempt"], h["outcome"]) for h in table.history(claimed)] == [(1, "lost"), (2, "done")]
    assert sorted(h["outcome"] for h in table.history()) == ["done"] * len(obsids) + ["lost"]


@pytest.mark.slow
def test_a_lost_commit_reply_to_the_first_claims_of_run_j_runs_each_obsid_once(proxied):
    """`run -j 3`'s parent claims its workers' first obsids in one transaction (first_claims.py); the
    reply to its COMMIT is lost. Its retry finds the claims by their tokens and hands them over: each
    obsid HIPE-run once, done with one attempt, nothing taken back or charged twice."""
    env = proxied
    obsids = [OBSID + i for i in range(6)]
    env.template("j", probe(first=0.05))
    new_job(env, obsids)
    env.proxy.lose_commit_reply(CLAIM_UPDATE)
    r = env.cli("j", "run", "-j", "3", timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(env.proxy.fired) == 1, env.proxy.fired
    assert "Traceback" not in r.stderr and "taken back" not in r.stderr and "took back" not in r.stderr, r.stderr
    assert "could not claim" not in r.stderr, r.stderr   # the retry resolved it: no worker was left to find its own
    assert_exactly_once(env, obsids)
    assert sorted(env.calls_list()) == obsids, "HIPE ran an obsid twice, or not at all"
    table = env.table("j")
    assert {r["obsid"]: (r["state"], r["attempts"]) for r in table.rows()} == dict.fromkeys(obsids, ("done", 1))
    assert sorted((h["obsid"], h["attempt"], h["outcome"]) for h in table.history()) == [(o, 1, "done") for o in obsids]
