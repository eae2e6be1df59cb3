"""A worker's start (issue 21): a `run -j` prepares the job once (checks it, takes back what dead and
lost workers left) before it forks its workers, which then start with their first claim; a worker on
its own (`run`, MPI, Slurm) still does both itself. Over the in-memory job table (batchUtility.testing)."""
import io
import subprocess
import sys

import pytest

from batchUtility.config import Config, HipeSettings, RunSettings
from batchUtility.errors import TemplateMissing
from batchUtility.procfs import process_start
from batchUtility.slot import Slot
from batchUtility.testing import FakeGuardian, FakeLauncher, FakeLeaseKeeper, InMemoryJobTable, done
from batchUtility.worker import Worker
from support import settled

JOB = "j"


class RecordingTable(InMemoryJobTable):
    """The in-memory table, noting the order of claims and reclaim passes."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.asked = []

    def claim(self, *args, **kw):
        self.asked.append("claim")
        return super().claim(*args, **kw)

    def reclaim_dead_here(self, *args, **kw):
        self.asked.append("reclaim_dead_here")
        return super().reclaim_dead_here(*args, **kw)

    def reclaim_stale(self, *args, **kw):
        self.asked.append("reclaim_stale")
        return super().reclaim_stale(*args, **kw)


@pytest.fixture
def worker(tmp_path):
    """worker(table, launcher, prepared=...) -> a Worker of job j in slot 1/1 on host `here`."""
    template = tmp_path / "jobs" / JOB / f"{JOB}.py"
    template.parent.mkdir(parents=True)
    template.write_text("print(obsid)\n")
    settled(template)
    cfg = Config(tmp_path / "batch.cfg", tmp_path, None, HipeSettings((sys.executable,), "512m", (), 0.0),
                 RunSettings(lease=30.0, max_attempts=3, db_patience=60.0, wait_for_running=True))

    def make(table, launcher, prepared=False):
        return Worker(cfg, table, JOB, Slot(1, 1, "here"), out=io.StringIO(), launcher=launcher,
                      guardian=FakeGuardian, lease_keeper=FakeLeaseKeeper, prepared=prepared)
    make.template = template
    return make


def dead_claim(table, obsid):
    """obsid claimed on host `here` by a process that is gone (its start time recorded)."""
    proc = subprocess.Popen(["sleep", "60"])
    start = process_start(proc.pid)
    proc.kill()
    proc.wait()
    table.claim("here", "9/9", proc.pid, 30.0, pid_start=start)
    assert table.row(obsid)["state"] == "running"
    table.asked.clear()


def test_a_worker_on_its_own_takes_back_what_dead_workers_left_before_its_first_claim(worker):
    table = RecordingTable(JOB, [1, 2])
    dead_claim(table, 1)
    assert worker(table, FakeLauncher(done(), done())).run() == 0
    assert table.asked[:3] == ["reclaim_dead_here", "reclaim_stale", "claim"]
    assert [(h["attempt"], h["outcome"]) for h in table.history(1)] == [(1, "lost"), (2, "done")]


def test_run_j_prepares_once_and_its_workers_start_with_their_claim(worker):
    table = RecordingTable(JOB, [1, 2, 3])
    dead_claim(table, 1)
    worker(table, FakeLauncher()).prepare()   # the parent of `run -j`, before the fork
    assert table.asked == ["reclaim_dead_here", "reclaim_stale"]
    assert table.row(1)["state"] == "pending" and table.history(1)[0]["outcome"] == "lost"
    table.asked.clear()
    assert worker(table, FakeLauncher(done(), done(), done()), prepared=True).run() == 0
    assert table.asked[0] == "claim"   # no reclaim pass before the first claim
    assert [(h["attempt"], h["outcome"]) for h in table.history(1)] == [(1, "lost"), (2, "done")]
    assert {row["obsid"]: row["state"] for row in table.rows()} == {1: "done", 2: "done", 3: "done"}


def test_prepare_checks_the_job_as_run_does(worker):
    worker.template.unlink()
    with pytest.raises(TemplateMissing):
        worker(RecordingTable(JOB, [1]), FakeLauncher()).prepare()
