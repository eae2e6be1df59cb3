"""A real, private MariaDB server for tests: its own data directory, port and socket."""
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import MySQLdb

from support import wait_for  # its home is support.py; still importable from here

USER, PASSWORD = "hipeuser", "s3cret-pw"


def free_port(host="127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MariaDB:
    """mariadb-install-db into `base`, then mariadbd bound to `bind`:`port` and a socket in `base`
    (`bind` an IPv4 address, or an IPv6 one such as ::1: the server then listens on IPv6 only)."""

    def __init__(self, base: Path, bind: str = "127.0.0.1", port: int = 0, options=()):
        self.base = Path(base)
        self.datadir = self.base / "data"
        self.socket = str(self.base / "mysqld.sock")
        self.bind = bind
        self.port = port or free_port(bind)
        self.proc = None
        self.installed = False
        self.options = list(options)   # more mariadbd options (a replica's server id, a binary log)

    def install(self):
        self.base.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mariadb-install-db", f"--datadir={self.datadir}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.installed = True

    def start(self, timeout=60):
        if not self.installed:
            self.install()
        self.log = open(self.base / "mariadbd.log", "ab")
        # Its temporary tables in a folder of its own: /tmp is shared with other servers and other work.
        (self.base / "tmp").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            ["mariadbd", f"--datadir={self.datadir}", f"--socket={self.socket}", f"--port={self.port}",
             f"--bind-address={self.bind}", "--user=root", f"--pid-file={self.base / 'mariadbd.pid'}",
             f"--tmpdir={self.base / 'tmp'}",
             "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=48M", "--max-connections=500",
             "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=2", *self.options],
            stdout=self.log, stderr=self.log)
        wait_for(self._answers, timeout, f"mariadbd on port {self.port}")
        with self.admin() as c:
            cur = c.cursor()
            cur.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (USER, PASSWORD))
            cur.execute("GRANT ALL ON *.* TO %s@'%%'", (USER,))
        return self

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"mariadbd exited with {self.proc.returncode}; see {self.base / 'mariadbd.log'}")
        try:
            self.admin().close()
            return True
        except MySQLdb.OperationalError:
            return False

    def admin(self, db=None):
        """A root connection through the socket (autocommit)."""
        conn = MySQLdb.connect(unix_socket=self.socket, user="root", database=db or "", autocommit=True)
        return conn

    def create_database(self, name):
        with self.admin() as c:
            c.cursor().execute(f"CREATE DATABASE `{name}`")
        return name

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def cfg_sql(self, db, table="v11_1"):
        """The [sql] section of a batch.cfg for this server (TCP, as remote hosts reach it)."""
        host = f"[{self.bind}]:{self.port}" if ":" in self.bind else self.bind   # [::1] alone would not parse
        return {"backend": "mysql", "host": host, "port": str(self.port), "user": USER,
                "pswd": PASSWORD, "db": db, "table": table}
