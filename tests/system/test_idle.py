"""No idle tail: a worker waiting for obsids running elsewhere leaves within about a second of the
job having nothing left, and takes an obsid put back to pending within about a second, looking at
the table at most once a second once it has waited a little (worker.WAIT_FIRST, WAIT_POLL).

Real workers and the trivial HIPE, on both backends. Deadlines have slack for a loaded machine; the
looks themselves are counted from the waiting worker's -v log.
"""
import re
import signal
import time

import pytest

from support import wait_for

# Each obsid's script says it has started, then waits for output/go-OBSID (made by the test).
GATED = ("import os, time\n"
         "open(outDir + 'started-%d' % obsid, 'w').close()\n"
         "while not os.path.exists(outDir + 'go-%d' % obsid):\n"
         "    time.sleep(0.02)\n")
LOOK = re.compile(r" DEBUG .*nothing pending, obsids still running elsewhere")


class TwoWorkers:
    """Job `idle` of obsids 1 and 2, one worker (with -v) on each, both scripts started and held."""

    def __init__(self, batch, **run):
        if run:
            batch.write_cfg(run=run)
        self.batch, self.out = batch, batch.root / "jobs" / "idle" / "output"
        batch.template("idle", GATED)
        assert batch.cli("idle", "new", batch.obsid_file([1, 2])).returncode == 0
        self.procs, self.logs = {}, {}
        for i in range(2):
            self.logs[i] = batch.root / f"w{i}.err"
            with open(batch.root / f"w{i}.out", "w") as out, open(self.logs[i], "w") as err:
                proc = batch.popen("-v", "idle", "run", stdout=out, stderr=err)
            self.procs[proc.pid] = (proc, self.logs[i])
        wait_for(lambda: all((self.out / f"started-{o}").exists() for o in (1, 2)), 60, "both obsids to start")
        self.table = batch.table("idle")

    def holder(self, obsid):
        """The worker process running obsid."""
        return self.procs[self.table.row(obsid)["pid"]][0]

    def go(self, obsid):
        (self.out / f"go-{obsid}").touch()

    def looks(self, proc):
        return len(LOOK.findall(self.procs[proc.pid][1].read_text()))

    def kill(self):
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def two_workers(batch):
    made = []

    def make(**run):
        made.append(TwoWorkers(batch, **run))
        return made[-1]
    yield make
    for w in made:
        w.kill()


@pytest.mark.slow
def test_a_waiting_worker_leaves_within_a_second_of_the_last_obsid(batch, two_workers):
    w = two_workers()
    waiter, last = w.holder(1), w.holder(2)
    w.go(1)
    wait_for(lambda: w.looks(waiter) >= 1, 60, "the first worker to wait for obsid 2, running elsewhere")
    began = time.monotonic()
    time.sleep(4)   # the waiting is what is measured: how often it looks at the table
    w.go(2)
    wait_for(lambda: last.poll() is not None, 60, "the last obsid's worker to finish", interval=0.01)
    ended = time.monotonic()
    wait_for(lambda: waiter.poll() is not None, 10, "the waiting worker to leave", interval=0.01)
    tail = time.monotonic() - ended
    assert waiter.returncode == 0 and last.returncode == 0
    assert tail < 2.0, f"the waiting worker left {tail:.2f} s after the job had nothing left (about 1 s wanted)"
    looks, waited = w.looks(waiter), ended - began + 0.25
    # 0.25, 0.5, then 1 s apart: at most one look a second after the first two; and not a 5 s poll
    # (at least one look every 2 s, slack for a loaded machine).
    assert waited / 2 - 1 <= looks <= waited + 3, f"{looks} looks at the table in {waited:.1f} s of waiting"
    assert [r["state"] for r in w.table.rows()] == ["done", "done"]


@pytest.mark.slow
def test_a_waiting_worker_takes_an_obsid_put_back_within_a_second(batch, two_workers):
    w = two_workers()
    waiter, stopped = w.holder(1), w.holder(2)
    w.go(1)
    wait_for(lambda: w.looks(waiter) >= 3, 60, "the first worker to wait long enough for its looks to be 1 s apart")
    stopped.send_signal(signal.SIGTERM)   # obsid 2 goes back to pending, uncounted
    assert stopped.wait(timeout=60) == 128 + signal.SIGTERM
    wait_for(lambda: w.table.row(2)["state"] == "running", 10, "the waiting worker to take obsid 2")
    row = w.table.row(2)
    put_back = [h["ended"] for h in w.table.history(2) if h["outcome"] == "stopped"]
    assert row["pid"] == waiter.pid and len(put_back) == 1
    delay = row["started"] - put_back[0]   # both on the database's clock
    assert delay < 1.5, f"obsid 2 was taken {delay:.2f} s after it went back to pending (about 1 s wanted)"
    w.go(2)
    assert waiter.wait(timeout=60) == 0
    assert [r["state"] for r in w.table.rows()] == ["done", "done"] and row["attempts"] == 0


def test_without_wait_for_running_a_worker_leaves_at_once(batch, two_workers):
    w = two_workers(wait_for_running="no")
    leaver, other = w.holder(1), w.holder(2)
    w.go(1)
    # It leaves without looking again; its status is job-level: 1, the job is not all done yet.
    assert leaver.wait(timeout=30) == 1 and w.looks(leaver) == 0
    assert other.poll() is None
    w.go(2)
    assert other.wait(timeout=30) == 0
