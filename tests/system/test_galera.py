"""A MariaDB Galera cluster of three nodes on loopback (tests/galera_cluster.py), [sql] host listing
them all (issue 20): no single point of failure.

- test_workers_on_every_node: six workers, two writing to each node at once (each batch.cfg lists
  the nodes in another order): certification conflicts come back as deadlocks and are retried,
  never run twice: every obsid done once, HIPE launched once per obsid, no overlap; with
  wsrep_sync_wait 0 and 7.
- test_node_in_use_killed_then_rejoining: `run -j 4` on the host list; the node every worker uses
  (the first) SIGKILLed mid-run: the workers move to the next node within seconds, renewing their
  leases there before the guardian's deadline, so HIPE is never stopped: every obsid done once,
  HIPE launched once per obsid, no attempt charged, exit 0. The node restarted rejoins by IST, and
  a second job then runs on it again (the first of the list that answers).
- test_node_stopped: the node in use SIGSTOPped (it drops out of the primary component; thawed, it
  is a node without quorum until it has rejoined, skipped meanwhile): the same result.
- test_node_without_quorum: the node in use cut off from the others (gmcast.isolate): a non-primary
  component answering 1047, treated like a lost node: the same result.
- test_mpi_node_killed: the same kill under bin/BatchProcess_mpi.sh.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from exactly_once import assert_exactly_once, probe
from galera_cluster import Galera, available
from support import BIN, ROOT, BatchEnv, done_count, new_job, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.galera,
              pytest.mark.skipif(not available(), reason="needs galera-4, rsync and a user mysql")]

FIRST = 1342200000


@pytest.fixture(scope="module")
def galera():
    cluster = Galera()
    try:
        cluster.start()
        print(f"Galera cluster of 3 started in {cluster.started_in:.1f} s")
        yield cluster
    finally:
        cluster.cleanup()


_counter = [0]


@pytest.fixture
def env(galera, tmp_path):
    """A batch root on a database of its own in the cluster; the cluster whole again afterwards."""
    _counter[0] += 1
    db = galera.create_database(f"g{os.getpid()}_{_counter[0]}")
    yield BatchEnv(tmp_path / "root", "mysql", galera, db)
    for node in galera.nodes:   # whatever the test did to a node, the next test gets three
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGCONT)
        else:
            node.start()
    galera.wait_size(3, timeout=180)


def make_job(env, n, seconds, lease=10):
    env.write_cfg(run={"lease": str(lease), "max_attempts": "1", "db_patience": "120"})
    return new_job(env, range(FIRST, FIRST + n), "j", probe(first=seconds, later=seconds))


def run_j(env, reaper, workers, name="run"):
    out, err = open(env.root / f"{name}.out", "w"), open(env.root / f"{name}.err", "w")
    proc = reaper.popen(subprocess.Popen([sys.executable, str(BIN), "j", "run", "-j", str(workers)], stdout=out,
                                         stderr=err, env=env.env(), cwd=env.root, start_new_session=True), group=True)
    reaper.roots.add(env.root)
    proc.out_path, proc.err_path = env.root / f"{name}.out", env.root / f"{name}.err"
    return proc


def ended(proc, timeout):
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {timeout} s:\n{proc.err_path.read_text()[-3000:]}") from None
    return proc.returncode, proc.out_path.read_text(), proc.err_path.read_text()


def launched_once(env, obsids):
    """HIPE launched once per obsid, and every attempt the first (none charged)."""
    assert sorted(env.calls_list()) == obsids
    table = env.table("j")
    try:
        assert {r["attempts"] for r in table.rows()} == {1}
        assert len(table.history()) == len(obsids)
    finally:
        table.close()


def node_answering(env):
    r = env.cli("j", "status")
    assert r.returncode in (0, 1), r.stderr
    return r.stdout


# ----------------------------------------------------------------------------- every node written at once
@pytest.fixture(params=[0, 7])
def sync_wait(request, galera):
    """wsrep_sync_wait on every node: 0 (reads may lag, certification judges the writes) or 7 (reads,
    updates and inserts wait for the node to catch up)."""
    def set_all(value):
        for node in galera.nodes:
            with node.admin() as c:
                c.cursor().execute(f"SET GLOBAL wsrep_sync_wait = {value}")
    set_all(request.param)
    yield request.param
    set_all(0)


def test_workers_on_every_node(galera, sync_wait, env, reaper):
    obsids = make_job(env, 60, 0.1)
    bin_dir = env.root / "bin"
    bin_dir.mkdir()
    procs = []
    for k in range(3):
        order = galera.nodes[k:] + galera.nodes[:k]   # worker pair k writes to node k+1
        cfg = bin_dir / f"node{k + 1}.cfg"
        cfg.write_text(env.cfg_path.read_text().replace(galera.host_list(), galera.host_list(order)))
        for w in range(2):
            with open(env.root / f"w{k}{w}.err", "w") as err:
                procs.append(reaper.popen(env.popen("j", "run", stdout=subprocess.DEVNULL, stderr=err,
                                                    env=env.env(HIPE_BATCH_CONFIG=str(cfg)))))
    for proc in procs:
        assert proc.wait(timeout=300) == 0, (env.root / "w00.err").read_text()[-2000:]
    assert_exactly_once(env, obsids)
    launched_once(env, obsids)
    # Every node took writes: each one's own count of committed write sets grew.
    assert all(int(n.status("wsrep_local_commits")) > 0 for n in galera.nodes)
    conflicts = sum(int(n.status("wsrep_local_cert_failures")) + int(n.status("wsrep_local_bf_aborts"))
                    for n in galera.nodes)
    print(f"wsrep_sync_wait {sync_wait}: {conflicts} certification failures and brute-force aborts so far")


# ----------------------------------------------------------------------------- the node in use killed
def test_node_in_use_killed_then_rejoining(galera, env, reaper):
    obsids = make_job(env, 60, 0.5)
    assert f"database node {galera.nodes[0].address} answered (1 of 3 in [sql] host)" in node_answering(env)
    proc = run_j(env, reaper, 4)
    wait_for(lambda: done_count(env) >= 12, 120, "a fifth of the obsids done")
    galera.nodes[0].kill(signal.SIGKILL)
    rc, _, err = ended(proc, 300)
    assert rc == 0, err[-3000:]
    assert_exactly_once(env, obsids)
    launched_once(env, obsids)
    assert "stopping HIPE" not in err and "fenced" not in err, err[-3000:]
    assert f"database node {galera.nodes[1].address} answered" in node_answering(env)

    # Back: it rejoins by IST (its data kept, only the missed write sets sent), and is the first again.
    galera.nodes[0].start()
    galera.wait_size(3, timeout=180)
    log = (galera.nodes[0].base / "mariadbd.log").read_text(errors="replace")
    assert "IST received" in log or "Receiving IST" in log, log[-3000:]
    assert f"database node {galera.nodes[0].address} answered" in node_answering(env)
    with galera.nodes[0].admin() as c:
        cur = c.cursor()
        cur.execute(f"SELECT COUNT(*) FROM `{env.db}`.j WHERE state = 'done'")
        assert cur.fetchone()[0] == len(obsids)


# ----------------------------------------------------------------------------- the node in use frozen
def test_node_stopped(galera, env, reaper):
    obsids = make_job(env, 60, 0.5, lease=20)
    proc = run_j(env, reaper, 4)
    wait_for(lambda: done_count(env) >= 12, 120, "a fifth of the obsids done")
    node = galera.nodes[0]
    node.kill(signal.SIGSTOP)
    try:
        galera.wait_size(2, timeout=60, among=galera.nodes[1:])   # it dropped out of the primary component
        wait_for(lambda: done_count(env) >= 40, 180, "work going on without the frozen node")
    finally:
        node.proc.send_signal(signal.SIGCONT)   # back, without quorum until it has rejoined: skipped meanwhile
    rc, _, err = ended(proc, 300)
    assert rc == 0, err[-3000:]
    assert_exactly_once(env, obsids)
    launched_once(env, obsids)
    assert "stopping HIPE" not in err, err[-3000:]


# ----------------------------------------------------------------------------- a partition
def test_node_without_quorum(galera, env, reaper):
    obsids = make_job(env, 60, 0.5)
    proc = run_j(env, reaper, 4)
    wait_for(lambda: done_count(env) >= 12, 120, "a fifth of the obsids done")
    node = galera.nodes[0]
    # Cut off from the other two (Galera's own switch for it): a non-primary component of one, which
    # answers 1047 to every statement on a table, while the other two go on as the primary component.
    with node.admin() as c:
        c.cursor().execute("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'")
    try:
        wait_for(lambda: node.status("wsrep_cluster_status") == "non-Primary", 60, "node1 without quorum")
        wait_for(lambda: done_count(env) >= 40, 180, "work going on without the cut-off node")
    finally:
        with node.admin() as c:
            c.cursor().execute("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'")
    rc, _, err = ended(proc, 300)
    assert rc == 0, err[-3000:]
    assert_exactly_once(env, obsids)
    launched_once(env, obsids)
    assert "stopping HIPE" not in err, err[-3000:]


# ----------------------------------------------------------------------------- MPI
@pytest.mark.mpi
def test_mpi_node_killed(galera, env, reaper):
    if not Path("/usr/bin/mpirun").exists():
        pytest.skip("no mpirun")
    obsids = make_job(env, 40, 0.5)
    (env.root / "hostfile").write_text("localhost slots=4\n")
    out, err = open(env.root / "mpi.out", "w"), open(env.root / "mpi.err", "w")
    proc = reaper.popen(subprocess.Popen([str(ROOT / "bin" / "BatchProcess_mpi.sh"), "j"], stdout=out, stderr=err,
                                         env=env.env(HIPE_BATCH_PYTHON=sys.executable), cwd=env.root,
                                         start_new_session=True), group=True)
    reaper.roots.add(env.root)
    proc.out_path, proc.err_path = env.root / "mpi.out", env.root / "mpi.err"
    wait_for(lambda: done_count(env) >= 8, 180, "a fifth of the obsids done")
    galera.nodes[0].kill(signal.SIGKILL)
    rc, _, err = ended(proc, 300)
    assert rc == 0, err[-3000:]
    assert_exactly_once(env, obsids)
    launched_once(env, obsids)
