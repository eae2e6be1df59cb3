"""Slurm: workers started by srun and by job arrays, on a real Slurm cluster started here.

- (tests/unit/test_slurm.py: where a worker's slot comes from, from environments as Slurm sets them.)
- test_scripts_refuse_*: the sbatch scripts outside Slurm or without a job: one line, exit 2.
- The cluster (tests/slurm_cluster.py): munged, slurmctld and one slurmd of Debian's Slurm 22.05,
  in a temporary folder, on ports of their own; sinfo shows the node idle, then:
  - test_sbatch_whole_job: bin/BatchProcess_sbatch.sh, 4 tasks by srun, 300 obsids: every obsid
    done once, HIPE once per obsid, slots r/4 on the node's name, SUMMARY of every task, then the
    job-wide summary;
  - test_sbatch_mpi: the same script with --mpi (mpirun inside the allocation), 40 obsids;
  - test_sbatch_passes_a_workers_exit_4_on: an obsid's heap above the node's memory: the batch
    script ends with the workers' 4 (issue 23), nothing counted; by srun and by mpirun (--mpi);
    test_sbatch_passes_a_workers_exit_2_on: HIPE gone mid-run, the batch script ends with 2 (srun);
  - test_array: bin/BatchProcess_array.sh with 8 array tasks, 300 obsids; the job-wide summary
    printed once; test_array_stopped: `scancel --signal=TERM --full` to a running array;
  - test_scancel_full: `scancel --signal=TERM --full` mid-run, workers started by srun or (--mpi)
    by mpirun: every running obsid back to pending, `stopped` in its history, no attempt counted;
    a resubmission finishes the job;
  - test_plain_scancel: a plain `scancel` mid-run: nothing done, nothing failed; the next run
    (after the lease) finishes every obsid, each done once;
  - test_time_limit: `--time=1 --signal=B:TERM@30` on a job that cannot finish in a minute: when it
    ends nothing is running, nothing lost or failed, stopped obsids uncounted; a resubmission
    finishes;
- test_node_lost: two nodes, each a network namespace with its own slurmd, MariaDB on the bridge;
  one node's slurmd and everything it started SIGKILLed mid-run: the other node's workers take its
  obsids back after the lease and finish the job, and the batch script ends with the summary.
"""
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from mariadb_server import MariaDB
from slurm_cluster import Namespaces, SlurmCluster, missing_commands
from support import ROOT, BatchEnv, wait_for

SBATCH_SH = ROOT / "bin" / "BatchProcess_sbatch.sh"
ARRAY_SH = ROOT / "bin" / "BatchProcess_array.sh"
SLOT_LINE = re.compile(r"^\.\.\.\.\.  \[Slot (\d+)/(\d+) on (\S+)\] \[#(\d+), obsid=(\d+)\]$", re.M)
SUMMARY_LINE = re.compile(r"^(\S+) SLOT (\d+) SUMMARY: (\d+) obsids? processed", re.M)
FIRST = 1342190000
# A HIPE without Python start-up, for the big runs on two cores: it logs each call as
# tests/bin/trivial-hipe does and marks the script as run to its end, without running it.
FAST_HIPE = r"""#!/bin/sh
for script; do :; done
obsid=$(sed -n 's/^obsid=\([0-9]*\)$/\1/p' "$script")
printf '%s %s\n' "$obsid" "$$" >> "$TRIVIAL_HIPE_CALLS"
marker=$(sed -n 's/^open("\(.*\)", "w")\.close()$/\1/p' "$script" | tail -n 1)
[ -n "$marker" ] && printf end > "$marker"   # the script's last word: run to its end
"""


# --------------------------------------------------------------------------- slots from Slurm's environment
def run_worker_env(batch, **env):
    """`BatchProcess.py JOB run` with env, outside Slurm; returns its stdout."""
    clean = {k: v for k, v in batch.env().items() if not k.startswith(("SLURM", "OMPI_", "PMI"))}
    r = batch.cli("j", "run", env={**clean, **env})
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.slow
def test_worker_prints_slurm_slot(sqlite_batch):
    """The precedence as a worker applies it: srun step, array task, nothing; the host is
    SLURMD_NODENAME. (MPI before both: test_sbatch_mpi, mpirun inside an allocation.)"""
    batch = sqlite_batch
    make_job(batch, "j", 1, "pass\n")
    step = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "2", "SLURM_NTASKS": "3", "SLURMD_NODENAME": "node7"}
    array = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8",
             "SLURMD_NODENAME": "node8"}
    cases = [(step, "3/3 on node7"), (array, "5/8 on node8"), ({**array, **step}, "3/3 on node7"),
             ({}, f"1/1 on {socket.gethostname()}")]
    for env, expected in cases:
        batch.cli("j", "reset", "--yes")
        out = run_worker_env(batch, **env)
        assert f"[Slot {expected}]" in out, (env, out)


# --------------------------------------------------------------------------- the scripts, no cluster
@pytest.mark.parametrize("script", [SBATCH_SH, ARRAY_SH])
def test_scripts_refuse_outside_slurm(sqlite_batch, script):
    env = {k: v for k, v in sqlite_batch.env().items() if not k.startswith("SLURM")}
    r = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith(f"{script.name} JOB"), r.stderr   # the usage
    for args, expected in [(["--mpi"], "the first argument must be the job's name"),
                           (["j"], "not inside a Slurm job")]:
        r = subprocess.run([str(script), *args], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith(f"{script.name}: error: ") and expected in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


# --------------------------------------------------------------------------- helpers
def make_job(batch, job, n, template, **cfg):
    obsids = list(range(FIRST, FIRST + n))
    batch.write_cfg(**cfg)
    batch.template(job, template)
    r = batch.cli(job, "new", batch.obsid_file(obsids))
    assert r.returncode == 0, r.stderr
    return obsids


def fast_hipe(batch):
    path = batch.root / "fast-hipe"
    path.write_text(FAST_HIPE)
    path.chmod(0o755)
    return str(path)


def done_once(batch, job, obsids):
    """Every obsid is done, and the history holds exactly one successful attempt of each."""
    table = batch.table(job)
    rows = table.rows()
    assert sorted(r["obsid"] for r in rows) == obsids
    assert {r["state"] for r in rows} == {"done"}, table.counts()
    assert sorted(h["obsid"] for h in table.history() if h["outcome"] == "done") == obsids
    return rows


def submit(cluster, batch, args, name="slurm"):
    """sbatch from the batch root; its output in ROOT/NAME.out (%a added for arrays)."""
    out = batch.root / (f"{name}-%a.out" if any(str(a).startswith("--array") for a in args) else f"{name}.out")
    env = batch.env(HIPE_BATCH_PYTHON=sys.executable, HIPE_BATCH_SLURM_GRACE=5)
    return cluster.sbatch([f"--output={out}", f"--chdir={batch.root}", *args], env=env, cwd=batch.root)


def output(batch, name="slurm"):
    return "".join(p.read_text() for p in sorted(batch.root.glob(f"{name}*.out")))


def stopped_cleanly(batch, job, obsids):
    """Nothing running; every obsid done or pending; only `done` and `stopped` in the history; no
    pending obsid has an attempt counted."""
    table = batch.table(job)
    counts = table.counts()
    assert counts["running"] == 0 and counts["failed"] == 0, counts
    assert counts["pending"] + counts["done"] == len(obsids)
    history = table.history()
    assert {h["outcome"] for h in history} <= {"done", "stopped"}, history
    assert all(r["attempts"] == 0 for r in table.rows() if r["state"] == "pending")
    return [h["obsid"] for h in history if h["outcome"] == "stopped"]


# --------------------------------------------------------------------------- one node
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_commands()
    if missing:
        pytest.skip(f"Slurm is not installed here (missing {', '.join(missing)}; see .ci/install)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs Slurm's daemons as root")
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"), {socket.gethostname(): "127.0.0.1"})
    try:
        yield c.start()
    finally:
        left = c.stop()
        assert not left, f"processes left by the Slurm cluster: {left}"


@pytest.fixture(autouse=True)
def _no_job_left(request):
    """The cluster lives for the whole module: a test that failed half-way must not leave its jobs
    running into the next tests (one early failure used to fail the four tests after it too)."""
    yield
    if "cluster" in request.fixturenames:
        request.getfixturevalue("cluster").cancel_all()


NODE = socket.gethostname()
SMALL = ["--cpus-per-task=1", "--mem-per-cpu=200M"]  # the scripts' defaults are for HIPE on real nodes


@pytest.mark.slow
@pytest.mark.slurm
def test_sbatch_whole_job(cluster, sqlite_batch):
    batch = sqlite_batch
    obsids = make_job(batch, "big", 300, "pass\n", hipe={"command": fast_hipe(batch)})
    job = submit(cluster, batch, ["--ntasks=4", *SMALL, SBATCH_SH, "big"])
    assert cluster.wait_ended(job, 240) == ["COMPLETED"], output(batch)
    out = output(batch)

    rows = done_once(batch, "big", obsids)
    assert sorted(batch.calls_list()) == obsids           # HIPE once per obsid
    assert all(r["attempts"] == 1 for r in rows)
    assert {r["host"] for r in rows} == {NODE}
    assert {r["worker"] for r in rows} <= {f"{k}/4" for k in range(1, 5)}
    lines = SLOT_LINE.findall(out)
    assert sorted(int(o) for *_, o in lines) == obsids
    assert {(int(r), int(s), h) for r, s, h, _, _ in lines} == {(k, 4, NODE) for k in range(1, 5)}
    assert sorted(int(s) for _, s, _ in SUMMARY_LINE.findall(out)) == [1, 2, 3, 4]
    assert "job-wide summary of job big" in out
    assert out.index("job-wide summary") > max(m.start() for m in SUMMARY_LINE.finditer(out))
    assert "300 of 300 processed. (100.0 %, 0 remaining)" in out
    assert re.search(rf"^  {re.escape(NODE)}\s+300\s+0\s", out, re.M), out[-1000:]


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.mpi
def test_sbatch_mpi(cluster, sqlite_batch):
    batch = sqlite_batch
    obsids = make_job(batch, "viampi", 40, "pass\n", hipe={"command": fast_hipe(batch)})
    job = submit(cluster, batch, ["--ntasks=2", *SMALL, SBATCH_SH, "viampi", "--mpi"])
    assert cluster.wait_ended(job, 240) == ["COMPLETED"], output(batch)
    out = output(batch)
    done_once(batch, "viampi", obsids)
    assert {(int(r), int(s)) for r, s, *_ in SLOT_LINE.findall(out)} <= {(1, 2), (2, 2)}
    assert sorted(int(s) for _, s, _ in SUMMARY_LINE.findall(out)) == [1, 2]
    assert "BatchProcess_mpi.sh: job-wide summary of job viampi" in out
    assert "40 of 40 processed." in out


@pytest.mark.parametrize("mpi", [[], pytest.param(["--mpi"], marks=pytest.mark.mpi)], ids=["srun", "mpirun"])
@pytest.mark.slow
@pytest.mark.slurm
def test_sbatch_passes_a_workers_exit_4_on(cluster, sqlite_batch, mpi):
    """A heap above the node's whole memory: each task's worker puts the obsid back and stops with
    4 (one line), which srun passes on as its highest task status (mpirun does not: the MPI
    launcher finds the worker's line); the batch script ends with 4 too (it ended with the job's 1),
    and nothing was counted."""
    batch = sqlite_batch
    make_job(batch, "big", 1, "pass\n", hipe={"command": fast_hipe(batch), "memory": "1024g"})
    job = submit(cluster, batch, ["--ntasks=2", *SMALL, SBATCH_SH, "big", *mpi])
    assert cluster.wait_ended(job, 240) == ["FAILED"], output(batch)
    assert cluster.job(job)["ExitCode"] == "4:0", output(batch)
    out = output(batch)
    said = [line for line in out.splitlines() if line.startswith("BatchProcess.py: error:")]
    assert said and all("needs a Java heap of 1048576m but this worker can have at most" in line for line in said), said
    assert "srun ended with status" not in out and "Traceback" not in out
    table = batch.table("big")
    assert [(r["state"], r["attempts"]) for r in table.rows()] == [("pending", 0)]
    assert {h["outcome"] for h in table.history()} == {"memory"} and batch.calls_list() == []


@pytest.mark.slow
@pytest.mark.slurm
def test_sbatch_passes_a_workers_exit_2_on(cluster, sqlite_batch):
    """HIPE gone after its first launch (it removes itself): the worker puts the next obsid back
    uncounted and stops with 2 and one line; srun ends with 2, its highest task's status, and the
    batch script with 2 too (it ended with the job's 1 before)."""
    batch = sqlite_batch
    hipe = batch.root / "vanishing-hipe"
    hipe.write_text(FAST_HIPE.replace("#!/bin/sh\n", '#!/bin/sh\nrm -f "$0"\n', 1))
    hipe.chmod(0o755)
    make_job(batch, "gone", 3, "pass\n", hipe={"command": str(hipe)})
    job = submit(cluster, batch, ["--ntasks=1", *SMALL, SBATCH_SH, "gone"])
    assert cluster.wait_ended(job, 240) == ["FAILED"], output(batch)
    assert cluster.job(job)["ExitCode"] == "2:0", output(batch)
    out = output(batch)
    [said] = [line for line in out.splitlines() if line.startswith("BatchProcess.py: error:")]
    assert f"cannot start HIPE ({hipe})" in said and "put back to pending and worker stopped" in said, said
    assert "srun ended with status" not in out and "Traceback" not in out
    assert "1 of 3 processed." in out, out[-2000:]
    rows = batch.table("gone").rows()
    assert sorted((r["state"], r["attempts"]) for r in rows) == [("done", 1), ("pending", 0), ("pending", 0)]


@pytest.mark.slow
@pytest.mark.slurm
def test_array(cluster, sqlite_batch):
    batch = sqlite_batch
    obsids = make_job(batch, "arr", 300, "pass\n", hipe={"command": fast_hipe(batch)})
    job = submit(cluster, batch, ["--array=1-8", "--cpus-per-task=1", "--mem=200M", ARRAY_SH, "arr"])
    states = cluster.wait_ended(job, 240)
    assert states == ["COMPLETED"] * 8, output(batch)
    out = output(batch)

    rows = done_once(batch, "arr", obsids)
    assert sorted(batch.calls_list()) == obsids
    assert {r["worker"] for r in rows} <= {f"{k}/8" for k in range(1, 9)}
    lines = SLOT_LINE.findall(out)
    assert sorted(int(o) for *_, o in lines) == obsids
    assert {h for _, _, h, _, _ in lines} == {NODE}
    summaries = SUMMARY_LINE.findall(out)
    assert sorted(int(s) for _, s, _ in summaries) == list(range(1, 9))   # every task's worker
    assert sum(int(n) for *_, n in summaries) == 300
    assert out.count("job-wide summary of job arr") == 1, out[-3000:]
    assert out.count("300 of 300 processed. (100.0 %, 0 remaining)") == 1
    kept = batch.root / "jobs" / "arr" / "log" / f"slurm-array-{job}.summary"
    assert "300 of 300 processed." in kept.read_text()


SLEEPY = "import time\ntime.sleep(600)\n"


@pytest.mark.slow
@pytest.mark.slurm
def test_array_stopped(cluster, sqlite_batch):
    """`scancel --signal=TERM --full` to a running array: every task's worker puts its obsid back."""
    batch = sqlite_batch
    obsids = make_job(batch, "arrstop", 8, SLEEPY)
    job = submit(cluster, batch, ["--array=1-3", "--cpus-per-task=1", "--mem=200M", ARRAY_SH, "arrstop"])
    table = batch.table("arrstop")
    wait_for(lambda: (table.counts()["running"] == 3 and len(batch.calls_list()) == 3)
             or cluster.over(job),
             120, "three array tasks each running HIPE")
    running = sorted(r["obsid"] for r in table.rows() if r["state"] == "running")
    assert len(running) == 3, output(batch)
    cluster.run(["scancel", "--signal=TERM", "--full", str(job)])
    cluster.wait_ended(job, 120)
    out = output(batch)
    assert sorted(stopped_cleanly(batch, "arrstop", obsids)) == running
    assert table.counts()["pending"] == 8
    assert sorted(int(s) for _, s, _ in SUMMARY_LINE.findall(out)) == [1, 2, 3]
    assert "job-wide summary" not in out   # the job is not finished


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.parametrize("launcher", ["srun", "mpi"])
def test_scancel_full(cluster, sqlite_batch, launcher):
    batch = sqlite_batch
    obsids = make_job(batch, "stop", 12, SLEEPY)
    job = submit(cluster, batch, ["--ntasks=4", *SMALL, SBATCH_SH, "stop", *(["--mpi"] if launcher == "mpi" else [])],
                 name="first")
    table = batch.table("stop")
    wait_for(lambda: (table.counts()["running"] == 4 and len(batch.calls_list()) == 4)
             or cluster.over(job), 120, "four workers each running HIPE")
    running = sorted(r["obsid"] for r in table.rows() if r["state"] == "running")
    assert len(running) == 4, output(batch, "first")
    cluster.run(["scancel", "--signal=TERM", "--full", str(job)])
    cluster.wait_ended(job, 120)
    out = output(batch, "first")

    assert sorted(stopped_cleanly(batch, "stop", obsids)) == running
    assert table.counts() == {"pending": 12, "running": 0, "done": 0, "failed": 0}
    assert "SIGTERM: every worker puts its running obsid back to pending and stops" in out
    assert sorted(int(s) for _, s, _ in SUMMARY_LINE.findall(out)) == [1, 2, 3, 4]
    assert "0 of 12 processed." in out
    cluster.wait_no_job_processes()

    batch.write_cfg(hipe={"command": fast_hipe(batch)})   # resubmitted: only pending obsids run, and finish
    again = submit(cluster, batch, ["--ntasks=4", *SMALL, SBATCH_SH, "stop"], name="second")
    assert cluster.wait_ended(again, 120) == ["COMPLETED"], output(batch, "second")
    rows = done_once(batch, "stop", obsids)
    assert all(r["attempts"] == 1 for r in rows)   # the stopped attempts were not counted
    assert sorted(batch.calls_list()) == sorted(obsids + running)
    assert "12 of 12 processed." in output(batch, "second")


@pytest.mark.slow
@pytest.mark.slurm
def test_plain_scancel(cluster, sqlite_batch):
    """A plain scancel (SIGTERM to every process of the job, SIGKILL KillWait seconds later): nothing
    is lost; whatever was left running is taken back by the next run after the lease."""
    batch = sqlite_batch
    obsids = make_job(batch, "plain", 12, SLEEPY, run={"lease": "3"})
    job = submit(cluster, batch, ["--ntasks=4", *SMALL, SBATCH_SH, "plain"], name="first")
    table = batch.table("plain")
    wait_for(lambda: (table.counts()["running"] == 4 and len(batch.calls_list()) == 4)
             or cluster.over(job), 120, "four workers each running HIPE")
    running = sorted(r["obsid"] for r in table.rows() if r["state"] == "running")
    assert len(running) == 4, output(batch, "first")
    cluster.run(["scancel", str(job)])
    assert cluster.wait_ended(job, 120) == ["CANCELLED"]
    cluster.wait_no_job_processes()
    counts = table.counts()
    assert counts["done"] == 0 and counts["failed"] == 0 and counts["pending"] + counts["running"] == 12, counts

    batch.write_cfg(hipe={"command": fast_hipe(batch)}, run={"lease": "3"})
    again = submit(cluster, batch, ["--ntasks=2", *SMALL, SBATCH_SH, "plain"], name="second")
    assert cluster.wait_ended(again, 120) == ["COMPLETED"], output(batch, "second")
    done_once(batch, "plain", obsids)
    history = table.history()
    assert {h["outcome"] for h in history} <= {"done", "stopped", "lost"}, history
    assert sorted(h["obsid"] for h in history if h["outcome"] in ("stopped", "lost")) == running


@pytest.mark.slow
@pytest.mark.slurm
def test_time_limit(cluster, sqlite_batch):
    """A job that needs minutes, given one (Slurm's time limits are in minutes; it sends the
    --signal up to a minute early, as its manual says): stopped in time, nothing lost."""
    batch = sqlite_batch
    obsids = make_job(batch, "late", 120, "import time\ntime.sleep(2)\n")   # two workers: 60 a minute at most
    started = time.monotonic()
    job = submit(cluster, batch, ["--ntasks=2", *SMALL, "--time=1", "--signal=B:TERM@10", SBATCH_SH, "late"],
                 name="first")
    table = batch.table("late")
    states = cluster.wait_ended(job, 150)
    took = time.monotonic() - started
    out = output(batch, "first")
    assert states[0] in ("COMPLETED", "FAILED", "TIMEOUT"), states
    assert took < 100, f"the job ran {took:.0f} s"
    stopped = stopped_cleanly(batch, "late", obsids)
    assert "SIGTERM: every worker puts its running obsid back to pending and stops" in out
    assert table.counts()["pending"] > 0
    assert "job-wide summary of job late" in out
    cluster.wait_no_job_processes()

    batch.write_cfg(hipe={"command": fast_hipe(batch)})   # resubmitted: the rest finishes at once
    again = submit(cluster, batch, ["--ntasks=2", *SMALL, SBATCH_SH, "late"], name="second")
    assert cluster.wait_ended(again, 120) == ["COMPLETED"], output(batch, "second")
    rows = done_once(batch, "late", obsids)
    assert all(r["attempts"] == 1 for r in rows)
    # A stopped obsid was run again; it may have been stopped before its HIPE started (no call then).
    calls = batch.calls_list()
    assert sorted(set(calls)) == sorted(obsids)
    assert all(calls.count(o) <= 1 + stopped.count(o) for o in obsids), calls


# --------------------------------------------------------------------------- two nodes
@pytest.fixture
def two_nodes(tmp_path):
    missing = missing_commands()
    if missing:
        pytest.skip(f"Slurm is not installed here (missing {', '.join(missing)}; see .ci/install)")
    net = Namespaces(("h1", "h2"))
    why = net.available()
    if why:
        pytest.skip(f"cannot create network namespaces here ({why})")
    cluster = server = None
    try:
        net.setup()
        server = MariaDB(tmp_path / "mariadb", bind=net.address).start()
        cluster = SlurmCluster(tmp_path / "slurm", net.addresses, netns=net.netns, ctld_addr=net.address,
                               slurmd_timeout=5)
        cluster.start()
        yield cluster, server
    finally:
        left = cluster.stop() if cluster else []
        if server:
            server.cleanup()
        net.cleanup()
        assert not left, f"processes left by the Slurm cluster: {left}"


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.netns
def test_node_lost(two_nodes, tmp_path):
    cluster, server = two_nodes
    batch = BatchEnv(tmp_path / "root", "mysql", server, server.create_database("nodelost"))
    n = 40
    obsids = make_job(batch, "lost", n, "import time\ntime.sleep(0.5)\n", run={"lease": "5"})
    job = submit(cluster, batch, ["--nodes=2", "--ntasks-per-node=2", *SMALL, SBATCH_SH, "lost"])
    table = batch.table("lost")
    wait_for(lambda: cluster.over(job) or (
        table.counts()["done"] >= 6 and any(r["state"] == "running" and r["host"] == "h2" for r in table.rows())),
        120, "h2 running an obsid after a few were done")
    assert cluster.job(job)["JobState"] == "RUNNING", output(batch)
    assert cluster.job(job)["BatchHost"] == "h1"

    cluster.kill_node("h2")     # slurmd, slurmstepd, workers, HIPE: all SIGKILLed at once
    lost_at = time.time()
    # What h2 was running when it died (read after the kill: an obsid may have ended just before it).
    on_h2 = [r["obsid"] for r in table.rows() if r["state"] == "running" and r["host"] == "h2"]

    states = cluster.wait_ended(job, 180)
    out = output(batch)
    done = table.rows()
    assert {r["state"] for r in done} == {"done"}, (table.counts(), out[-3000:])
    history = table.history()
    assert sorted(h["obsid"] for h in history if h["outcome"] == "done") == obsids
    assert on_h2, "no obsid was running on h2 when it was lost"
    for obsid in on_h2:   # recorded as lost on h2, then done on h1
        attempts = [(h["host"], h["outcome"]) for h in history if h["obsid"] == obsid]
        assert ("h2", "lost") in attempts and attempts[-1] == ("h1", "done"), attempts
    assert not [h for h in history if h["host"] == "h2" and h["started"] > lost_at]
    assert f"{n} of {n} processed." in out, (states, out[-3000:])
    assert cluster.node_states().get("h2", "").rstrip("*") in ("down", "idle", "unknown", "down~", "idle~")

