"""The worker's decisions, in-process and in milliseconds: a real Worker over an in-memory job table,
with a launcher that returns scripted launches and a guardian and lease keeper that start nothing
(batchUtility.testing). What became of each obsid is read from the table's rows and history."""
import io
import os
import signal
import sys

import pytest

from batchUtility import hipe
from batchUtility import worker as worker_module
from batchUtility.config import Config, HipeSettings, RunSettings
from batchUtility.errors import BlackHole, SetupBroken
from batchUtility.model import Outcome
from batchUtility.procfs import process_start
from batchUtility.slot import Slot
from batchUtility.storage import NextClaim
from batchUtility.testing import (
    FakeGuardian,
    FakeLauncher,
    FakeLeaseKeeper,
    InMemoryJobTable,
    cannot_run,
    claim_lost,
    done,
    fenced,
    killed,
    script_error,
    setup_fault,
    slow,
    stopped,
)
from batchUtility.worker import Worker, version_of
from support import settled

JOB = "j"


@pytest.fixture
def make(tmp_path):
    """make(table, launcher, **run settings) -> a Worker of job j over table, its collaborators fakes.
    The job's folder is real (run() checks the template and HIPE first, as it always does)."""
    (tmp_path / "jobs" / JOB).mkdir(parents=True)
    (tmp_path / "jobs" / JOB / f"{JOB}.py").write_text("print(obsid)\n")
    settled(tmp_path / "jobs" / JOB / f"{JOB}.py")
    made = []

    def make(table, launcher, max_time=None, first_claim=None, stopped_before=None, **run):
        settings = {"lease": 30.0, "max_attempts": 3, "db_patience": 60.0, "wait_for_running": True, **run}
        cfg = Config(tmp_path / "batch.cfg", tmp_path, None, HipeSettings((sys.executable,), "512m", (), 0.0),
                     RunSettings(**settings))
        w = Worker(cfg, table, JOB, Slot(1, 1, "here"), out=io.StringIO(), max_time=max_time,
                   launcher=launcher, guardian=FakeGuardian, lease_keeper=FakeLeaseKeeper,
                   first_claim=first_claim, stopped_before=stopped_before)
        made.append(w)
        return w
    yield make
    for w in made:   # whatever run() did, it closed what it started and removed its folder
        if w.guardian is not None:
            assert w.guardian.closed and w.keeper.closed
        assert w.scratch is None or not w.scratch.exists()


def states(table):
    return {row["obsid"]: (row["state"], row["attempts"]) for row in table.rows()}


def outcomes(table, obsid=None):
    return [(h["obsid"], h["attempt"], h["outcome"]) for h in table.history(obsid)]


def test_a_done_outcome_is_recorded_with_its_results_and_template(make):
    table = InMemoryJobTable(JOB, [1, 2])
    launcher = FakeLauncher(done(results={"flux": 1.5}), done())
    w = make(table, launcher)
    assert w.run() == 0
    assert states(table) == {1: ("done", 1), 2: ("done", 1)}
    assert outcomes(table) == [(1, 1, "done"), (2, 1, "done")]
    assert table.results(1) == {"flux": 1.5} and table.results(2) == {}
    assert table.row(1)["pipelined"] == 1 and table.row(1)["host"] == "here" and table.row(1)["pid"] == os.getpid()
    assert len(table.row(1)["template"]) == 12   # the template's version, recorded with the outcome
    assert (w.done, w.failed, w.attempts, w.processed) == (2, 0, 2, 2)
    assert "[#2, obsid=2]" in w.out.getvalue()


def test_a_script_error_fails_at_once(make):
    table = InMemoryJobTable(JOB, [1])
    launcher = FakeLauncher(script_error())
    assert make(table, launcher).run() == 1
    assert states(table) == {1: ("failed", 1)}
    assert outcomes(table) == [(1, 1, "failed")]
    assert table.row(1)["exit_code"] == 1
    assert launcher.obsids == [1]


def test_a_script_error_is_retried_with_retry_errors(make):
    table = InMemoryJobTable(JOB, [1])
    launcher = FakeLauncher(script_error(), done())
    assert make(table, launcher, retry_errors=True).run() == 0
    assert outcomes(table) == [(1, 1, "failed"), (1, 2, "done")]


def test_a_retriable_failure_goes_back_to_pending_until_max_attempts(make):
    table = InMemoryJobTable(JOB, [1, 2])
    seen = []

    def look(request, should_stop):   # the third launch of obsid 1: what the table says meanwhile
        seen.append((states(table)[1], outcomes(table, 1)))
        return killed()
    launcher = FakeLauncher(killed(), killed(), look, done())
    w = make(table, launcher)
    assert w.run() == 1
    assert launcher.obsids == [1, 1, 1, 2]
    assert seen == [(("running", 2), [(1, 1, "failed"), (1, 2, "failed")])]   # pending between tries, counted
    assert states(table) == {1: ("failed", 3), 2: ("done", 1)}
    assert outcomes(table, 1) == [(1, 1, "failed"), (1, 2, "failed"), (1, 3, "failed")]
    assert (w.done, w.failed, w.attempts, w.processed) == (1, 1, 4, 2)
    assert "[#1, obsid=1]" in w.out.getvalue() and "[#2, obsid=1]" not in w.out.getvalue()   # a retry keeps its number


def test_a_setup_fault_puts_the_obsid_back_uncounted_and_stops_the_worker(make):
    table = InMemoryJobTable(JOB, [1, 2])
    launcher = FakeLauncher(setup_fault("cannot start HIPE (hipe): No such file or directory"))
    with pytest.raises(SetupBroken) as raised:
        make(table, launcher).run()
    assert raised.value.obsid == 1 and "cannot start HIPE" in raised.value.reason
    assert states(table) == {1: ("pending", 0), 2: ("pending", 0)}
    assert outcomes(table) == [(1, 1, "setup")]
    assert launcher.obsids == [1]


def test_an_error_on_the_way_to_the_record_is_a_setup_fault(make):
    table = InMemoryJobTable(JOB, [1])

    def broken(request, should_stop):
        raise OSError(24, "Too many open files")
    with pytest.raises(SetupBroken, match="Too many open files"):
        make(table, FakeLauncher(broken)).run()
    assert states(table) == {1: ("pending", 0)}
    assert outcomes(table) == [(1, 1, "setup")]


def test_fenced_goes_back_uncounted_and_the_worker_goes_on(make):
    table = InMemoryJobTable(JOB, [1])
    assert make(table, FakeLauncher(fenced(), done())).run() == 0
    assert outcomes(table) == [(1, 1, "fenced"), (1, 1, "done")]
    assert states(table) == {1: ("done", 1)}


def other_worker_finished(table, obsid):
    """Another worker, on another host, claimed obsid and ran it to success just now."""
    table.add([obsid], expected={obsid: 10 ** 6})   # claimed first
    claim = table.claim("elsewhere", "1/1", 4242, 30.0)
    assert claim.obsid == obsid
    assert table.finish(claim, Outcome(True, "", 0), 3) == "done"


def test_quick_failures_while_others_succeed_make_a_black_hole(make):
    table = InMemoryJobTable(JOB, [1, 2, 3], expected={1: 30, 2: 20, 3: 10})
    other_worker_finished(table, 100)
    launcher = FakeLauncher(then=killed())
    with pytest.raises(BlackHole) as raised:
        make(table, launcher, max_attempts=10).run()
    assert (raised.value.failures, raised.value.elsewhere) == (worker_module.BLACK_HOLE_FAILURES, 1)
    assert launcher.obsids == [1] * worker_module.BLACK_HOLE_FAILURES
    assert states(table) == {1: ("pending", 5), 2: ("pending", 0), 3: ("pending", 0), 100: ("done", 1)}


def test_a_success_here_starts_the_count_of_quick_failures_again(make):
    table = InMemoryJobTable(JOB, [1, 2], expected={1: 20, 2: 10})
    other_worker_finished(table, 100)
    launcher = FakeLauncher(*[killed()] * 4, done(), then=killed())
    with pytest.raises(BlackHole):
        make(table, launcher, max_attempts=10).run()
    assert launcher.obsids == [1] * 5 + [2] * worker_module.BLACK_HOLE_FAILURES
    assert states(table) == {1: ("done", 5), 2: ("pending", 5), 100: ("done", 1)}


def test_quick_failures_with_no_success_elsewhere_are_no_black_hole(make):
    table = InMemoryJobTable(JOB, [1, 2])
    launcher = FakeLauncher(then=killed())
    assert make(table, launcher).run() == 1   # every obsid fails here and nowhere succeeds: the obsids' fault
    assert states(table) == {1: ("failed", 3), 2: ("failed", 3)}
    assert len(launcher.obsids) == 6


def test_slow_failures_are_no_black_hole(make):
    table = InMemoryJobTable(JOB, [1, 2])
    other_worker_finished(table, 100)
    launcher = FakeLauncher(then=killed(seconds=worker_module.QUICK_FAILURE))
    assert make(table, launcher).run() == 1
    assert states(table) == {1: ("failed", 3), 2: ("failed", 3), 100: ("done", 1)}


def test_halt_after_stops_a_worker_whose_first_attempts_are_all_script_errors(make):
    table = InMemoryJobTable(JOB, [1, 2, 3, 4])
    launcher = FakeLauncher(then=script_error())
    w = make(table, launcher, halt_after=2)
    assert w.run() == 1
    assert w.halted
    assert states(table) == {1: ("failed", 1), 2: ("failed", 1), 3: ("pending", 0), 4: ("pending", 0)}
    assert launcher.obsids == [1, 2]


def test_one_attempt_through_means_no_halt(make):
    table = InMemoryJobTable(JOB, [1, 2, 3, 4])
    launcher = FakeLauncher(done(), then=script_error())
    w = make(table, launcher, halt_after=2)
    assert w.run() == 1
    assert not w.halted
    assert states(table) == {1: ("done", 1), 2: ("failed", 1), 3: ("failed", 1), 4: ("failed", 1)}


def test_a_stop_signal_puts_the_obsid_back_as_stopped(make):
    table = InMemoryJobTable(JOB, [1, 2])
    before = signal.getsignal(signal.SIGTERM)
    launcher = FakeLauncher(stopped(signal.SIGTERM), then=done())
    assert make(table, launcher).run() == 128 + signal.SIGTERM
    assert states(table) == {1: ("pending", 0), 2: ("pending", 0)}
    assert outcomes(table) == [(1, 1, "stopped")]
    assert table.row(1)["reason"] == "stopped by SIGTERM"
    assert launcher.obsids == [1]   # nothing claimed after the stop
    assert signal.getsignal(signal.SIGTERM) is before   # the worker's handler taken away again


def test_a_claim_lost_records_nothing(make):
    table = InMemoryJobTable(JOB, [1])
    launcher = FakeLauncher(claim_lost(table, max_attempts=3), done())
    w = make(table, launcher)
    assert w.run() == 0
    first, second = w.keeper.held
    # Taken back by another worker (an attempt counted there); this worker recorded no outcome for its
    # first claim (no finish, no put-back) but undid the charge (the history says `fenced`: HIPE was
    # stopped, not the obsid's fault), claimed the obsid again and recorded that claim's outcome.
    assert [(op, claim.token) for op, claim in table.calls] == [("amend", first.token), ("finish", second.token)]
    assert outcomes(table) == [(1, 1, "fenced"), (1, 1, "done")]
    assert states(table) == {1: ("done", 1)}
    assert (w.done, w.failed) == (1, 0)


def test_max_time_stops_claiming(make):
    table = InMemoryJobTable(JOB, [1, 2, 3])
    launcher = FakeLauncher(slow(done(), 1.2), then=done())
    w = make(table, launcher, max_time=1.0)   # (a second: a loaded machine may take 0.04 s to claim)
    assert w.run() == 0
    assert launcher.obsids == [1]
    assert states(table) == {1: ("done", 1), 2: ("pending", 0), 3: ("pending", 0)}


def test_the_table_fences_a_late_outcome():
    table = InMemoryJobTable(JOB, [1])
    old = table.claim("here", "1/1", 1, 30.0)
    assert table.take_back(1, max_attempts=3) == [1]
    new = table.claim("there", "1/1", 2, 30.0)
    assert (old.attempt, new.attempt) == (1, 2)
    assert table.finish(old, Outcome(True), 3) is None and table.requeue(old, "stopped") is False
    assert table.heartbeat(old).value == "lost" and table.heartbeat(new).value == "held"
    assert table.finish(new, Outcome(False, "boom"), 2) == "failed"
    assert outcomes(table) == [(1, 1, "lost"), (1, 2, "failed")]


# ----------------------------------------------------------------------------- one commit per obsid (issue 21)
class CountingTable(InMemoryJobTable):
    """Counts the claims asked alone; on_finish(worker) is called after each finish (a stop arriving
    while the outcome and the next claim commit)."""

    def __init__(self, *args, on_finish=None, **kw):
        super().__init__(*args, **kw)
        self.alone, self.on_finish, self.worker = 0, on_finish, None

    def claim(self, *args, **kw):
        self.alone += 1
        return super().claim(*args, **kw)

    def finish(self, *args, **kw):
        state = super().finish(*args, **kw)
        if self.on_finish is not None:
            self.on_finish(self.worker, kw.get("then"))
        return state


def test_each_success_claims_the_next_obsid_with_its_outcome(make):
    """Only the first claim is asked alone; the last outcome saw nothing pending, so the worker asks no
    claim again before it looks for lost claims and leaves."""
    table = CountingTable(JOB, [1, 2, 3])
    w = make(table, FakeLauncher(then=done()))
    assert w.run() == 0
    assert table.alone == 1
    assert states(table) == {1: ("done", 1), 2: ("done", 1), 3: ("done", 1)}
    assert outcomes(table) == [(1, 1, "done"), (2, 1, "done"), (3, 1, "done")]


def test_a_failure_records_its_outcome_alone(make):
    """After a failure the worker judges itself (black hole, halt_after) before it claims again."""
    table = CountingTable(JOB, [1, 2])
    w = make(table, FakeLauncher(script_error(), then=done()), retry_errors=True)
    assert w.run() == 0
    assert table.alone == 2   # the first claim, and the one after the failure


def test_a_stop_while_the_outcome_commits_puts_the_next_claim_back(make):
    """A stop signal that comes while the outcome and the next claim commit: the claim is put back
    uncounted (history `stopped`), never run."""
    def stop(worker, then):
        worker.stop_signal = signal.SIGTERM
        assert then is not None and then.claim is not None   # it did claim
    table = CountingTable(JOB, [1, 2], on_finish=stop)
    launcher = FakeLauncher(then=done())
    w = table.worker = make(table, launcher)
    assert w.run() == 128 + signal.SIGTERM
    assert launcher.obsids == [1]
    assert states(table) == {1: ("done", 1), 2: ("pending", 0)}
    assert outcomes(table) == [(1, 1, "done"), (2, 1, "stopped")]
    assert "before it started" in table.row(2)["reason"]


def test_a_stopping_or_out_of_time_worker_claims_nothing_with_its_outcome(make):
    def stop(worker, then):
        assert then is None
    table = CountingTable(JOB, [1, 2, 3], on_finish=stop)
    w = table.worker = make(table, FakeLauncher(slow(done(), 1.2), then=done()), max_time=1.0)
    assert w.run() == 0
    assert outcomes(table) == [(1, 1, "done")]   # nothing else claimed, nothing put back
    holder = []

    def done_then_stopped(request, should_stop):   # HIPE ends done just as a stop signal comes
        holder[0].stop_signal = signal.SIGTERM
        return done()
    table = CountingTable(JOB, [1, 2], on_finish=stop)
    w = table.worker = make(table, FakeLauncher(done_then_stopped, then=done()))
    holder.append(w)
    assert w.run() == 128 + signal.SIGTERM
    assert outcomes(table) == [(1, 1, "done")]
    assert states(table) == {1: ("done", 1), 2: ("pending", 0)}
# ----------------------------------------------------------------------------- a template that cannot run (issue 22)
def test_a_template_that_cannot_run_halts_every_worker_and_counts_nothing(make):
    """The first launch of a version is the job's probe: HIPE cannot compile it, so the obsid goes
    back uncounted, the version is marked broken job-wide, and another worker (of any host) puts
    its claim back without launching. Before, each worker failed halt_after obsids, counted."""
    table = InMemoryJobTable(JOB, range(1, 9))
    first, second = FakeLauncher(then=cannot_run()), FakeLauncher(then=done())
    assert make(table, first).run() == 0
    assert make(table, second).run() == 0
    assert len(first.obsids) == 1
    assert second.obsids == []
    assert {(r["state"], r["attempts"]) for r in table.rows()} == {("pending", 0)}
    assert sorted(h["outcome"] for h in table.history()) == ["broken", "halted"]


def test_a_worker_waits_for_another_workers_probe_of_the_template(make):
    """While another claim probes the version, a worker holds its claim and launches nothing; once
    the probe compiled it, it launches."""
    table = InMemoryJobTable(JOB, [1, 2])
    prober = table.claim("there", "1/1", 99)
    version = "v"
    assert table.template_gate(version, prober) == ("probe", "")
    mine = table.claim("here", "1/1", 98)
    assert table.template_gate(version, mine) == ("wait", "")
    table.template_verdict(version, "runs")
    assert table.template_gate(version, mine) == ("runs", "")
    table.template_verdict(version, "broken", "SyntaxError")   # a later verdict of broken is final
    assert table.template_gate(version, mine) == ("broken", "SyntaxError")


def test_the_table_takes_a_claim_back_by_the_lease_watch_not_by_clocks():
    """InMemoryJobTable goes by storage's rule (LeaseWatch), so the worker's decisions are tested as
    they really are: a wall clock stepped an hour ahead takes nothing back; a claim is taken back only
    after its renewal stood still for a whole lease on the taker's monotonic clock, and a heartbeat
    starts the watch again. (Before: taken back at once when the wall clock passed lease_expires.)"""
    wall, mono = [1000.0], [50.0]
    table = InMemoryJobTable(JOB, [1], clock=lambda: wall[0], monotonic=lambda: mono[0])
    claim = table.claim("here", "1/1", 1, 30.0)
    wall[0] += 3600   # a clock step forward
    assert table.reclaim_stale(30.0, 3) == []          # first look: the watch starts
    mono[0] += 29
    assert table.reclaim_stale(30.0, 3) == []          # not yet a whole lease
    assert table.heartbeat(claim).value == "held"      # renewed: the watch starts again
    mono[0] += 2
    assert table.reclaim_stale(30.0, 3) == []
    mono[0] += 30
    assert table.reclaim_stale(30.0, 3) == [1]
    assert states(table) == {1: ("pending", 1)}


# ----------------------------------------------------------------------------- first claims made by the parent (issue 21)
def parent_claims(table, n, pid=None):
    """What `run -j`'s parent does for n workers (first_claims.py): their first obsids in one step, in
    the names of this process (it is alive: no reclaim pass takes them back) or of pid, pid+1, ..."""
    workers = [NextClaim("here", f"{i + 1}/{n}", (pid or os.getpid()) + i, 30.0,
                         pid_start=7 if pid else process_start(os.getpid())) for i in range(n)]
    table.claim_for(workers)
    return workers


def test_a_claim_handed_over_is_run_before_any_claim_of_its_own(make):
    table = CountingTable(JOB, [1, 2, 3], expected={1: 10, 2: 30, 3: 20})
    handed = parent_claims(table, 1)[0]
    assert handed.claim.obsid == 2   # longest expected first, as a claim of its own would take
    w = make(table, FakeLauncher(then=done()), first_claim=lambda: handed)
    table.worker = w
    assert w.run() == 0
    assert table.alone == 0   # the rest came with the outcomes
    assert [h.obsid for h in w.keeper.held] == [2, 3, 1]
    assert w.keeper.held[0].token == handed.claim.token
    assert states(table) == {1: ("done", 1), 2: ("done", 1), 3: ("done", 1)}


def test_a_claim_handed_over_to_a_stopping_worker_goes_back_uncounted(make):
    table = InMemoryJobTable(JOB, [1, 2])
    handed = parent_claims(table, 1)[0]
    launcher = FakeLauncher(then=done())
    w = make(table, launcher, first_claim=lambda: handed, stopped_before=lambda: signal.SIGTERM)
    assert w.run() == 128 + signal.SIGTERM
    assert launcher.obsids == []
    assert states(table) == {1: ("pending", 0), 2: ("pending", 0)}
    assert outcomes(table) == [(handed.claim.obsid, 1, "stopped")]


def test_nothing_pending_for_the_first_claim_claims_nothing_more(make):
    table = CountingTable(JOB, [1])
    first, second = parent_claims(table, 2)
    assert (first.claim.obsid, second.claim, second.nothing_pending) == (1, None, True)
    w = make(table, FakeLauncher(then=done()), first_claim=lambda: second, wait_for_running=False)
    assert w.run() == 0
    assert table.alone == 0 and w.keeper.held == []


def test_no_claim_handed_over_claims_its_own(make):
    table = CountingTable(JOB, [1])
    w = make(table, FakeLauncher(then=done()), first_claim=lambda: None)
    assert w.run() == 0
    assert table.alone == 1 and states(table) == {1: ("done", 1)}


def test_claims_made_for_a_worker_are_found_by_it_alone():
    table = InMemoryJobTable(JOB, [1, 2])
    a, b = parent_claims(table, 2, pid=100)
    assert [c.token for c in table.claimed_for("here", 100, 7, "m", 30.0)] == [a.claim.token]
    assert [c.token for c in table.claimed_for("here", 101, 7, "m", 30.0)] == [b.claim.token]
    assert table.claimed_for("here", 100, 8, "m", 30.0) == []   # the same pid, another process
    assert table.claimed_for("there", 100, 7, "m", 30.0) == []


class GateCountingTable(InMemoryJobTable):
    """Counts the looks at the template's verdict a launch makes (template_gate), by version."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gate_looks = []

    def template_gate(self, version, claim, **kw):
        self.gate_looks.append(version)
        return super().template_gate(version, claim, **kw)


def test_a_worker_handed_its_first_claim_looked_ahead_at_a_template_known_to_run(make):
    """Before its first claim is handed over, the worker has read the template, written its copy in
    its folder and learned that this version runs: the launch asks nothing more."""
    table = GateCountingTable(JOB, [1])
    template = "print(obsid)\n"
    table.templates[version_of(template)] = ["runs", None, ""]
    handed = parent_claims(table, 1)[0]
    copies = []

    def launch(request, should_stop):
        copies.append((w.scratch / hipe.TEMPLATE).read_text())
        return done()
    w = make(table, FakeLauncher(launch), first_claim=lambda: handed, wait_for_running=False)
    assert w.run() == 0
    assert table.gate_looks == []
    assert [r.template for r in w.launcher.requests] == [template] and copies == [template]
    assert states(table) == {1: ("done", 1)}


def test_a_template_changed_after_the_look_ahead_runs_as_changed(make, tmp_path):
    """The template rewritten between the look ahead (the old version known to run) and the first
    claim's hand-over: the launch runs the new text, and probes the new version first."""
    table = GateCountingTable(JOB, [1])
    old, new = "print(obsid)\n", "print(obsid + 1)\n"
    table.templates[version_of(old)] = ["runs", None, ""]
    handed = parent_claims(table, 1)[0]
    path = tmp_path / "jobs" / JOB / f"{JOB}.py"

    def rewritten_then_handed():
        path.write_text(new)
        settled(path)
        return handed
    w = make(table, FakeLauncher(then=done()), first_claim=rewritten_then_handed, wait_for_running=False)
    assert w.run() == 0
    assert table.gate_looks == [version_of(new)]
    assert [r.template for r in w.launcher.requests] == [new]
    assert [h["template"] for h in table.history()] == [version_of(new)]
