"""`run -j`'s parent claims its workers' first obsids in one transaction and hands them over
(lib/batchUtility/first_claims.py, issue 21: the slots start together). Tried here: the claims are
the workers' own (their pids, their slots, run once); a parent killed between its claims and their
handing over (each worker finds its own, none is left running for a lease); a database that will not
take the parent's claims (each worker claims its own)."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exactly_once import assert_exactly_once, probe
from support import ROOT, new_job, wait_for


def test_run_j_runs_the_first_obsids_claimed_for_its_workers_once_each(batch):
    obsids = new_job(batch, range(1342190001, 1342190013), template=probe(first=0.3))
    r = batch.cli("-q", "j", "run", "-j", "4")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert_exactly_once(batch, obsids)
    history = batch.table("j").history()
    assert {h["attempt"] for h in history} == {1} and len(history) == len(obsids)
    # Each worker's attempts carry its own pid and slot, its first obsid (claimed by the parent) included.
    slots = {}
    for h in history:
        slots.setdefault(h["worker"], set()).add(h["pid"])
    assert sorted(slots) == ["1/4", "2/4", "3/4", "4/4"]
    assert all(len(pids) == 1 for pids in slots.values()), slots
    assert len({p for pids in slots.values() for p in pids}) == 4


DRIVER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {lib!r})
    from batchUtility import config
    from batchUtility.first_claims import FirstClaims
    from batchUtility.slot import Slot
    from batchUtility.storage import open_table

    cfg = config.load()
    claims, children = FirstClaims(2), {{}}
    for rank in (1, 2):
        pid = os.fork()
        if pid == 0:
            claims.in_worker()
            table = open_table(cfg.sql, "j", 30)
            got = claims.take(table, Slot(rank, 2, "here"), cfg.run.lease)
            with open({out!r} + str(rank), "w") as f:
                f.write("none" if got is None or got.claim is None else f"{{got.claim.obsid}} {{got.claim.token}}")
            os._exit(0)
        children[pid] = rank
    claims.forked()
    ready = claims.wait_ready(children, lambda: False)
    made = claims.claim_ready(cfg, "j", {{p: children[p] for p in ready}}, 2, "here", lambda: False)
    with open({out!r} + "parent", "w") as f:
        f.write(" ".join(f"{{w.claim.obsid}} {{w.claim.token}}" for w in sorted(made.values(), key=lambda w: w.worker)))
    os.kill(os.getpid(), signal.SIGKILL)   # before the claims are handed over
""")


def test_workers_whose_parent_died_before_handing_their_claims_over_take_them_up(batch, tmp_path):
    """The parent claims for both workers, then is SIGKILLed before it hands the claims over: its gate
    opens with nothing written. Each worker finds the claim made in its name (pid, start time, host,
    machine), the same token, so none is left running under a live pid until its lease runs out."""
    new_job(batch, [1342190001, 1342190002, 1342190003])
    out = str(tmp_path / "got.")
    driver = subprocess.run([sys.executable, "-c", DRIVER.format(lib=str(ROOT / "lib"), out=out)],
                            env=batch.env(), cwd=batch.root, capture_output=True, text=True, timeout=120)
    assert driver.returncode == -signal.SIGKILL, driver.stderr
    wait_for(lambda: all(os.path.exists(out + str(rank)) for rank in (1, 2)), 60, "both workers' answers")
    made = open(out + "parent").read().split()
    got = [open(out + str(rank)).read().split() for rank in (1, 2)]
    assert got == [made[:2], made[2:]]
    rows = {r["obsid"]: r for r in batch.table("j").rows()}
    assert sorted(o for o, r in rows.items() if r["state"] == "running") == sorted(int(g[0]) for g in got)
    assert [r["state"] for o, r in sorted(rows.items()) if o not in {int(g[0]) for g in got}] == ["pending"]


@pytest.mark.slow
def test_a_database_that_refuses_the_parents_claims_leaves_each_worker_its_own(sqlite_batch, tmp_path, reaper):
    """SQLite's write lock taken by another process once the parent forks (the parent SIGSTOPped
    meanwhile, so that the lock comes before its claims) and held past the parent's patience: the parent
    gives its claims up with one line, and each worker claims its own once the lock is free; every
    obsid once, each attempt counted once."""
    batch = sqlite_batch
    obsids = new_job(batch, range(1342190001, 1342190007), template=probe(first=0.2))
    err = tmp_path / "run.err"
    holder = sqlite3.connect(batch.root / "batch.sqlite", isolation_level=None, timeout=30)
    with open(err, "w") as stderr:
        run = _stopped_at_its_first_fork(batch, reaper, stderr, err)
        holder.execute("BEGIN IMMEDIATE")
        if any(r["state"] != "pending" for r in batch.table("j").rows()):   # claimed between two looks
            holder.execute("ROLLBACK")
            os.kill(run.pid, signal.SIGCONT)
            run.wait(timeout=300)
            pytest.skip("the parent claimed before it could be stopped")
        os.kill(run.pid, signal.SIGCONT)
        wait_for(lambda: "could not claim the workers' first obsids" in err.read_text(), 120, "the parent to give up")
        holder.execute("ROLLBACK")
        holder.close()
        assert run.wait(timeout=300) == 0, err.read_text()[-2000:]
    assert_exactly_once(batch, obsids)
    assert {(r["state"], r["attempts"]) for r in batch.table("j").rows()} == {("done", 1)}


def _stopped_at_its_first_fork(batch, reaper, stderr, err):
    """`run -j 3` started, and SIGSTOPped as soon as it has forked its first worker (before any claim:
    the workers wait until all are forked and ready)."""
    run = reaper.popen(subprocess.Popen([sys.executable, str(ROOT / "bin" / "BatchProcess.py"), "-q", "j", "run",
                                         "-j", "3"], env=batch.env(), cwd=batch.root, stdout=subprocess.DEVNULL,
                                        stderr=stderr))

    def stopped_once_forking():
        if not _children(run.pid):
            return False
        os.kill(run.pid, signal.SIGSTOP)
        return True
    assert wait_for(lambda: run.poll() is not None or stopped_once_forking(), 60, "the first worker forked",
                    interval=0.002) is True, err.read_text()
    return run


def _children(pid):
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_a_worker_frozen_before_it_is_ready_claims_its_own_once_continued(sqlite_batch, tmp_path, reaper):
    """One worker SIGSTOPped before it could say it is ready (the parent stopped at its first fork
    meanwhile): the parent waits its 10 s, claims for the others only, and they run; continued, the
    frozen worker finds no claim made for it and claims its own. Every obsid once, one attempt each."""
    batch = sqlite_batch
    obsids = new_job(batch, range(1342190001, 1342190013), template=probe(first=0.2))
    err = tmp_path / "run.err"
    with open(err, "w") as stderr:
        run = _stopped_at_its_first_fork(batch, reaper, stderr, err)
        frozen = _children(run.pid)[0]
        os.kill(frozen, signal.SIGSTOP)
        os.kill(run.pid, signal.SIGCONT)
        wait_for(lambda: {h["pid"] for h in batch.table("j").history()} - {frozen}, 120,
                 "the other workers to run obsids claimed for them")
        assert all(r["pid"] != frozen for r in batch.table("j").rows())   # nothing claimed in its name
        os.kill(frozen, signal.SIGCONT)
        assert run.wait(timeout=300) == 0, err.read_text()[-2000:]
    assert_exactly_once(batch, obsids)
    assert {(r["state"], r["attempts"]) for r in batch.table("j").rows()} == {("done", 1)}
    assert "Traceback" not in err.read_text()
    assert frozen in {h["pid"] for h in batch.table("j").history()}   # it claimed on its own


def test_a_template_version_known_to_run_is_told_by_a_read_that_waits_for_no_writer(batch):
    """What a worker looks at before its first claim (Worker.warm_up): only a `runs` verdict says
    yes; no table yet, a probe under way or a broken version say no; on SQLite the look does not
    wait for a writer holding the lock."""
    new_job(batch, [1342190001, 1342190002])
    table = batch.table("j")
    try:
        assert table.template_known_to_run("aaaa") is False   # no table of versions yet
        table.make_templates()
        claim = table.claim("here", "1/1", os.getpid(), 30.0)
        assert table.template_gate("aaaa", claim) == ("probe", "")
        assert table.template_known_to_run("aaaa") is False
        table.template_verdict("aaaa", "runs")
        assert table.template_gate("bbbb", table.claim("here", "1/1", os.getpid(), 30.0)) == ("probe", "")
        table.template_verdict("bbbb", "broken", "SyntaxError")
        assert table.template_gate("bbbb", claim)[0] == "broken"
        assert (table.template_known_to_run("aaaa"), table.template_known_to_run("bbbb")) == (True, False)
        if batch.backend == "sqlite":
            holder = sqlite3.connect(batch.root / "batch.sqlite", isolation_level=None, timeout=30)
            holder.execute("BEGIN IMMEDIATE")
            try:
                assert table.template_known_to_run("aaaa") is True
            finally:
                holder.execute("ROLLBACK")
                holder.close()
    finally:
        table.close()
