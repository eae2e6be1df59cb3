"""Test fixtures: a real MariaDB server started here, and a batch environment per test.

`batch` is parametrised over both backends: every test that uses it runs on SQLite and on MariaDB.
"""
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mariadb_server import MariaDB
from support import Reaper, wait_for  # noqa: F401  (wait_for is re-exported to tests)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from batchUtility import config  # noqa: E402
from batchUtility.storage import open_table  # noqa: E402

BIN = ROOT / "bin" / "BatchProcess.py"
TRIVIAL_HIPE = ROOT / "tests" / "bin" / "trivial-hipe"
STANDIN = ROOT / "bin" / "hipe-standin"
SHARED_DATA = ROOT.parent / "shared" / "data"


def _ignored_by_pytest(signum, frame):
    pass


def _children_start_with_default_stops():
    """The commands the tests start get the stop signals at their defaults, as a command typed at a
    terminal does, whatever started pytest: a script's background job (`pytest &`, as CI may be run)
    starts with SIGINT and SIGQUIT ignored, nohup with SIGHUP ignored, and the tool keeps a stop signal
    ignored on entry ignored (signals.catch), so Ctrl-C tests would test nothing. pytest itself still
    ignores them (a handler that does nothing); exec gives its children the default action."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR2):
        if signal.getsignal(s) is signal.SIG_IGN:
            signal.signal(s, _ignored_by_pytest)


_children_start_with_default_stops()


@pytest.fixture
def reaper():
    """Kills whatever the test registered with it when the test ends, passed or failed."""
    r = Reaper()
    try:
        yield r
    finally:
        r.cleanup()


@pytest.fixture(scope="session")
def c_standin(tmp_path_factory):
    """The benchmarks' C HIPE stand-in (tests/bench/standin.c): exit 0 and the completion marker, in
    about a millisecond, for tests of thousands of launches. It does not run the job script."""
    out = tmp_path_factory.mktemp("standin") / "hipe-c"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(ROOT / "tests" / "bench" / "standin.c")], check=True)
    return out


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    server = MariaDB(tmp_path_factory.mktemp("mariadb")).start()
    yield server
    server.cleanup()


class BatchEnv:
    """A HIPE_BATCH_ROOT of its own (batch.cfg, jobs/), on one backend, with the trivial HIPE."""

    def __init__(self, root: Path, backend: str, server=None, db=None):
        self.root, self.backend, self.server, self.db = root, backend, server, db
        self.root.mkdir(parents=True, exist_ok=True)
        self.cfg_path = root / "batch.cfg"
        self.calls = root / "hipe-calls.txt"
        self.write_cfg()

    def sql_section(self):
        if self.backend == "sqlite":
            return {"backend": "sqlite", "path": "batch.sqlite", "table": "v11_1"}
        return self.server.cfg_sql(self.db)

    def write_cfg(self, sql=None, hipe=None, run=None, raw=None):
        """Write batch.cfg: the defaults for this env, updated by the given sections' keys."""
        sections = {"sql": {**self.sql_section(), **(sql or {})},
                    "hipe": {"command": str(TRIVIAL_HIPE), "memory": "512m", **(hipe or {})},
                    "run": {"lease": "30", "max_attempts": "3", "db_patience": "60", **(run or {})}}
        text = raw if raw is not None else "".join(
            f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None) + "\n"
            for name, keys in sections.items())
        self.cfg_path.write_text(text)
        self.cfg_path.chmod(0o600)
        return self.cfg_path

    def env(self, **extra):
        env = dict(os.environ, HIPE_BATCH_ROOT=str(self.root), TRIVIAL_HIPE_CALLS=str(self.calls),
                   PYTHONUNBUFFERED="1")
        env.pop("HIPE_BATCH_CONFIG", None)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def cli(self, *args, timeout=300, input=None, env=None):
        """Run bin/BatchProcess.py with args; returns the CompletedProcess (text)."""
        return subprocess.run([sys.executable, str(BIN), *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, input=input, env=env or self.env(), cwd=self.root)

    def popen(self, *args, env=None, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen([sys.executable, str(BIN), *map(str, args)], text=True,
                                env=env or self.env(), cwd=self.root, **kw)

    def config(self):
        return config.load(str(self.cfg_path))

    def table(self, job, **kw):
        return open_table(self.config().sql, job, **kw)

    def template(self, job, text):
        path = self.root / "jobs" / job / f"{job}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def obsid_file(self, obsids, name="obsids.txt"):
        path = self.root / name
        path.write_text("".join(f"{o}\n" for o in obsids))
        return path

    def load_master(self, *sql_files):
        """Create the master table v11_1 and load SQL files into it (sample data or the 2014 dump)."""
        if self.backend == "sqlite":
            db = sqlite3.connect(self.root / "batch.sqlite")
            db.executescript((ROOT / "sql" / "master_sqlite.sql").read_text())
            for f in sql_files:
                db.executescript(Path(f).read_text())
            db.commit()
            db.close()
            return None
        results = []
        for f in [ROOT / "sql" / "master_mysql.sql", *sql_files]:
            data = subprocess.run(["zcat", str(f)], capture_output=True).stdout if str(f).endswith(".gz") \
                else Path(f).read_bytes()
            results.append(subprocess.run(["mariadb", f"--socket={self.server.socket}", "-uroot", self.db],
                                          input=data, capture_output=True))
        return results

    def calls_list(self):
        """The obsid of every HIPE call made so far, in call order."""
        if not self.calls.exists():
            return []
        return [int(line.split()[0]) for line in self.calls.read_text().splitlines() if line.strip()]


_db_counter = [0]


@pytest.fixture(params=["sqlite", "mysql"])
def batch(request, tmp_path):
    if request.param == "sqlite":
        yield BatchEnv(tmp_path / "root", "sqlite")
        return
    server = request.getfixturevalue("mariadb")
    _db_counter[0] += 1
    db = server.create_database(f"t{os.getpid()}_{_db_counter[0]}")
    yield BatchEnv(tmp_path / "root", "mysql", server, db)
    with server.admin() as c:
        c.cursor().execute(f"DROP DATABASE IF EXISTS `{db}`")


@pytest.fixture
def sqlite_batch(tmp_path):
    return BatchEnv(tmp_path / "root", "sqlite")


@pytest.fixture
def mysql_batch(request, tmp_path, mariadb):
    _db_counter[0] += 1
    db = mariadb.create_database(f"m{os.getpid()}_{_db_counter[0]}")
    yield BatchEnv(tmp_path / "root", "mysql", mariadb, db)
    with mariadb.admin() as c:
        c.cursor().execute(f"DROP DATABASE IF EXISTS `{db}`")
