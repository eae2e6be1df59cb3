"""Fail-over to a promoted replica that never received a claim (issue 18 item 4, issue 20).

test_promoted_replica_without_the_claim: a primary and an asynchronous replica (two real
mariadbd, binary log and CHANGE MASTER); [sql] host lists both; the replica held back (STOP SLAVE)
and read-only, as a replica is until it is promoted. A worker claims the obsid on the primary and
runs it; the primary is SIGKILLed. The worker reaches the replica (another server: its identity
differs), which refuses the renewal (read-only, 1290, waited for): the worker reads the row instead,
finds its claim is not there, and stops its HIPE at once, not at 70 % of the lease (without the
check it ran on to the guardian's deadline). Only then is the replica promoted; a second worker runs the obsid there:
done once, never two runs at the same time (the probe). An asynchronous replica promoted *before*
the worker reached it could still run the obsid twice for up to a heartbeat: docs/galera.md says
why fail-over needs synchronous replication.
"""
import signal
import time

import MySQLdb
import pytest

from exactly_once import assert_exactly_once, probe, wait_first_run
from mariadb_server import MariaDB, free_port
from support import OBSID, BatchEnv, Worker, new_job, pid_alive, wait_for

WORKER, WORKER_PASSWORD = "worker", "w0rker-pw"


@pytest.fixture
def pair(tmp_path):
    primary = MariaDB(tmp_path / "primary", options=["--server-id=1", "--log-bin=binlog", "--binlog-format=ROW"])
    replica = MariaDB(tmp_path / "replica", options=["--server-id=2", "--log-bin=binlog", "--binlog-format=ROW",
                                                     "--read-only=ON"])
    try:
        primary.start()
        replica.start()
        with primary.admin() as c:
            cur = c.cursor()
            cur.execute("SHOW MASTER STATUS")
            log_file, position = cur.fetchone()[:2]
        with replica.admin() as c:
            c.cursor().execute(f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, "
                               f"MASTER_USER='hipeuser', MASTER_PASSWORD='s3cret-pw', MASTER_LOG_FILE='{log_file}', "
                               f"MASTER_LOG_POS={position}, MASTER_CONNECT_RETRY=1")
            c.cursor().execute("START SLAVE")
        yield primary, replica
    finally:
        replica.cleanup()
        primary.cleanup()


def replicated(replica, db, sql):
    try:
        with replica.admin(db) as c:
            cur = c.cursor()
            cur.execute(sql)
            return cur.fetchone()
    except MySQLdb.Error:
        return None


@pytest.mark.slow
def test_promoted_replica_without_the_claim(pair, tmp_path, reaper):
    primary, replica = pair
    db = "failover"
    with primary.admin() as c:
        cur = c.cursor()
        cur.execute(f"CREATE DATABASE `{db}`")
        # Rights on the job's database only: read_only binds it (GRANT ALL ON *.* would bypass it).
        cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (WORKER, WORKER_PASSWORD))
        cur.execute(f"GRANT ALL ON `{db}`.* TO %s@'%%'", (WORKER,))
    env = BatchEnv(tmp_path / "root", "mysql", primary, db)
    hosts = f"127.0.0.1:{primary.port}, 127.0.0.1:{replica.port}"
    env.sql_section = lambda: {**primary.cfg_sql(db), "host": hosts, "port": None, "user": WORKER,
                               "pswd": WORKER_PASSWORD}
    lease = 30
    env.write_cfg(run={"lease": str(lease), "max_attempts": "3", "db_patience": "120"})
    new_job(env, [OBSID], "j", probe(first=None, later=0.2))
    wait_for(lambda: replicated(replica, db, "SELECT COUNT(*) FROM j WHERE state = 'pending'") == (1,), 60,
             "the job on the replica")
    with replica.admin() as c:
        c.cursor().execute("STOP SLAVE")   # lagging: it will never see the claim

    first = Worker(env, reaper, "w1")
    run = wait_first_run(env, reaper)
    primary.stop(signal.SIGKILL)
    killed = time.monotonic()
    # Stopped at once on reaching the replica (two heartbeats of lease/5 at most), not at 70 % of the lease.
    wait_for(lambda: not pid_alive(run), lease, "the first run stopped")
    stopped_after = time.monotonic() - killed
    assert "does not hold this claim" in first.err(), first.err()[-3000:]
    assert stopped_after < 0.7 * lease - 2, f"{stopped_after:.1f} s"

    with replica.admin() as c:   # promoted
        cur = c.cursor()
        cur.execute("RESET SLAVE ALL")
        cur.execute("SET GLOBAL read_only = OFF")
    second = Worker(env, reaper, "w2")
    assert second.wait(120) == 0, second.err()[-3000:]
    assert first.wait(120) == 0, first.err()[-3000:]
    figures = assert_exactly_once(env, [OBSID])
    assert figures["runs"] == 2   # the stopped one, and the one recorded


def test_every_command_says_which_node_answered(mysql_batch):
    """[sql] host lists a node that refuses (nothing listens on its port) before the module's server:
    every command reaches the second and says so on stderr (the status block in itself, --json in
    its "node"); -q leaves the line out; a single host says nothing of nodes."""
    env = mysql_batch
    new_job(env, [OBSID], template="x = 1\n")
    server = env.server.cfg_sql(env.db)
    node = f"{server['host']}:{server['port']}"
    env.write_cfg(sql={"host": f"127.0.0.1:{free_port()}, {node}", "port": None})
    line = f"database node {node} answered (2 of 2 in [sql] host)"   # the second, the first refusing
    r = env.cli("j", "run")
    assert r.returncode == 0 and line in r.stderr, r.stderr
    for command in (["history"], ["status", "--obsid", OBSID], ["status", "--running"], ["results"],
                    ["report", env.root / "r.html"], ["reset", "--failed"], ["new", "--add", env.obsid_file([OBSID + 1])]):
        r = env.cli("j", *command)
        assert r.returncode == 0, (command, r.stderr)
        assert line in r.stderr and line not in r.stdout, (command, r.stderr)
        quiet = env.cli("-q", "j", *command)
        assert quiet.returncode == 0 and line not in quiet.stderr + quiet.stdout, (command, quiet.stderr)
    status = env.cli("j", "status")
    assert line in status.stdout and line not in status.stderr, status.stdout
    assert env.cli("j", "status", "--json").stdout.count(f'"node": "{node}"') == 1
    wiped = env.cli("j", "wipe", "--yes")
    assert wiped.returncode == 0 and line in wiped.stderr, wiped.stderr
    env.write_cfg()   # one host: nothing said of nodes
    new_job(env, [OBSID])
    assert "database node" not in env.cli("j", "history").stderr
