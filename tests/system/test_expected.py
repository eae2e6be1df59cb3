"""Expected durations of a job made from a file: from earlier attempts of the same obsids in any job
of the database (the master table has no pipetime for them), so that long obsids are claimed first.

Since issue 21 item 2 they come from the site's learned durations (storage/durations.py): the latest
successful attempt of each obsid, kept by the finish that records it, in the same transaction; the
histories of a database of an older version read in once.
"""
import random
import signal
import threading
import uuid

import pytest

from batchUtility.model import Outcome
from batchUtility.storage import NextClaim
from exactly_once import FAST_HIPE, probe
from mysql_proxy import MySQLProxy
from support import OBSID, Worker, new_job, wait_for

SLOW_13_FAIL_12 = ("import time\n"
                   "if obsid == 13:\n    time.sleep(2.2)\n"
                   "if obsid == 12:\n    raise RuntimeError('no')\n")


@pytest.mark.slow
def test_a_job_from_a_file_expects_what_earlier_attempts_took(batch):
    batch.write_cfg(run={"max_attempts": "1"})
    batch.template("first", SLOW_13_FAIL_12)
    assert batch.cli("first", "new", batch.obsid_file([11, 12, 13])).returncode == 0
    assert batch.cli("first", "run").returncode == 1          # obsid 12 failed
    assert batch.calls_list() == [11, 12, 13]                 # no expected durations: obsid order

    batch.template("second", "pass\n")
    r = batch.cli("second", "new", batch.obsid_file([11, 12, 13, 14], "second.txt"))
    assert r.returncode == 0, r.stderr
    expected = {row["obsid"]: row["expected"] for row in batch.table("second").rows()}
    # 13 took its 2.2 s (rounded to seconds, more on a loaded machine); 11 next to nothing; 12 only
    # failed and 14 never ran: nothing known.
    assert expected[13] >= 2 and expected[11] in (0, 1) and expected[12] is None and expected[14] is None, expected
    assert batch.cli("second", "run").returncode == 0
    assert batch.calls_list()[3:] == [13, 11, 12, 14]         # longest first, then the unknown by obsid


def test_a_job_from_a_file_with_no_earlier_attempts_expects_nothing(batch):
    assert batch.cli("other", "new", batch.obsid_file([5, 6])).returncode == 0
    batch.template("j", "pass\n")
    assert batch.cli("j", "new", batch.obsid_file([5, 6, 7], "j.txt")).returncode == 0
    assert [row["expected"] for row in batch.table("j").rows()] == [None, None, None]


ATTEMPT = """INSERT INTO {history_table} (token, obsid, attempt, started, ended, outcome)
  VALUES (:token, :obsid, :attempt, :started, :ended, :outcome)"""
SITE_TABLES = ("site__durations", "site__durations_from")


def learned(env, job="j"):
    """The site's learned durations: obsid -> (took, ended, job)."""
    table = env.table(job)
    try:
        return table._transaction(lambda cur: {int(o): (t, e, j) for o, t, e, j in table._execute(
            cur, "SELECT obsid, took, ended, job FROM site__durations").fetchall()}, "reading", write=False)
    finally:
        table.close()


def latest_done(histories):
    """The oracle: obsid -> (took, ended, job) of its latest successful attempt with both times (by
    its end, then the longest), of the history rows given as {job: [row, ...]}."""
    best = {}
    for job, rows in histories.items():
        for h in rows:
            if h["outcome"] == "done" and h["started"] is not None and h["ended"] is not None:
                mine = (h["ended"], h["ended"] - h["started"], job)
                if h["obsid"] not in best or mine[:2] > best[h["obsid"]][:2]:
                    best[h["obsid"]] = mine
    return {obsid: (took, ended, job) for obsid, (ended, took, job) in best.items()}


def histories_of(env, jobs):
    out = {}
    for job in jobs:
        table = env.table(job)
        out[job] = table.history()
        table.close()
    return out


def assert_learned_as_histories(env, jobs, job="j"):
    """Every successful attempt of `jobs`' histories is in the learned durations, the latest of each obsid."""
    now = learned(env, job)
    oracle = latest_done(histories_of(env, jobs))
    assert {o: (pytest.approx(t), pytest.approx(e), j) for o, (t, e, j) in oracle.items()} == now
    return now


def drop_site_tables(env, job):
    """The database as an older version left it: the histories, no learned durations."""
    table = env.table(job)
    for name in SITE_TABLES:
        table._transaction(lambda cur, n=name: cur.execute(f"DROP TABLE IF EXISTS {n}"), "dropping")
    table.close()


def expected_rounded(env, job, took):
    """What `expected` is for each obsid of `took` (obsid -> seconds or None): the database's ROUND of
    a DOUBLE (MariaDB would round a decimal literal half up, a DOUBLE half to even)."""
    table = env.table(job)
    try:
        def rounded(cur):
            return {o: (None if t is None else table._execute(cur, "SELECT ROUND(:t + 0e0)", {"t": t}).fetchone()[0])
                    for o, t in took.items()}
        return {o: (None if v is None else int(v)) for o, v in table._transaction(rounded, "rounding", write=False).items()}
    finally:
        table.close()


@pytest.mark.slow
def test_new_learns_from_three_earlier_jobs_the_latest_and_keeps_it_after_their_wipe(batch):
    """Three jobs run one after the other over the same obsids, each taking its own time over them;
    the first job by name ran first, the last by name last. `new` gives each obsid what its latest
    successful attempt took (before: the mean in the first job by name: 13 would expect 2 s, 11
    nothing), read from the learned durations; they stay after the three jobs are wiped (before:
    they went with the histories, and `new` learned nothing)."""
    slow = {"aa": {13: 2.2}, "mm": {12: 1.2}, "zz": {11: 2.2}}
    for job in ("aa", "mm", "zz"):
        batch.template(job, f"import time\ntime.sleep({slow[job]}.get(obsid, 0))\n")
        assert batch.cli(job, "new", batch.obsid_file([11, 12, 13], job + ".txt")).returncode == 0
        r = batch.cli(job, "run")
        assert r.returncode == 0, r.stderr

    def new_expects(job):
        r = batch.cli(job, "new", batch.obsid_file([11, 12, 13, 14], job + ".txt"))
        assert r.returncode == 0, r.stderr
        table = batch.table(job)
        expected = {row["obsid"]: row["expected"] for row in table.rows()}
        table.close()
        # 11 took its 2.2 s in zz, the latest (more on a loaded machine); 12 and 13 next to nothing there.
        assert expected[11] >= 2 and expected[12] in (0, 1) and expected[13] in (0, 1) and expected[14] is None, \
            (job, expected)
    new_expects("after")
    mine = assert_learned_as_histories(batch, ["aa", "mm", "zz"], "aa")
    assert {o: j for o, (_, _, j) in mine.items()} == {11: "zz", 12: "zz", 13: "zz"}
    for earlier in ("aa", "mm", "zz"):
        assert batch.cli(earlier, "wipe", "--yes").returncode == 0
    new_expects("wiped")
    assert learned(batch, "wiped") == mine


def test_a_success_is_learned_in_its_finish_and_a_failure_or_put_back_is_not(batch):
    """In process, on the real tables: a success recorded alone, with results, or together with the
    next claim (one round trip on MariaDB) puts its attempt's duration (the history row's) into the
    learned durations; a failure, a put-back, and a finish of a claim no longer ours do not."""
    table = batch.table("j", create=True)
    table.create([1, 2, 3, 4, 5, 6])
    ok = Outcome(ok=True)

    def claim():
        return table.claim("h", "w", 7)
    c1 = claim()
    then = NextClaim("h", "w", 7)
    assert table.finish(c1, ok, 3, then=then) == "done" and then.claim is not None
    assert sorted(assert_learned_as_histories(batch, ["j"])) == [c1.obsid]
    c2 = then.claim
    assert table.finish(c2, Outcome(ok=False, reason="no"), 3) == "pending"
    assert sorted(assert_learned_as_histories(batch, ["j"])) == [c1.obsid]
    c3 = claim()
    assert table.requeue(c3, "stopped")
    assert sorted(assert_learned_as_histories(batch, ["j"])) == [c1.obsid]
    c4 = claim()
    assert table.finish(c4, ok, 3, results={"x": 1}) == "done"
    c5 = claim()
    table._transaction(lambda cur: table._execute(cur, "UPDATE {job_table} SET token = NULL, state = 'pending' "
                                                  "WHERE obsid = :o", {"o": c5.obsid}), "taking it back")
    assert table.finish(c5, ok, 3) is None                            # no longer ours: nothing recorded
    assert sorted(assert_learned_as_histories(batch, ["j"])) == sorted([c1.obsid, c4.obsid])
    c6 = claim()
    assert table.finish(c6, ok, 3) == "done"
    assert sorted(assert_learned_as_histories(batch, ["j"])) == sorted([c1.obsid, c4.obsid, c6.obsid])
    table.close()


def test_a_success_recorded_late_is_learned_as_its_history_says(batch):
    """A claim taken back as lost (its worker frozen past its lease), whose success then comes late
    while nobody claimed the obsid again: recorded done by amend_taken_back, its history row amended
    to done, and its duration learned in that transaction (as the history row says it)."""
    table = batch.table("j", create=True)
    table.create([1, 2])
    claim = table.claim("h", "w", 7)
    table._transaction(lambda cur: table._take_back(cur, [claim.obsid], "worker lost: test", 3), "taking it back")
    assert learned(batch) == {}
    assert table.amend_taken_back(claim, Outcome(ok=True)) == "done"
    assert sorted(assert_learned_as_histories(batch, ["j"])) == [claim.obsid]
    table.close()


@pytest.mark.slow
def test_a_database_of_an_older_version_is_learned_once_by_two_new_at_once(batch):
    """30 earlier jobs (made in an order other than their names'), each with done attempts of some
    obsids (1-3 each, durations with fractions, NULL ends), failed and lost attempts (ignored), and
    obsids the new job does not have; then the learned durations dropped, as a database of an older
    version has none. Two `new` at once read the histories in: each gives every obsid what its latest
    successful attempt took, rounded, None where none has. A success recorded later in an earlier job
    wins over the histories read in again (its listing dropped): the latest wins, in any order."""
    rng = random.Random(21)
    names = [f"e{n:02d}" for n in range(30)]
    rng.shuffle(names)
    for name in names:
        table = batch.table(name, create=True)
        obsids = rng.sample(range(1, 400), 60)
        table.create(obsids)
        rows = []
        for obsid in obsids:
            for attempt in range(1, rng.randint(1, 3) + 1):
                started = 1.7e9 + rng.uniform(0, 1e6)
                took = rng.choice([rng.uniform(0, 5000), 0.5, 1.5, None])
                outcome = rng.choice(["done", "done", "failed", "lost"])
                rows.append({"token": uuid.uuid4().hex, "obsid": obsid, "attempt": attempt, "started": started,
                             "ended": None if took is None else started + took, "outcome": outcome})
        table._transaction(lambda cur, t=table, rows=rows: cur.executemany(t.statement(ATTEMPT), rows), "filling")
        table.close()
    drop_site_tables(batch, names[0])
    wanted = list(range(1, 500, 2))
    results = {}
    both = [threading.Thread(target=lambda job=job: results.update({job: batch.cli(job, "new", batch.obsid_file(
        wanted, job + ".txt"))})) for job in ("one", "two")]
    for t in both:
        t.start()
    for t in both:
        t.join()
    assert all(r.returncode == 0 for r in results.values()), [r.stderr for r in results.values()]
    oracle = latest_done(histories_of(batch, names))
    took = {o: (oracle[o][0] if o in oracle else None) for o in wanted}
    for job in ("one", "two"):
        table = batch.table(job)
        assert {r["obsid"]: r["expected"] for r in table.rows()} == expected_rounded(batch, job, took), job
        table.close()
    assert sum(v is not None for v in took.values()) > 100 and None in took.values(), took   # the test tests
    assert_learned_as_histories(batch, names, "one")

    # e00's first obsid succeeds now: the latest; the histories read in again do not undo it.
    table = batch.table("e00")
    claim = table.claim("h", "w", 7)
    assert table.finish(claim, Outcome(ok=True), 3) == "done"
    table._transaction(lambda cur: cur.execute("DELETE FROM site__durations_from"), "forgetting the listing")
    table.close()
    assert batch.cli("three", "new", batch.obsid_file(wanted, "three.txt")).returncode == 0
    now = assert_learned_as_histories(batch, names, "three")
    assert now[claim.obsid][2] == "e00", now[claim.obsid]


@pytest.mark.slow
def test_a_worker_killed_at_random_moments_leaves_the_learned_durations_as_its_history(batch, reaper):
    """A worker over 40 quick obsids is SIGKILLed three times at a random number of done obsids
    (a kill may land inside a finish's transaction); after each kill, and once a last run has
    finished the job, the learned durations hold exactly the successful attempts of the history:
    never a duration without its recorded success, nor a success without its duration."""
    rng = random.Random(5)
    obsids = [OBSID + i for i in range(40)]
    batch.write_cfg(hipe={"command": FAST_HIPE})
    batch.template("j", probe(first=0.01, later=0.01))
    new_job(batch, obsids)
    table = batch.table("j")

    def done():
        return sum(r["state"] == "done" for r in table.rows())
    for k in range(3):
        w = Worker(batch, reaper, f"w{k}")
        goal = min(len(obsids) - 1, done() + rng.randint(2, 8))
        wait_for(lambda g=goal: done() >= g or w.proc.poll() is not None, 120, f"{goal} obsids done")
        w.proc.kill()
        w.wait(30)
        assert_learned_as_histories(batch, ["j"])
        assert batch.cli("j", "reset", "--stale").returncode == 0
    r = batch.cli("j", "run", timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(assert_learned_as_histories(batch, ["j"])) == obsids
    table.close()


def test_a_worker_killed_while_its_success_commits_has_it_learned(mysql_batch, reaper):
    """MariaDB: the success, its learned duration and the next claim are one query ending with its
    COMMIT (no round trip more); SIGKILL to the worker while the reply to it is held (it committed):
    the duration is learned with the success, as the history says, and the killed worker's claim,
    taken back and run by the next worker, adds its own."""
    env = mysql_batch
    proxy = MySQLProxy(env.server.bind, env.server.port)
    try:
        env.write_cfg(sql={"port": str(proxy.port)}, hipe={"command": FAST_HIPE})
        obsids = [OBSID + i for i in range(3)]
        env.template("j", probe(first=0.05))
        new_job(env, obsids)
        proxy.log_queries = True
        proxy.hold = threading.Event()
        proxy.lose_commit_reply(r"SET state = 'done'.*site__durations.*SET state = 'running'")
        w = Worker(env, reaper, "w")
        wait_for(lambda: proxy.swallowed, 60, "a success, its duration and a claim to commit, the reply held")
        w.proc.kill()
        assert w.wait(30) == -signal.SIGKILL
        proxy.hold.set()
        [done] = [h["obsid"] for h in histories_of(env, ["j"])["j"] if h["outcome"] == "done"]
        assert sorted(assert_learned_as_histories(env, ["j"])) == [done]
        other = Worker(env, reaper, "other")
        assert other.wait(120) == 0, other.err()
        assert sorted(assert_learned_as_histories(env, ["j"])) == obsids
        successes = [q for q in proxy.queries if b"SET state = 'done'" in q]
        assert successes and all(b"site__durations" in q and q.rstrip().endswith(b"COMMIT") for q in successes)
    finally:
        proxy.close()
