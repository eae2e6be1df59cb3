"""Unit tests of the pure functions: obsid files, batch.cfg, the status texts, the worker's file-level
helpers (HIPE's script and command line, log rotation, the verdict), the slot, and storage's named
statements and IN-list helper on an in-memory SQLite. No server and, but for the Reaper's own test,
no subprocess: the whole file runs in about a second."""
import json
import logging
import os
import signal
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from batchUtility import config, report, storage
from batchUtility.errors import BadInput
from batchUtility.hipe import _last_words, _verdict, hipe_command, py2_string, script_text
from batchUtility.model import Outcome, check_identifier
from batchUtility.obsids import read_obsids
from batchUtility.slot import Slot, current_slot
from batchUtility.storage import in_list
from batchUtility.workdir import keep_previous, make_scratch
from support import Reaper, pid_alive, wait_for

NOT_OBSID = "is not an obsid (a positive whole number of at most 10 digits)"


# ----------------------------------------------------------------------------- obsid files
def obsid_file(tmp_path, content, name="obsids.txt"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("content,obsids", [
    ("1342191755\n1342191756\n", [1342191755, 1342191756]),
    ("# comment\n\n  1342191755  # trailing comment\n\n", [1342191755]),
    ("3\n1\n3\n2\n1\n", [3, 1, 2]),                                    # file order, duplicates collapsed
    ("\ufeffobsid,name\r\n1342191755,a\r\n\"1342191756\",b\r\n", [1342191755, 1342191756]),  # BOM, CSV, CRLF
    ("9999999999\n1\n", [9999999999, 1]),                               # 10 digits, and the smallest
    ("", []),
    ("# nothing yet\n", []),
])
def test_read_obsids_accepts(tmp_path, content, obsids):
    assert read_obsids(obsid_file(tmp_path, content)) == obsids


@pytest.mark.parametrize("content,line,shown", [
    ("1342191755\nobsid\n", 2, "obsid"),              # a header only counts on the first line
    ("0\n", 1, "0"),
    ("-5\n", 1, "-5"),
    ("12345678901\n", 1, "12345678901"),             # 11 digits
    ("1342191755.0\n", 1, "1342191755.0"),
    ("1.342191755e9\n", 1, "1.342191755e9"),
    ("0x4f\n", 1, "0x4f"),
    ("1; DROP TABLE j\n", 1, "1; DROP TABLE j"),
    ("1\n" * 10000 + "oops\n", 10001, "oops"),
    ("x" * 100 + "\n", 1, "x" * 57 + "..."),          # long lines are cut
])
def test_read_obsids_refuses_naming_file_line_and_text(tmp_path, content, line, shown):
    path = obsid_file(tmp_path, content)
    with pytest.raises(BadInput) as e:
        read_obsids(path)
    assert str(e.value) == f"{path}:{line}: {shown!r} {NOT_OBSID}"


def test_read_obsids_refuses_what_is_not_text(tmp_path):
    path = obsid_file(tmp_path, b"1342191755\n13421\xff1756\n")
    with pytest.raises(BadInput, match=r"obsids.txt:2: not UTF-8 text$"):
        read_obsids(path)
    with pytest.raises(BadInput, match=r"nowhere.txt: cannot read obsid file: No such file or directory$"):
        read_obsids(tmp_path / "nowhere.txt")
    with pytest.raises(BadInput, match=r": cannot read obsid file: Is a directory$"):
        read_obsids(tmp_path)


# ----------------------------------------------------------------------------- batch.cfg
@pytest.fixture
def cfg_file(tmp_path, monkeypatch):
    """cfg_file(text): batch.cfg holding text, mode 600, in a HIPE_BATCH_ROOT of its own."""
    monkeypatch.setenv("HIPE_BATCH_ROOT", str(tmp_path))
    for name in ("HIPE_BATCH_CONFIG", config.PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)

    def write(text, mode=0o600):
        path = tmp_path / "batch.cfg"
        path.write_text(text)
        path.chmod(mode)
        return path
    return write


SQLITE_CFG = "[sql]\nbackend = sqlite\npath = db/batch.sqlite\ntable = v11_1\n"
ORIGINAL_CFG = "[sql]\nhost  = db.example.org\nuser  = hipe\npswd  = secret\ndb    = herschel\ntable = v11_1\n"


def test_config_sqlite_with_defaults(cfg_file, tmp_path):
    path = cfg_file(SQLITE_CFG)
    cfg = config.load()
    assert (cfg.path, cfg.root) == (path, tmp_path.resolve())
    assert (cfg.sql.backend, cfg.sql.path, cfg.sql.table) == ("sqlite", tmp_path / "db" / "batch.sqlite", "v11_1")
    assert cfg.hipe == config.HipeSettings(("hipe",), "2048m", (), 0.0)
    assert cfg.run == config.RunSettings(300.0, 3, 600.0, True)
    assert cfg.run.heartbeat == 60.0
    assert cfg.job_dir("j") == tmp_path.resolve() / "jobs" / "j"
    assert cfg.sql.describe() == f"SQLite database {tmp_path / 'db' / 'batch.sqlite'}"


def test_config_the_2014_file_means_mysql_and_hides_the_password(cfg_file):
    cfg_file(ORIGINAL_CFG)
    cfg = config.load()
    sql = cfg.sql
    assert (sql.backend, sql.host, sql.port, sql.user, sql.password, sql.db, sql.table) == \
        ("mysql", "db.example.org", 0, "hipe", "secret", "herschel", "v11_1")
    assert "secret" not in repr(sql) + repr(cfg) + sql.describe()
    # No port in the file: ~/.my.cnf's (none here) or MySQL's 3306, named so that a refusal says where it knocked.
    assert sql.describe() == "MySQL database 'herschel' at db.example.org:3306 as user 'hipe'"


def test_config_every_key(cfg_file, tmp_path):
    cfg_file("[sql]\nbackend = MySQL\nhost = h\nport = 3307\nuser = u\ndb = d\n"
             "[hipe]\ncommand = bin/my-hipe --fast   # relative to batch.cfg\nmemory = 4g\n"
             "properties = a.b=1 'c=two words'\ntimeout = 7200\n"
             "[run]\nlease = 1\nmax_attempts = 1000\ndb_patience = 0\nwait_for_running = No\n")
    cfg = config.load()
    assert (cfg.sql.backend, cfg.sql.port, cfg.sql.describe()) == ("mysql", 3307, "MySQL database 'd' at h:3307 as user 'u'")
    assert cfg.hipe == config.HipeSettings((str(tmp_path / "bin" / "my-hipe"), "--fast"), "4g",
                                           ("a.b=1", "c=two words"), 7200.0)
    assert cfg.run == config.RunSettings(1.0, 1000, 0.0, False)
    assert cfg.run.heartbeat == 0.5   # never busier than twice a second


def test_config_password_from_the_environment_wins(cfg_file, monkeypatch):
    cfg_file(ORIGINAL_CFG)
    monkeypatch.setenv(config.PASSWORD_ENV, "from-env")
    assert config.load().sql.password == "from-env"


def test_config_readable_password_is_warned_about(cfg_file, caplog):
    path = cfg_file(ORIGINAL_CFG, mode=0o644)
    with caplog.at_level(logging.WARNING):
        config.load()
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{path} holds a database password and is readable by other users: chmod 600 {path}")
    caplog.clear()
    cfg_file(ORIGINAL_CFG.replace("pswd  = secret\n", ""), mode=0o644)
    config.load()
    assert not caplog.records


def test_config_lookup(cfg_file, tmp_path, monkeypatch):
    with pytest.raises(BadInput, match=r"^no batch.cfg: looked in .*/batch.cfg and .*/bin/batch.cfg"):
        config.load()
    (tmp_path / "bin").mkdir()
    in_bin = tmp_path / "bin" / "batch.cfg"
    in_bin.write_text(SQLITE_CFG)
    assert config.load().path == in_bin
    top = cfg_file(SQLITE_CFG)
    assert config.load().path == top
    other = tmp_path / "other.cfg"
    other.write_text(SQLITE_CFG)
    monkeypatch.setenv("HIPE_BATCH_CONFIG", str(other))
    assert config.load().path == other
    assert config.load(str(in_bin)).path == in_bin   # --config first
    with pytest.raises(BadInput, match=r"^/nowhere.cfg: configuration file not found \(from --config\)$"):
        config.load("/nowhere.cfg")
    monkeypatch.setenv("HIPE_BATCH_CONFIG", "/nowhere.cfg")
    with pytest.raises(BadInput, match=r"^/nowhere.cfg: configuration file not found \(from \$HIPE_BATCH_CONFIG\)$"):
        config.load()


BASE = "[sql]\nbackend = sqlite\n"


@pytest.mark.parametrize("text,message", [
    ("backend = sqlite\n", ":1: a [section] header must come before any key"),
    ("[sql]\nbackend = sqlite\njust words\n", ":3: not a 'key = value' line, [section] header or comment"),
    ("[sql]\nbackend = sqlite\nbackend = mysql\n", ": cannot be read as an ini file: "),
    ("[hipe]\ncommand = hipe\n", ": no [sql] section"),
    (BASE + "[extra]\n", ": unknown section [extra] (known: sql, hipe, run)"),
    (BASE + "colour = blue\n", ": [sql] unknown key 'colour' (known: backend, host, "),
    ("[sql]\nbackend = oracle\n", ": [sql] backend = 'oracle': must be one of mysql, sqlite"),
    ("[sql]\nhost = h\nuser = u\ndb = d\nport = http\n", ": [sql] port = 'http': not a whole number"),
    ("[sql]\nhost = h\nuser = u\ndb = d\nport = 70000\n", ": [sql] port = '70000': must be between 1 and 65535"),
    ("[sql]\nhost = h\ndb = d\n", ": [sql] user is missing"),
    ("[sql]\nhost = h\nuser = u\ndb = d\noption_file = /no/such.cnf\n",
     ": [sql] option_file = '/no/such.cnf': no such file"),
    (BASE + "table = v11; drop\n", ": [sql] table = 'v11; drop': master table name 'v11; drop' is not valid"),
    (BASE + "[run]\nlease = 0\n", ": [run] lease = '0': must be at least 1"),
    (BASE + "[run]\nlease = nan\n", ": [run] lease = 'nan': not a finite number"),
    (BASE + "[run]\nlease = 1e999\n", ": [run] lease = '1e999': not a finite number"),
    (BASE + "[run]\nmax_attempts = 2.5\n", ": [run] max_attempts = '2.5': not a whole number"),
    (BASE + "[run]\nmax_attempts = 0\n", ": [run] max_attempts = '0': must be between 1 and 1000"),
    (BASE + "[run]\nwait_for_running = maybe\n",
     ": [run] wait_for_running = 'maybe': must be one of yes, no, true, false, 1, 0"),
    (BASE + "[hipe]\ntimeout = -1\n", ": [hipe] timeout = '-1': must be at least 0"),
    (BASE + "[hipe]\nmemory = lots\n", ": [hipe] memory = 'lots': must look like 2048m or 4g"),
    (BASE + "[hipe]\nproperties = novalue\n", ": [hipe] properties = 'novalue': each property must be name=value"),
    (BASE + "[hipe]\ncommand = hipe 'unbalanced\n", ": [hipe] command = \"hipe 'unbalanced\": No closing quotation"),
])
def test_config_refuses_naming_file_key_and_value(cfg_file, text, message):
    path = cfg_file(text)
    with pytest.raises(BadInput) as e:
        config.load()
    assert str(e.value).startswith(f"{path}{message}")
    assert str(e.value).count("\n") == 0


def test_config_never_shows_a_password_line(cfg_file):
    cfg_file("[sql]\nbackend = sqlite\npswd hunter2\n")
    with pytest.raises(BadInput) as e:
        config.load()
    assert "hunter2" not in str(e.value) and str(e.value).endswith(":3: not a 'key = value' line, [section] header or comment")


def test_config_binary_file(cfg_file, tmp_path):
    path = tmp_path / "batch.cfg"
    path.write_bytes(b"\x00\xff\xfe[sql]\n")
    with pytest.raises(BadInput, match=r"batch.cfg: cannot be read as an ini file: "):
        config.load()


# ----------------------------------------------------------------------------- identifiers
@pytest.mark.parametrize("name", ["j", "v11_1", "select", "A" * 48, "a_b_c"])
def test_identifiers_accepted(name):
    assert check_identifier(name) == name


@pytest.mark.parametrize("name", ["", "1abc", "_a", "a__b", "A" * 49, "naïve", "x y", "a;b", "a`b", "j\n", None])
def test_identifiers_refused(name):
    with pytest.raises(BadInput, match=rf"^job name {__import__('re').escape(repr(name))} is not valid: use at most 48"):
        check_identifier(name)


# ----------------------------------------------------------------------------- status texts
def counts(pending=0, running=0, done=0, failed=0):
    return {"pending": pending, "running": running, "done": done, "failed": failed}


def test_progress_line():
    assert report.progress_line(counts(5, 1, 3, 1)) == "3 of 10 processed. (30.0 %, 6 remaining)"
    assert report.progress_line(counts()) == "0 of 0 processed. (0.0 %, 0 remaining)"
    assert report.progress_line(counts(done=2, failed=1)) == "2 of 3 processed. (66.7 %, 0 remaining)"


def test_status_text():
    text = report.status_text("j", counts(1, 0, 1, 1), [(1342191755, 3, "HIPE exited with status 1: boom")])
    assert text.splitlines() == [
        "1 of 3 processed. (33.3 %, 1 remaining)",
        "  pending 1, running 0, done 1, failed 1",
        "  failed obsids (first 1):",
        "    1342191755  after 3 attempts: HIPE exited with status 1: boom",
        "  retry them with: BatchProcess.py j reset --failed",
        "  why each attempt ended: BatchProcess.py j status --obsid OBSID",
    ]
    assert report.status_text("j", counts(2), []).splitlines() == [
        "0 of 2 processed. (0.0 %, 2 remaining)", "  pending 2, running 0, done 0, failed 0"]
    with_hosts = report.status_text("j", counts(done=1), [], [("h1", 1, 0, 7200.0)])
    assert with_hosts.splitlines()[2:] == report.hosts_text([("h1", 1, 0, 7200.0)]).splitlines()


def test_status_json():
    data = json.loads(report.status_json("j", counts(1, 1, 1, 0), [(5, 2, "why")], [("h", 1, 0, 1.23456)]))
    assert data == {"job": "j", "total": 3, "pending": 1, "running": 1, "done": 1, "failed": 0, "remaining": 2,
                    "percent_done": 33.333, "failures": [{"obsid": 5, "attempts": 2, "reason": "why"}],
                    "hosts": [{"host": "h", "done": 1, "failed": 0, "busy_seconds": 1.235}]}
    assert json.loads(report.status_json("j", counts(), [], []))["percent_done"] == 0.0


def test_hosts_text():
    lines = report.hosts_text([("node1", 10, 1, 3600.0), ("node2", 5, 0, 5400.0)]).splitlines()
    assert [line.split() for line in lines] == [["host", "done", "failed", "busy", "(h)"],
                                                ["node1", "10", "1", "1.00"], ["node2", "5", "0", "1.50"],
                                                ["total", "15", "1", "2.50"]]
    assert report.hosts_text([]).splitlines()[1].split() == ["total", "0", "0", "0.00"]


def test_slot_summary():
    slot = Slot(2, 4, "node7")
    assert report.slot_summary(slot, 3, 2, 1, 90.0) == \
        "node7 SLOT 2 SUMMARY: 3 obsids processed in 1.50 minutes (0.50 minutes/obsid); 2 done, 1 failed"
    assert report.slot_summary(slot, 0, 0, 0, 0.0) == \
        "node7 SLOT 2 SUMMARY: 0 obsids processed in 0.00 minutes (no obsid); 0 done, 0 failed"
    # issue 22: an obsid put back (stopped, a setup fault) is not processed; one obsid is "1 obsid"
    assert report.slot_summary(slot, 2, 1, 0, 60.0, attempts=2) == (
        "node7 SLOT 2 SUMMARY: 1 obsid processed in 1.00 minutes (1.00 minutes/obsid); 1 done, 0 failed, "
        "1 back to pending")
    assert "in 2880.00 minutes" in report.slot_summary(slot, 1, 1, 0, 2 * 86400.0)   # whole days counted


def row(state, reason="", host="h", worker="1/1", pid=42):
    return {"obsid": 7, "state": state, "attempts": 2, "reason": reason, "host": host, "worker": worker, "pid": pid}


def attempt(n, outcome, started=0.0, ended=12.34, exit_code=None, signal_no=None, reason=""):
    return {"attempt": n, "outcome": outcome, "started": started, "ended": ended, "host": "h", "worker": "1/2",
            "pid": 99, "exit_code": exit_code, "signal_no": signal_no, "reason": reason}


def test_obsid_text():
    history = [attempt(1, "failed", exit_code=1, reason="HIPE exited with status 1"),
               attempt(2, "failed", ended=None, signal_no=signal.SIGKILL, reason="HIPE killed by SIGKILL"),
               attempt(3, "lost", started=None, ended=None)]
    lines = report.obsid_text(row("failed", "HIPE killed by SIGKILL"), history).splitlines()
    assert lines[0] == "obsid 7: failed, 2 attempts counted: HIPE killed by SIGKILL"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(0.0))
    assert lines[1] == f"  attempt 1  failed   {when}     12.3 s  h slot 1/2 pid 99  exit 1  HIPE exited with status 1"
    assert lines[2].endswith("        ?  h slot 1/2 pid 99  signal 9 (SIGKILL)  HIPE killed by SIGKILL")
    assert lines[3] == "  attempt 3  lost     ?          ?  h slot 1/2 pid 99  -"
    assert report.obsid_text(row("running"), []).splitlines() == [
        "obsid 7: running, 2 attempts counted, running on h slot 1/1 pid 42", "  no attempt recorded yet"]
    assert report.obsid_text(row("done", "old reason"), []).splitlines()[0] == "obsid 7: done, 2 attempts counted"
    assert "signal 99" in report.obsid_text(row("failed"), [attempt(1, "failed", signal_no=99)])
    # issue 22: after a reset the count starts again; the old failed row and the new one are told apart
    lines = report.obsid_text(row("done"), [attempt(1, "failed"), attempt(1, "stopped"), attempt(1, "done")]).splitlines()
    assert [line[line.index("  ["):] if "  [" in line else "" for line in lines[1:]] == [
        "", "  [not counted]", "  [after a reset]"]


def test_obsid_json():
    data = json.loads(report.obsid_json(row("pending", "stopped by SIGTERM"), [attempt(1, "stopped")]))
    assert (data["obsid"], data["state"], data["attempts"], data["reason"]) == (7, "pending", 2, "stopped by SIGTERM")
    assert data["history"] == [attempt(1, "stopped")]


# ----------------------------------------------------------------------------- HIPE's files
def test_py2_string():
    assert py2_string('a "b" \\c\nd\r') == '"a \\"b\\" \\\\c\\nd\\r"'
    assert eval(py2_string("/tmp/it's \"odd\"\\ $HOME")) == "/tmp/it's \"odd\"\\ $HOME"


def test_script_text(tmp_path):
    template = tmp_path / "j.py"
    template.write_text("x = obsid\n\n\n")
    marker = tmp_path / "done-marker"
    text = script_text(template, 1342191755, Path("/out dir"), "j", marker)
    assert text.splitlines() == [
        "# -*- coding: utf-8 -*-", "obsid=1342191755", f'outDir="/out dir{os.sep}"', 'jobName="j"',
        f'batchTemplate = compile(open("{template}", "rb").read(), "{template}", "exec")',
        "# The template compiled: the marker, empty, says it can run.", f'open("{marker}", "w").close()',
        "exec(batchTemplate)", "# Reached only if the template ran to its end.",
        f'batchEnd = open("{marker}", "w"); batchEnd.write("end"); batchEnd.close()']
    scope = {}
    exec(text, scope)   # the preamble, the template as its own file and the marker lines (valid Jython 2 too)
    assert (scope["obsid"], scope["x"], scope["outDir"], marker.read_text()) == (1342191755, 1342191755, "/out dir/", "end")


def test_hipe_command():
    hipe = config.HipeSettings(("/opt/hipe", "--batch"), "4g", ("a=1", "b=two words"), 0.0)
    assert hipe_command(hipe, Path("/cache"), Path("/tmp/s.py")) == [
        "/opt/hipe", "--batch", "-properties", "java.vm.memory.max=4g", "hcss.ia.pal.pool.cache.dir=/cache",
        "a=1", "b=two words", "/tmp/s.py"]


def test_the_workers_temporary_folder_is_made_in_tmpdir_whatever_tempfile_chose(tmp_path, monkeypatch):
    """$TMPDIR is honoured where the folder is made, not only after a check that happened to run
    first: tempfile caches its first choice (and falls back to /tmp from a TMPDIR it cannot use)."""
    chosen = tmp_path / "scratch-disk"
    chosen.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # what tempfile chose before TMPDIR was set
    monkeypatch.setenv("TMPDIR", str(chosen))
    folder = make_scratch("j")
    assert folder.parent == chosen and folder.name.startswith("hipe-batch-j-")
    folder.rmdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "gone"))      # not there: an error naming it, not /tmp
    with pytest.raises(FileNotFoundError, match="gone"):
        make_scratch("j")


def test_keep_previous(tmp_path):
    log = tmp_path / "1.stdout"
    keep_previous(log)                     # nothing there: nothing to do
    log.write_text("")
    keep_previous(log)                     # empty: overwritten, not kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.stdout"]
    for n in ("first", "second", "third"):
        log.write_text(n)
        keep_previous(log)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "1.stdout.1": "first", "1.stdout.2": "second", "1.stdout.3": "third"}


def test_verdict_and_last_words(tmp_path):
    err = tmp_path / "1.stderr"
    assert _last_words(err) == ""          # no file
    err.write_text("")
    assert _last_words(err) == ""
    err.write_text("noise\n" * 2000 + "Traceback...\nValueError: " + "x" * 300 + "\n\n  \n")
    assert _last_words(err) == ": ValueError: " + "x" * 148
    err.write_text("ValueError: bad calibration\n")
    assert _verdict(0, True, err) == Outcome(True, "", 0)
    # The script's own errors are not retried by default; a signal we did not send is.
    assert _verdict(0, False, err) == Outcome(
        False, "script stopped before its end though HIPE exited 0: ValueError: bad calibration", 0, script_error=True)
    assert _verdict(3, True, err) == Outcome(False, "HIPE exited with status 3: ValueError: bad calibration", 3,
                                             script_error=True)
    assert _verdict(-9, False, err) == Outcome(False, "HIPE killed by SIGKILL: ValueError: bad calibration", None, 9)


# ----------------------------------------------------------------------------- the slot
def test_slot_without_mpi(monkeypatch):
    for name in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    slot = current_slot()
    assert (slot.rank, slot.size, slot.name) == (1, 1, "1/1")
    assert Slot(3, 8, "h").name == "3/8"


# ----------------------------------------------------------------------------- SQL statements
def test_in_list_chunks_obsids_into_named_parameters():
    assert list(in_list([11, 12, 13, 14, 15], size=2)) == [
        (":obsid_0, :obsid_1", {"obsid_0": 11, "obsid_1": 12}),
        (":obsid_0, :obsid_1", {"obsid_0": 13, "obsid_1": 14}),
        (":obsid_0", {"obsid_0": 15})]
    assert list(in_list([])) == []
    chunks = list(in_list(range(1, 1202)))   # 500 a chunk by default (SQLite's limit on parameters is far)
    assert [len(values) for _, values in chunks] == [500, 500, 201]
    assert [v for _, values in chunks for v in values.values()] == list(range(1, 1202))



def test_the_mysql_dialect_without_a_server():
    """The same statements in MySQL's words: backquotes, %(name)s parameters, SKIP LOCKED, INSERT IGNORE.
    (The object is built without its constructor, which would connect.)"""
    table = object.__new__(storage.MySQLJobTable)
    table.job_table, table.history_table = storage.MySQLJobTable.quote("j"), storage.MySQLJobTable.quote("j__attempts")
    assert table.statement(storage.INSERT_OBSID) == "INSERT IGNORE INTO `j` (obsid) VALUES (%(obsid)s)"
    assert table.statement(storage.PICK_PENDING).endswith("LIMIT 1 FOR UPDATE SKIP LOCKED")
    assert table.statement(storage.HEARTBEAT) == ("UPDATE `j` SET heartbeat = UNIX_TIMESTAMP(NOW(6)), "
                                                   "lease_expires = UNIX_TIMESTAMP(NOW(6)) + %(lease)s, "
                                                   "beats = COALESCE(beats, 0) + 1\n"
                                                   "  WHERE obsid = %(obsid)s AND token = %(token)s AND state = 'running'")
    with pytest.raises(BadInput, match="is not a valid SQL name"):
        storage.MySQLJobTable.quote("j`; DROP TABLE x; --")

@pytest.fixture
def memory(tmp_path):
    """(statement, db): a job table `j` of the SQLite dialect to fill statements in, and an
    in-memory SQLite database holding j and j__attempts made by the named CREATE statements."""
    settings = config.SqlSettings("sqlite", "", 0, "", "", path=tmp_path / "batch.sqlite")
    table = storage.SQLiteJobTable("j", settings, create=True)
    db = sqlite3.connect(":memory:", isolation_level=None)
    for create in (storage.CREATE_JOB_TABLE, storage.CREATE_HISTORY_TABLE):
        db.execute(table.statement(create))
    yield table.statement, db
    db.close()
    table.close()


def test_statements_fill_identifiers_and_keep_values_as_parameters(memory):
    statement, _ = memory
    assert statement(storage.COUNT_ALL) == 'SELECT COUNT(*) FROM "j"'
    assert statement(storage.INSERT_OBSID) == 'INSERT OR IGNORE INTO "j" (obsid) VALUES (:obsid)'
    assert statement(storage.PRESENT, obsids=":obsid_0, :obsid_1") == \
        'SELECT obsid FROM "j" WHERE obsid IN (:obsid_0, :obsid_1)'
    assert '"j__attempts"' in statement(storage.HISTORY_ALL)


def test_named_statements_on_an_in_memory_sqlite(memory):
    statement, db = memory
    for obsid in (5, 6, 7, 5):
        db.execute(statement(storage.INSERT_OBSID), {"obsid": obsid})   # INSERT OR IGNORE: 5 once
    assert db.execute(statement(storage.COUNT_ALL)).fetchone() == (3,)
    db.execute(statement(storage.CLAIM), {"obsid": 6, "token": "t" * 32, "host": "h", "worker": "1/1", "pid": 42,
                                          "lease": 30, "pid_start": 4242, "machine": "boot pid:[1]"})
    assert sorted(db.execute(statement(storage.COUNT_BY_STATE)).fetchall()) == [("pending", 2), ("running", 1)]
    assert db.execute(statement(storage.HEARTBEAT), {"obsid": 6, "token": "x" * 32, "lease": 30}).rowcount == 0   # fenced
    assert db.execute(statement(storage.HEARTBEAT), {"obsid": 6, "token": "t" * 32, "lease": 30}).rowcount == 1
    assert db.execute('SELECT beats, machine FROM "j" WHERE obsid = 6').fetchone() == (1, "boot pid:[1]")   # one renewal
    [(marks, values)] = in_list([6, 7, 99])
    assert sorted(db.execute(statement(storage.PRESENT, obsids=marks), values).fetchall()) == [(6,), (7,)]
    db.execute(statement(storage.HISTORY_FROM_ROW), {"attempt": 1, "outcome": "done", "obsid": 6, "token": "t" * 32,
                                                     "heap_mb": 2048, "cpu_s": 1.5, "peak_rss_mb": 300.0,
                                                     "read_mb": 2.0, "write_mb": 0.5})
    assert db.execute(statement(storage.HISTORY_OF_OBSID), {"obsid": 6}).fetchall()[0][:5] == (6, 1, "h", "1/1", 42)


# ----------------------------------------------------------------------------- tests/support.py
def test_reaper_kills_what_it_was_given_and_nothing_else(tmp_path):
    """The Reaper every process test relies on: popen'd processes, watched pids and processes
    carrying a registered HIPE_BATCH_ROOT are killed; a watched pid reused by another process is not."""
    def sleeper(**env):
        return subprocess.Popen(["sleep", "60"], env=dict(os.environ, **env))
    reaper, bystander = Reaper(), sleeper()
    try:
        popened = reaper.popen(sleeper())
        watched = sleeper()
        reaper.watch(watched.pid)
        rooted = sleeper(HIPE_BATCH_ROOT=str(tmp_path))
        reaper.roots.add(tmp_path)
        reused = sleeper()
        reaper.pids[reused.pid] = "another start time"   # as if the watched process had died and its pid been reused
        assert reaper.ours() == [rooted.pid]
        reaper.cleanup()
        for proc in (watched, rooted):
            wait_for(lambda: proc.poll() is not None, 10, f"pid {proc.pid} to be killed")
        assert [p.returncode for p in (popened, watched, rooted)] == [-signal.SIGKILL] * 3
        assert bystander.poll() is None and reused.poll() is None
        assert pid_alive(bystander.pid) and not pid_alive(watched.pid) and not pid_alive(2 ** 22 + 1)
    finally:
        for proc in (bystander, reused):
            proc.kill()
            proc.wait()
