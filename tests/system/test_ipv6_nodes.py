"""[sql] host with an IPv6 node (issue 20), used live: a private MariaDB listening on ::1 only
(bind-address=::1, so nothing reaches it but IPv6) beside one on 127.0.0.1.

- test_the_first_node_of_the_list_that_answers, three orders:
  - `[::1]:P6, 127.0.0.1:P4`: `new`, `run -j 2` over six obsids, `status` (and its --json) all work
    on the IPv6 node, each saying `database node [::1]:P6 answered (1 of 2 in [sql] host)` (the node
    in brackets: `::1:P6` would not say where the port begins); the job's table is on that server
    and not on the other;
  - `127.0.0.1:P, [::1]:P6` with nothing on P (a stopped server): every command reaches the IPv6
    node, the second of the list;
  - `[::1]:P, 127.0.0.1:P4` with nothing on [::1]:P: the IPv4 node answers.
- test_bare_ipv6_host: `host = ::1` and `port = P6`, one host as earlier versions took it: used as
  written, nothing said of nodes.
- test_ipv6_node_killed_mid_run: a Galera cluster whose first node listens on ::1 only, `run -j 3`
  on `[::1]:P1, 127.0.0.1:P2, 127.0.0.1:P3`; that node SIGKILLed mid-run: the workers move to the
  next node within seconds (no HIPE stopped, nothing charged, every obsid done once). The two
  independent servers above hold different data, so the move is tested on Galera, whose nodes
  hold the same (about 15 s more for the cluster's start).
"""
import json
import signal
import socket
import subprocess
import sys
import time

import MySQLdb
import pytest

from exactly_once import assert_exactly_once, probe
from galera_cluster import Galera, available
from mariadb_server import MariaDB, free_port
from support import BIN, BatchEnv, done_count, new_job, wait_for

FIRST = 1342210000


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# slow: two servers to start (2 to 15 s here), then seconds a test.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1 on this machine")]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(the server on ::1, the server on 127.0.0.1), each with the database `d`."""
    base = tmp_path_factory.mktemp("ipv6")
    v6, v4 = MariaDB(base / "v6", bind="::1"), MariaDB(base / "v4")
    try:
        for server in (v6, v4):
            server.start()
            server.create_database("d")
        yield v6, v4
    finally:
        v4.cleanup()
        v6.cleanup()


_counter = [0]


def env_on(servers, tmp_path, host):
    """A batch root whose [sql] host is `host` (a job table of its own name on the servers)."""
    v6, _ = servers
    _counter[0] += 1
    env = BatchEnv(tmp_path / "root", "mysql", v6, "d")
    env.job = f"j{_counter[0]}"
    env.write_cfg(sql={"host": host, "port": None})
    return env


def has_table(server, job):
    with server.admin("d") as c:
        cur = c.cursor()
        cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'd' AND table_name = %s",
                    (job,))
        return cur.fetchone()[0] == 1


def commands_answered_by(env, node, place, obsids):
    """new, run -j 2, status and status --json each say `node` answered, the `place`-th of the list
    of 2; the job is done."""
    line = f"database node {node} answered ({place} of 2 in [sql] host)"
    env.template(env.job, "x = 1\n")
    r = env.cli(env.job, "new", env.obsid_file(obsids))
    assert r.returncode == 0 and line in r.stderr, r.stderr
    r = env.cli(env.job, "run", "-j", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(line) == 1, r.stderr   # once, from the command, not once per worker
    assert sorted(env.calls_list()) == obsids
    status = env.cli(env.job, "status")
    assert status.returncode == 0 and f"  {line}" in status.stdout.splitlines(), status.stdout
    assert f"{len(obsids)} of {len(obsids)} processed." in status.stdout
    assert json.loads(env.cli(env.job, "status", "--json").stdout)["node"] == node


@pytest.mark.parametrize("order", ["ipv6 first", "ipv6 after one refusing", "ipv6 refusing"])
def test_the_first_node_of_the_list_that_answers(servers, tmp_path, order):
    """[::1] first (it answers), second after a refusing one (it answers), or first and refusing (the
    IPv4 node answers): every command goes to the first node of the list that answers, and says so."""
    v6, v4 = servers
    hosts, answering, place, count = {
        "ipv6 first": (f"[::1]:{v6.port}, 127.0.0.1:{v4.port}", v6, 1, 6),
        "ipv6 after one refusing": (f"127.0.0.1:{free_port()}, [::1]:{v6.port}", v6, 2, 4),
        "ipv6 refusing": (f"[::1]:{free_port('::1')}, 127.0.0.1:{v4.port}", v4, 2, 4)}[order]
    env = env_on(servers, tmp_path, hosts)
    node = f"[::1]:{v6.port}" if answering is v6 else f"127.0.0.1:{v4.port}"
    commands_answered_by(env, node, place, list(range(FIRST, FIRST + count)))
    other = v4 if answering is v6 else v6
    assert has_table(answering, env.job) and not has_table(other, env.job)


def test_bare_ipv6_host(servers, tmp_path):
    """One host as every earlier version took it, an IPv6 literal without brackets and [sql] port
    beside it: used as written, and nothing said of nodes."""
    v6, v4 = servers
    env = env_on(servers, tmp_path, "::1")
    env.write_cfg(sql={"host": "::1", "port": str(v6.port)})
    env.template(env.job, "x = 1\n")
    obsids = list(range(FIRST, FIRST + 3))
    for command in (["new", env.obsid_file(obsids)], ["run", "-j", "2"], ["status"]):
        r = env.cli(env.job, *command)
        assert r.returncode == 0 and "database node" not in r.stdout + r.stderr, (command, r.stderr)
    assert sorted(env.calls_list()) == obsids
    assert has_table(v6, env.job) and not has_table(v4, env.job)


# ----------------------------------------------------------------------------- the IPv6 node killed mid-run
@pytest.fixture
def galera_v6():
    if not available():
        pytest.skip("needs galera-4, rsync and a user mysql")
    cluster = Galera(binds=("::1",))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.mark.galera
def test_ipv6_node_killed_mid_run(galera_v6, tmp_path, reaper):
    cluster = galera_v6
    first = cluster.nodes[0]
    assert first.address == f"[::1]:{first.port}"
    with pytest.raises(MySQLdb.OperationalError):   # nothing reaches it but IPv6
        MySQLdb.connect(host="127.0.0.1", port=first.port, connect_timeout=3).close()
    env = BatchEnv(tmp_path / "root", "mysql", cluster, cluster.create_database("g"))
    env.write_cfg(run={"lease": "10", "max_attempts": "1", "db_patience": "120"})
    obsids = new_job(env, range(FIRST, FIRST + 30), "j", probe(first=0.5, later=0.5))
    with open(env.root / "run.err", "w") as err:
        proc = reaper.popen(subprocess.Popen([sys.executable, str(BIN), "j", "run", "-j", "3"], stdout=subprocess.DEVNULL,
                                             stderr=err, env=env.env(), cwd=env.root, start_new_session=True), group=True)
    assert f"database node {first.address} answered (1 of 3 in [sql] host)" in env.cli("j", "status").stdout
    wait_for(lambda: done_count(env) >= 6, 120, "a fifth of the obsids done")
    first.kill(signal.SIGKILL)
    killed = time.monotonic()
    at_kill = done_count(env)
    wait_for(lambda: done_count(env) >= at_kill + 3, 60, "obsids done on the next node")
    moved_in = time.monotonic() - killed
    assert proc.wait(timeout=300) == 0, (env.root / "run.err").read_text()[-3000:]
    err = (env.root / "run.err").read_text()
    assert_exactly_once(env, obsids)
    assert sorted(env.calls_list()) == obsids   # HIPE launched once per obsid: none stopped, none charged
    assert "stopping HIPE" not in err and "fenced" not in err, err[-3000:]
    second = cluster.nodes[1].address
    assert f"database server changed: now on node {second} (was {first.address})" in err, err[-3000:]
    assert f"database node {second} answered (2 of 3 in [sql] host)" in env.cli("j", "status").stdout
    print(f"three more obsids done {moved_in:.1f} s after the IPv6 node's SIGKILL")
    assert moved_in < 30, f"{moved_in:.1f} s"
