"""Connections (issue 18, item 1): at most one per worker, a server with none to spare waited for.

Each test gives the job a MariaDB user of its own on the session's server, capped with
MAX_USER_CONNECTIONS where the test needs a server short of connections, and counts that user's
connections on the server (information_schema.processlist). HIPE launches are counted with the
trivial HIPE's $TRIVIAL_HIPE_CALLS file.
"""
import itertools
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter

import MySQLdb
import pytest

from exactly_once import assert_exactly_once, probe
from support import ROOT, Worker, kill_a_slot_worker, new_job, wait_for

MPI_SH = ROOT / "bin" / "BatchProcess_mpi.sh"
WARNING = re.compile(r"^BatchProcess(?:_mpi\.sh|_sbatch\.sh|\.py): warning: this run needs (?:at least )?(\d+) connections .*$",
                     re.M)
_users = itertools.count(1)


@pytest.fixture
def own_user(mysql_batch):
    """own_user(cap, **run): the job's batch.cfg now names a user of its own, allowed `cap` connections
    at once (0: no cap), with every right on the test's database, and `run`'s keys in [run]. The user
    is dropped at the end."""
    env, made = mysql_batch, []

    def make(cap=0, **run):
        name = f"c{os.getpid()}_{next(_users)}"
        with env.server.admin() as c:
            cur = c.cursor()
            cur.execute(f"CREATE USER '{name}'@'%' IDENTIFIED BY 'pw-{name}' WITH MAX_USER_CONNECTIONS {cap}")
            cur.execute(f"GRANT ALL ON `{env.db}`.* TO '{name}'@'%'")
        made.append(name)
        env.write_cfg(sql={"user": name, "pswd": f"pw-{name}"}, run=run)
        return name

    yield make
    with env.server.admin() as c:
        for name in made:
            c.cursor().execute(f"DROP USER IF EXISTS '{name}'@'%'")


def connections_of(env, user):
    with env.server.admin() as c:
        cur = c.cursor()
        cur.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE user = %s", (user,))
        return cur.fetchone()[0]


def outcomes(env, job="j"):
    """The history's outcomes, counted: {outcome: attempts}."""
    with env.server.admin(env.db) as c:
        cur = c.cursor()
        cur.execute(f"SELECT outcome, COUNT(*) FROM `{job}__attempts` GROUP BY outcome")
        return dict(cur.fetchall())


def connect_as(env, user):
    return MySQLdb.connect(host=env.server.bind, port=env.server.port, user=user, password=f"pw-{user}",
                           database=env.db)


@pytest.mark.slow
def test_run_j_6_under_a_cap_of_5_connections_runs_each_obsid_once(mysql_batch, own_user, reaper):
    """6 workers, the user allowed 5 connections: one worker waits for a connection (it does not exit),
    the others renew their leases through their one connection: every obsid launched exactly once,
    none fenced. (Before: a second connection per worker for its heartbeats, refused; HIPE killed at
    70 % of the lease again and again, 110 launches and nothing finished in 150 s.)"""
    env = mysql_batch
    obsids = list(range(1342000001, 1342000013))
    new_job(env, obsids, template="import time\ntime.sleep(4.5)\n")
    own_user(cap=5, lease=6)   # HIPE outlives 70 % of the lease: it lives on renewals alone
    reaper.roots.add(env.root)
    r = env.cli("j", "run", "-j", "6", timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(Counter(env.calls_list()).items()) == [(o, 1) for o in obsids], r.stderr[-3000:]
    assert outcomes(env) == {"done": 12}
    assert "12 of 12 processed." in r.stdout
    assert "Traceback" not in r.stderr and "error:" not in r.stderr, r.stderr[-3000:]


@pytest.mark.slow
def test_a_worker_refused_a_connection_at_start_waits_for_one(mysql_batch, own_user, reaper):
    """The user's only connection held by someone else: `run` waits (a warning, no exit) and starts
    as soon as the connection is given back. (Before: error 1226 at the first connect was bad input,
    exit 2 at once.)"""
    env = mysql_batch
    new_job(env, [1342000001], template="pass\n")
    user = own_user(cap=1)
    holder = connect_as(env, user)
    try:
        worker = Worker(env, reaper, "w")
        wait_for(lambda: "max_user_connections" in worker.err() or worker.proc.poll() is not None, 60,
                 "the worker refused its first connection")
        assert worker.proc.poll() is None, worker.err()
        assert "database trouble while connecting" in worker.err() and "error" not in worker.err().lower()
        assert env.calls_list() == []
    finally:
        holder.close()
    assert worker.wait(60) == 0, worker.err()
    assert env.calls_list() == [1342000001]
    assert outcomes(env) == {"done": 1}


@pytest.mark.slow
def test_run_j_warns_when_the_server_allows_fewer_connections(mysql_batch, own_user, reaper):
    """run -j 3 for a user allowed 2 connections: one warning line on stderr, before the workers start,
    saying how many connections the run needs; the run goes on and finishes the job."""
    env = mysql_batch
    obsids = new_job(env, [1342000001, 1342000002, 1342000003], template="pass\n")
    user = own_user(cap=2)
    reaper.roots.add(env.root)
    r = env.cli("j", "run", "-j", "3", timeout=240)
    assert r.returncode == 0, r.stderr
    assert WARNING.findall(r.stderr) == ["3"], r.stderr
    line = WARNING.search(r.stderr).group(0)
    assert f"max_user_connections 2 for user {user}" in line and "one per worker" in line, line
    assert sorted(env.calls_list()) == obsids


@pytest.mark.mpi
def test_the_mpi_launcher_warns_when_the_server_allows_fewer_connections(mysql_batch, own_user):
    """A hostfile of 4 slots, a user allowed 3 connections: the launcher's checks say the run needs 5
    (4 ranks and the launcher's own), in one line on stderr, and go on (here to --dry-run's command)."""
    env = mysql_batch
    new_job(env, [1342000001], template="pass\n")
    own_user(cap=3)
    (env.root / "hostfile").write_text("localhost slots=4\n")
    r = subprocess.run([str(MPI_SH), "j", "--dry-run"], capture_output=True, text=True, cwd=env.root,
                       env=env.env(HIPE_BATCH_PYTHON=sys.executable), timeout=120)
    assert r.returncode == 0, r.stderr
    assert WARNING.findall(r.stderr) == ["5"], r.stderr
    assert "one per rank, one for the launcher" in r.stderr and "mpirun" in r.stdout


def test_the_slurm_launcher_warns_when_the_server_allows_fewer_connections(mysql_batch, own_user, tmp_path):
    """The Slurm launcher (srun's path) in a job of 6 tasks, a user allowed 4 connections: one line on
    stderr before srun starts says the run needs 7 (6 tasks and the launcher's own watch), as `run -j`
    and the MPI launcher say. (srun is kept off PATH here: the launcher then ends with one error line.)"""
    env = mysql_batch
    new_job(env, [1342000001], template="pass\n")
    own_user(cap=4)
    path = tmp_path / "bin"
    path.mkdir()
    for tool in ("bash", "env", "readlink", "dirname"):   # what BatchProcess_sbatch.sh needs, not srun
        found = shutil.which(tool)
        if found:
            (path / tool).symlink_to(found)
    script = ROOT / "bin" / "BatchProcess_sbatch.sh"
    r = subprocess.run([str(script), "j"], capture_output=True, text=True, cwd=env.root, timeout=120,
                       env=env.env(SLURM_JOB_ID="1", SLURM_NTASKS="6", SLURM_JOB_NODELIST="vm",
                                   PATH=str(path), HIPE_BATCH_PYTHON=sys.executable))
    assert WARNING.findall(r.stderr) == ["7"], r.stderr
    assert "one per task, one for the launcher" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
def test_a_worker_holds_one_connection_while_hipe_runs(mysql_batch, own_user, reaper, tmp_path):
    """Three workers, each with HIPE running and its lease renewed: the server counts 3 connections
    of the job's user (before: 6, a second one per worker for its heartbeats). No warning: the user
    has no cap and the server room to spare."""
    env = mysql_batch
    go = tmp_path / "go"
    obsids = new_job(env, [1342000001, 1342000002, 1342000003],
                     template=f"import os, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.05)\n")
    user = own_user(lease=3)   # a renewal every 0.6 s
    reaper.roots.add(env.root)
    run = reaper.popen(env.popen("j", "run", "-j", "3"))
    try:
        wait_for(lambda: len(env.calls_list()) == 3, 60, "three HIPEs running")

        def renewed_all():
            with env.server.admin(env.db) as c:
                cur = c.cursor()
                cur.execute("SELECT COUNT(*) FROM `j` WHERE state = 'running' AND heartbeat > started + 1")
                return cur.fetchone()[0] == 3
        wait_for(renewed_all, 30, "every lease renewed at least once, a second after its claim")
        assert connections_of(env, user) == 3
    finally:
        go.write_text("")
    _out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert sorted(env.calls_list()) == obsids and not WARNING.search(err), err


@pytest.mark.slow
def test_soak_64_workers_under_a_cap_of_40_with_kills(mysql_batch, own_user, reaper):
    """The issue's soak at its full scale: `run -j 64` over 2,000 obsids for a user allowed 40
    connections, 8 workers SIGKILLed at random moments (their connections freed for those that
    wait): every obsid done exactly once (the probe: never two runs at once), none fenced for want
    of a connection, exit 0. (A few minutes on 2 cores; tests/bench/bench_soak.py gives its figures.)"""
    env = mysql_batch
    rng = random.Random()
    obsids = new_job(env, range(1342000001, 1342002001), template=probe(first=0.2, later=0.2))
    own_user(cap=40, lease=10, db_patience=1200)
    reaper.roots.add(env.root)
    with open(env.root / "run.out", "w") as out, open(env.root / "run.err", "w") as err:
        run = reaper.popen(env.popen("j", "run", "-j", "64", stdout=out, stderr=err))
    slots = env.root / "jobs" / "j" / ".slots"
    killed = set()
    for threshold in sorted(rng.sample(range(100, 1800), 8)):
        wait_for(lambda: len(env.calls_list()) >= threshold or run.poll() is not None, 1200, f"{threshold} launches")
        if not kill_a_slot_worker(slots, killed, rng):
            break
    assert run.wait(1800) == 0, (env.root / "run.err").read_text()[-3000:]
    assert_exactly_once(env, obsids)
    assert "fenced" not in outcomes(env), outcomes(env)
