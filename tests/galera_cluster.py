"""A real three-node MariaDB Galera cluster for tests, on loopback: own ports, own folders.

Each node is a mariadbd with wsrep on (Debian's galera-4 provider), its SQL port, its group
communication port (gmcast), its IST port and its SST address all its own. The first node
bootstraps the cluster (--wsrep-new-cluster), the others join it by rsync SST. mariadbd runs as
user `mysql` so that the rsync SST can write the joiner's data directory (the folders are chown'd).
"""
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import MySQLdb

from batchUtility.config import node_name
from mariadb_server import PASSWORD, USER, free_port
from support import wait_for

PROVIDER = "/usr/lib/galera/libgalera_smm.so"


def available() -> bool:
    try:
        pwd.getpwnam("mysql")
    except KeyError:
        return False
    return os.path.exists(PROVIDER) and shutil.which("mariadbd") is not None and shutil.which("rsync") is not None


class Node:
    def __init__(self, cluster: "Galera", index: int, bind: str = "127.0.0.1"):
        self.cluster = cluster
        self.index = index
        self.bind = bind   # where its SQL port listens (::1: IPv6 only); the group's ports stay on 127.0.0.1
        self.base = cluster.base / f"node{index}"
        self.datadir = self.base / "data"
        self.socket = str(self.base / "mysqld.sock")
        self.port = free_port(bind)
        self.gcomm, self.ist, self.sst = (free_port() for _ in range(3))
        self.proc = None

    @property
    def address(self) -> str:
        return node_name(self.bind, self.port)

    def install(self):
        self.base.mkdir(parents=True)
        (self.base / "tmp").mkdir()
        subprocess.run(["mariadb-install-db", f"--datadir={self.datadir}", "--user=mysql",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _chown_mysql(self.base)

    def start(self, new_cluster: bool = False):
        members = ",".join(f"127.0.0.1:{n.gcomm}" for n in self.cluster.nodes)
        provider_options = (f"gmcast.listen_addr=tcp://127.0.0.1:{self.gcomm};ist.recv_addr=127.0.0.1:{self.ist};"
                            # Seconds, not the defaults' tens of seconds: a lost node leaves the group fast.
                            "evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S;evs.inactive_check_period=PT1S;"
                            "evs.keepalive_period=PT1S;gcache.size=64M")
        self.log = open(self.base / "mariadbd.log", "ab")
        command = [
            "mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
            f"--port={self.port}", f"--bind-address={self.bind}", "--user=mysql",
            f"--pid-file={self.base / 'mariadbd.pid'}", f"--tmpdir={self.base / 'tmp'}",
            "--innodb-buffer-pool-size=48M", "--innodb-log-file-size=48M", "--max-connections=300",
            "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=2",
            "--binlog-format=ROW", "--innodb-autoinc-lock-mode=2", "--default-storage-engine=InnoDB",
            "--wsrep-on=ON", f"--wsrep-provider={PROVIDER}", f"--wsrep-cluster-address=gcomm://{members}",
            "--wsrep-cluster-name=hipe-batch-test", f"--wsrep-node-name=node{self.index}",
            "--wsrep-node-address=127.0.0.1", f"--wsrep-sst-receive-address=127.0.0.1:{self.sst}",
            "--wsrep-sst-method=rsync", f"--wsrep-provider-options={provider_options}",
            f"--wsrep-sync-wait={self.cluster.sync_wait}",
        ]
        if new_cluster:
            command.append("--wsrep-new-cluster")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=self.log)
        return self

    def answers(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"node{self.index} exited; see {self.base / 'mariadbd.log'}")
        try:
            with self.admin() as c:
                cur = c.cursor()
                cur.execute("SHOW STATUS LIKE 'wsrep_ready'")
                row = cur.fetchone()
                return bool(row) and row[1] == "ON"
        except MySQLdb.OperationalError:
            return False

    def status(self, name: str) -> str:
        with self.admin() as c:
            cur = c.cursor()
            cur.execute("SHOW STATUS LIKE %s", (name,))
            row = cur.fetchone()
            return row[1] if row else ""

    def admin(self):
        return MySQLdb.connect(unix_socket=self.socket, user="root", autocommit=True, connect_timeout=5)

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(60)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)   # a stopped node cannot end
                self.proc.terminate()
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(60)
        self.proc = None


class Galera:
    """Three nodes (by default) on loopback; start() returns when all are synced and the test user exists."""

    def __init__(self, size: int = 3, sync_wait: int = 0, binds=()):
        """binds: where the first nodes' SQL ports listen (e.g. ("::1",)), the others on 127.0.0.1."""
        # Not under pytest's tmp_path: its folders are root's alone, and mariadbd runs as mysql.
        self.base = Path(tempfile.mkdtemp(prefix="galera-"))
        os.chmod(self.base, 0o755)
        self.sync_wait = sync_wait
        binds = (*binds, *["127.0.0.1"] * size)
        self.nodes = [Node(self, i + 1, binds[i]) for i in range(size)]
        self.started_in = 0.0

    def start(self, timeout: float = 180):
        began = time.monotonic()
        for node in self.nodes:
            node.install()
        first, *others = self.nodes
        first.start(new_cluster=True)
        wait_for(first.answers, timeout, "the first Galera node")
        with first.admin() as c:
            cur = c.cursor()
            cur.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (USER, PASSWORD))
            cur.execute("GRANT ALL ON *.* TO %s@'%%'", (USER,))
        for node in others:   # one joiner at a time: two SSTs from one donor wait for each other anyway
            node.start()
            wait_for(node.answers, timeout, f"Galera node{node.index} joining")
        self.wait_size(len(self.nodes), timeout)
        self.started_in = time.monotonic() - began
        return self

    def wait_size(self, size: int, timeout: float = 120, among=None):
        """Wait until every node of `among` (default: those running) is synced in a primary component of `size`."""
        def settled():
            nodes = among or self.running()
            try:
                return all(n.status("wsrep_cluster_size") == str(size) and n.status("wsrep_cluster_status") == "Primary"
                           and n.status("wsrep_local_state_comment") == "Synced" for n in nodes)
            except MySQLdb.OperationalError:
                return False
        wait_for(settled, timeout, f"a Galera primary component of {size} nodes")

    def running(self):
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def admin(self, db=None):
        """A root connection (autocommit) to the first node that runs, as MariaDB.admin gives one."""
        node = self.running()[0]
        return MySQLdb.connect(unix_socket=node.socket, user="root", database=db or "", autocommit=True,
                               connect_timeout=5)

    def create_database(self, name: str) -> str:
        with self.nodes[0].admin() as c:
            c.cursor().execute(f"CREATE DATABASE `{name}`")
        return name

    def host_list(self, nodes=None) -> str:
        return ", ".join(n.address for n in (nodes or self.nodes))

    def cfg_sql(self, db: str, table: str = "v11_1", nodes=None) -> dict:
        return {"backend": "mysql", "host": self.host_list(nodes), "user": USER, "pswd": PASSWORD,
                "db": db, "table": table}

    def cleanup(self):
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def _chown_mysql(folder: Path):
    user = pwd.getpwnam("mysql")
    for root, dirs, files in os.walk(folder):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)
