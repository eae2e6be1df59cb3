"""Test fixtures for every layer: a real MariaDB server started here, and a batch environment per test.

`batch` is parametrised over both backends: every test that uses it runs on SQLite and on MariaDB
(tests/unit/conftest.py narrows it to SQLite, tests/integration/conftest.py to MariaDB). Fixtures
only: the helpers and constants are in support.py, and no module imports this one.
"""
import logging
import os
import signal
import subprocess

import pytest

from batchUtility import cli
from exactly_once import thaw
from mariadb_server import MariaDB
from support import ROOT, BatchEnv, CliResult, Reaper

# The tests written once and collected by two layers, and the bad-input table: asserts explained as in
# test modules.
pytest.register_assert_rewrite("bad_input_cases", "cli_inprocess_cases")


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


# ----------------------------------------------------------------------------- a server to freeze
@pytest.fixture(scope="module")
def freezable_server(tmp_path_factory):
    """A MariaDB of this module's own, to freeze (SIGSTOP) without stalling the session's server."""
    server = MariaDB(tmp_path_factory.mktemp("freezable-mariadb")).start()
    yield server
    thaw(server)
    server.cleanup()


@pytest.fixture
def freeze_env(freezable_server, tmp_path):
    """A batch environment on the freezable server (thawed before and after the test)."""
    thaw(freezable_server)
    if freezable_server.proc is None:
        freezable_server.start()
    name = f"f{os.getpid()}_{tmp_path.name}"[:60].replace("-", "_")
    env = BatchEnv(tmp_path / "root", "mysql", freezable_server, freezable_server.create_database(name))
    yield env
    thaw(freezable_server)
    with freezable_server.admin() as c:
        c.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")


# ----------------------------------------------------------------------------- the command line in-process
@pytest.fixture
def main(batch, capsys, monkeypatch):
    """main(*argv): cli.main in this process, in batch's root, returning a CliResult."""
    monkeypatch.setenv("HIPE_BATCH_ROOT", str(batch.root))
    for name in ("HIPE_BATCH_CONFIG", "HIPE_BATCH_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(batch.root)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level   # cli.main sets up logging its own way

    def call(*argv):
        capsys.readouterr()
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as e:   # argparse's usage errors
            code = e.code
        out, err = capsys.readouterr()
        return CliResult(code, out, err)
    yield call
    root.handlers[:], root.level = handlers, level
