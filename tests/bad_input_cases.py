"""The bad-input table (issue 4): each case sets up a job, breaks one thing and names one command,
which must give one clear line on stderr, `BatchProcess.py: error: ...` naming the file, line, key or
value, exit status 2, and change nothing: the database's tables and rows and the jobs/ folder are the
same before and after (`snapshot`).

The table is run in-process through `cli.main` (tests/unit on SQLite, tests/integration on MariaDB),
and a few of its cases through the real `bin/BatchProcess.py` (tests/system).
"""
import io
import sqlite3
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import pytest

from batchUtility.model import Outcome
from mariadb_server import PASSWORD

PREFIX = "BatchProcess.py: error: "
OBSIDS = [1342191755, 1342191756, 1342191757]


# ----------------------------------------------------------------------------- what "nothing" is
def snapshot(env):
    """Every table of the env's database with its definition and rows, and every file under jobs/."""
    jobs = {}
    for path in sorted((env.root / "jobs").rglob("*")) if (env.root / "jobs").exists() else []:
        jobs[str(path.relative_to(env.root))] = path.read_bytes() if path.is_file() else "dir"
    return {"db": _dump(env), "jobs": jobs}


def _dump(env):
    if env.backend == "sqlite":
        path = env.root / "batch.sqlite"
        if not path.exists():
            return None
        db = sqlite3.connect(str(path))
        try:
            names = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
            return {"schema": names, **{n: db.execute(f'SELECT * FROM "{n}" ORDER BY 1').fetchall()
                                        for t, n, _ in names if t == "table"}}
        finally:
            db.close()
    with env.server.admin(env.db) as c:
        cur = c.cursor()
        cur.execute("SHOW FULL TABLES")
        names = sorted(cur.fetchall())
        dump = {"schema": names}
        for name, _ in names:
            cur.execute(f"SHOW CREATE TABLE `{name}`")
            dump[name + " create"] = cur.fetchall()
            cur.execute(f"SELECT * FROM `{name}` ORDER BY 1")
            dump[name] = cur.fetchall()
        return dump


def make_job(env, job="j"):
    """Job j: three obsids, one of them done (so the history has a row), its folder and template."""
    table = env.table(job, create=True)
    table.create(OBSIDS)
    claim = table.claim("somehost", "1/1", 4242)
    table.finish(claim, Outcome(True, "", 0), 3)
    table.close()
    for sub in ("log", "output"):
        (env.root / "jobs" / job / sub).mkdir(parents=True, exist_ok=True)
    env.template(job, "print(obsid)\n")


# ----------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    args: Tuple                    # the command line; "{root}" and "{file}" are filled in
    expect: Tuple[str, ...]        # each must be in the error line
    setup: Optional[Callable] = None   # setup(env) -> path for "{file}", or None
    only: Optional[str] = None     # a backend, if the case applies to one only
    stdin: Optional[str] = None


def cfg(sql=None, hipe=None, run=None):
    return lambda env: env.write_cfg(sql=sql, hipe=hipe, run=run) and None


def raw_cfg(text_or_bytes):
    def setup(env):
        if isinstance(text_or_bytes, bytes):
            env.cfg_path.write_bytes(text_or_bytes)
        else:
            env.write_cfg(raw=text_or_bytes)
    return setup


def base_cfg_text(env, extra_sql=""):
    """A valid batch.cfg for env as text, with lines added to [sql]."""
    env.write_cfg()
    return env.cfg_path.read_text().replace("[sql]\n", "[sql]\n" + extra_sql, 1)


def obsid_file(content, name="obsids.txt"):
    def setup(env):
        path = env.root / name
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return path
    return setup


def both(*setups):
    def setup(env):
        result = None
        for s in setups:
            result = s(env) or result
        return result
    return setup


def remove(relative):
    return lambda env: (env.root / relative).unlink() and None


def link_template(env):
    """The job's template replaced by a link to a script elsewhere (a habit: the script kept in a checkout)."""
    (env.root / "mine.py").write_text("print(obsid)\n")
    (env.root / "jobs/j/j.py").unlink()
    (env.root / "jobs/j/j.py").symlink_to(env.root / "mine.py")


def plain_table(env):
    """A table called `other` that is not a job table, for commands that must not touch it."""
    if env.backend == "sqlite":
        db = sqlite3.connect(str(env.root / "batch.sqlite"))
        db.execute("CREATE TABLE other (id INTEGER PRIMARY KEY, note TEXT)")
        db.execute("INSERT INTO other VALUES (1, 'keep me')")
        db.commit()
        db.close()
    else:
        with env.server.admin(env.db) as c:
            c.cursor().execute("CREATE TABLE other (id INT PRIMARY KEY, note TEXT)")
            c.cursor().execute("INSERT INTO other VALUES (1, 'keep me')")


BAD = "obsids.txt"
NOT_OBSID = "is not an obsid (a positive whole number of at most 10 digits)"
CASES = [
    # --- batch.cfg
    Case("no_config", ("j", "status"), ("no batch.cfg: looked in {root}/batch.cfg",), remove("batch.cfg")),
    Case("config_flag_missing", ("--config", "{root}/nope.cfg", "j", "status"),
         ("{root}/nope.cfg: configuration file not found (from --config)",)),
    Case("config_not_ini", ("j", "status"), ("{root}/batch.cfg:1: a [section] header must come before any key",),
         raw_cfg("this is not an ini file\n")),
    Case("config_binary", ("j", "status"), ("batch.cfg: cannot be read as an ini file", "can't decode byte 0xff"),
         raw_cfg(b"\xff\xfe[\x00s\x00q\x00l\x00]\x00\n")),
    Case("config_garbage_line", ("j", "status"), ("batch.cfg:3: not a 'key = value' line",),
         lambda env: env.write_cfg(raw=base_cfg_text(env, "# the next line lacks its '='\npswd " + PASSWORD + "\n"))),
    Case("config_duplicate_key", ("j", "status"), ("option 'backend' in section 'sql' already exists",),
         lambda env: env.write_cfg(raw=base_cfg_text(env, "backend = sqlite\n"))),
    Case("config_no_sql_section", ("j", "status"), ("batch.cfg: no [sql] section",),
         raw_cfg("[hipe]\ncommand = hipe\n")),
    Case("config_unknown_section", ("j", "status"), ("batch.cfg: unknown section [sqll] (known: sql, hipe, run)",),
         lambda env: env.write_cfg(raw=base_cfg_text(env) + "[sqll]\nhost = x\n")),
    Case("config_unknown_key", ("j", "status"), ("[sql] unknown key 'passwd'",), cfg(sql={"passwd": "x"})),
    Case("backend_unknown", ("j", "status"), ("[sql] backend = 'postgres': must be one of mysql, sqlite",),
         cfg(sql={"backend": "postgres"})),
    Case("port_not_a_number", ("j", "status"), ("[sql] port = '33o6': not a whole number",),
         cfg(sql={"port": "33o6"}), only="mysql"),
    Case("port_huge", ("j", "status"), ("[sql] port = '99999999999999999999': must be between 1 and 65535",),
         cfg(sql={"port": "99999999999999999999"}), only="mysql"),
    Case("port_negative", ("j", "status"), ("[sql] port = '-3306': must be between 1 and 65535",),
         cfg(sql={"port": "-3306"}), only="mysql"),
    Case("host_list_bad_port", ("j", "status"),
         ("[sql] host = '127.0.0.1:3306, db2:99999': entry 'db2:99999': port must be between 1 and 65535",),
         cfg(sql={"host": "127.0.0.1:3306, db2:99999"}), only="mysql"),
    Case("host_list_empty_entry", ("j", "status"),
         ("[sql] host = 'db1,,db2': an empty entry (two commas, or one at an end)",),
         cfg(sql={"host": "db1,,db2"}), only="mysql"),
    Case("user_missing", ("j", "status"), ("batch.cfg: [sql] user is missing",), cfg(sql={"user": ""}), only="mysql"),
    Case("option_file_missing", ("j", "status"), ("[sql] option_file = '/no/such/my.cnf': no such file",),
         cfg(sql={"option_file": "/no/such/my.cnf"}), only="mysql"),
    Case("master_table_injection", ("j", "status"),
         ("[sql] table = 'v11_1; DROP TABLE j': master table name 'v11_1; DROP TABLE j' is not valid",),
         cfg(sql={"table": "v11_1; DROP TABLE j"})),
    Case("sqlite_folder_missing", ("j", "status"), ("folder /no/such/folder does not exist",),
         cfg(sql={"path": "/no/such/folder/batch.sqlite"}), only="sqlite"),
    Case("lease_zero", ("j", "run"), ("[run] lease = '0': must be at least 1",), cfg(run={"lease": "0"})),
    Case("lease_negative", ("j", "run"), ("[run] lease = '-300': must be at least 1",), cfg(run={"lease": "-300"})),
    Case("lease_nan", ("j", "run"), ("[run] lease = 'nan': not a finite number",), cfg(run={"lease": "nan"})),
    Case("lease_overflows", ("j", "run"), ("[run] lease = '1e999': not a finite number",), cfg(run={"lease": "1e999"})),
    Case("max_attempts_fraction", ("j", "run"), ("[run] max_attempts = '2.5': not a whole number",),
         cfg(run={"max_attempts": "2.5"})),
    Case("max_attempts_huge", ("j", "run"), ("must be between 1 and 1000",),
         cfg(run={"max_attempts": "1" + "0" * 30})),
    Case("max_attempts_zero", ("j", "run"), ("[run] max_attempts = '0': must be between 1 and 1000",),
         cfg(run={"max_attempts": "0"})),
    Case("wait_for_running_unknown", ("j", "run"), ("[run] wait_for_running = 'maybe': must be one of",),
         cfg(run={"wait_for_running": "maybe"})),
    Case("timeout_negative", ("j", "run"), ("[hipe] timeout = '-1': must be at least 0",), cfg(hipe={"timeout": "-1"})),
    Case("memory_bad", ("j", "run"), ("[hipe] memory = '2 GB': must look like 2048m or 4g",),
         cfg(hipe={"memory": "2 GB"})),
    Case("max_memory_bad", ("j", "run"), ("[hipe] max_memory = '8 GB': must look like 8192m or 16g",),
         cfg(hipe={"max_memory": "8 GB"})),
    Case("max_memory_below_memory", ("j", "run"), ("[hipe] max_memory = '1g': must be at least [hipe] memory (2g)",),
         cfg(hipe={"memory": "2g", "max_memory": "1g"})),
    Case("properties_bad", ("j", "run"), ("[hipe] properties = 'verbose': each property must be name=value",),
         cfg(hipe={"properties": "a.b=1 verbose"})),
    Case("command_unbalanced_quote", ("j", "run"), ("[hipe] command = 'hipe \"unterminated': No closing quotation",),
         cfg(hipe={"command": 'hipe "unterminated'})),
    # --- the database
    Case("wrong_password", ("j", "status"), ("cannot use MySQL database", "as user 'hipeuser'", "Access denied"),
         cfg(sql={"pswd": "not-" + PASSWORD}), only="mysql"),
    Case("unknown_database", ("j", "status"), ("cannot use MySQL database 'nosuchdb'", "Unknown database 'nosuchdb'"),
         cfg(sql={"db": "nosuchdb"}), only="mysql"),
    # --- obsid files
    Case("obsid_garbage", ("k", "new", "{file}"), ("{file}:2: 'hello world' " + NOT_OBSID,),
         obsid_file("1342191755\nhello world\n1342191756\n")),
    Case("obsid_garbage_at_the_end", ("k", "new", "{file}"), ("{file}:10001: 'x' " + NOT_OBSID,),
         obsid_file("".join(f"{1342000000 + i}\n" for i in range(10000)) + "x\n")),
    Case("obsid_negative", ("k", "new", "{file}"), ("{file}:1: '-1342191755' " + NOT_OBSID,), obsid_file("-1342191755\n")),
    Case("obsid_huge", ("k", "new", "{file}"), ("{file}:2: '" + "9" * 40 + "' " + NOT_OBSID,),
         obsid_file("1342191755\n" + "9" * 40 + "\n")),
    Case("obsid_eleven_digits", ("k", "new", "{file}"), ("{file}:1: '13421917550' " + NOT_OBSID,),
         obsid_file("13421917550\n")),
    Case("obsid_zero", ("k", "new", "{file}"), ("{file}:1: '0' " + NOT_OBSID,), obsid_file("0\n")),
    Case("obsid_float", ("k", "new", "{file}"), ("{file}:1: '1342191755.0' " + NOT_OBSID,), obsid_file("1342191755.0\n")),
    Case("obsid_exponent", ("k", "new", "{file}"), ("{file}:1: '1.342191755e9' " + NOT_OBSID,),
         obsid_file("1.342191755e9\n")),
    Case("obsid_hex", ("k", "new", "{file}"), ("{file}:1: '0x4FFF0A6B' " + NOT_OBSID,), obsid_file("0x4FFF0A6B\n")),
    Case("obsid_sql_injection", ("k", "new", "{file}"), ("{file}:1: '1342191755); DROP TABLE j; --' " + NOT_OBSID,),
         obsid_file("1342191755); DROP TABLE j; --\n")),
    Case("obsid_nul_byte", ("k", "new", "{file}"), ("{file}:1: '13421\\x0091755' " + NOT_OBSID,),
         obsid_file("13421\x0091755\n")),
    Case("obsid_not_utf8", ("k", "new", "{file}"), ("{file}:2: not UTF-8 text",), obsid_file(b"1342191755\n\xff\xfe\n")),
    Case("obsid_file_missing", ("k", "new", "{root}/no such file.txt"),
         ("{root}/no such file.txt: cannot read obsid file: No such file or directory",)),
    Case("obsid_file_is_a_folder", ("k", "new", "{root}/jobs"), ("{root}/jobs: cannot read obsid file: Is a directory",)),
    Case("obsid_garbage_add", ("j", "new", "--add", "{file}"), ("{file}:2: 'oops' " + NOT_OBSID,),
         obsid_file("1342191758\noops\n")),
    Case("reset_unknown_obsid", ("j", "reset", "--obsids", "{file}"),
         ("1 obsid(s) not in job 'j', e.g. 1342999999; nothing was reset",), obsid_file("1342191755\n1342999999\n")),
    Case("reset_garbage", ("j", "reset", "--obsids", "{file}"), ("{file}:1: '-5' " + NOT_OBSID,), obsid_file("-5\n")),
    # --- job names
    *[Case(f"job_name_{i}", (name, "status"), (f"job name {name!r} is not valid: use at most 48 letters",))
      for i, name in enumerate(["j; DROP TABLE j", "j`; DROP DATABASE x; --", "Robert'); DROP TABLE Students;--",
                                "../../etc/passwd", "two words", "1342191755", "_j", "j__attempts",
                                "a" * 49, "jöb", "", "j\nk"])],
    Case("job_name_is_the_master", ("v11_1", "new", "{file}"), ("job name 'v11_1' is the master table's name",),
         obsid_file("1342191755\n")),
    Case("job_not_ours", ("other", "status"), ("table 'other' in", "is not a job table of this tool"), plain_table),
    Case("wipe_not_ours", ("other", "wipe", "--yes"), ("is not a job table of this tool", "left untouched"),
         plain_table),
    # --- commands
    Case("status_missing_job", ("nojob", "status"), ("no job 'nojob' in", "create it with: BatchProcess.py nojob new")),
    Case("status_obsid_not_in_job", ("j", "status", "--obsid", "1342999999"), ("obsid 1342999999 is not in job 'j'",)),
    Case("status_obsid_huge", ("j", "status", "--obsid", "9" * 30), ("--obsid " + "9" * 30 + ": not an obsid",)),
    Case("status_obsid_negative", ("j", "status", "--obsid=-1"), ("--obsid -1: not an obsid",)),
    Case("new_existing_job", ("j", "new", "{file}"), ("job 'j' exists already (3 obsids): use --add",),
         obsid_file("1342191755\n")),
    Case("new_master_missing", ("k", "new"), ("master table 'nomaster' not found",), cfg(sql={"table": "nomaster"})),
    Case("template_missing", ("j", "run"), ("template {root}/jobs/j/j.py not found",), remove("jobs/j/j.py")),
    Case("template_not_utf8", ("j", "run"), ("template {root}/jobs/j/j.py cannot be read",),
         lambda env: (env.root / "jobs/j/j.py").write_bytes(b"print('\xff')\n") and None),
    Case("template_a_link", ("j", "run"),
         ("template {root}/jobs/j/j.py cannot be read: a symbolic link", "put the script itself there, not a link to it"),
         link_template),
    Case("hipe_not_on_path", ("j", "run"),
         ("HIPE command 'no-such-hipe' not found on PATH ([hipe] command in {root}/batch.cfg)",),
         cfg(hipe={"command": "no-such-hipe"})),
    Case("hipe_not_executable", ("j", "run"), ("HIPE command '{root}/not hipe.txt' not found on PATH",),
         lambda env: (env.root / "not hipe.txt").write_text("hipe\n") and env.write_cfg(
             hipe={"command": f"'{env.root}/not hipe.txt'"}) and None),
    Case("wipe_unconfirmed", ("j", "wipe"), ("wipe drops job 'j' (3 obsids): confirm with --yes",), stdin=""),
]


def cases_on(backend, ids=None):
    """pytest params (backend, case) of the cases that apply to backend (those named in ids, if given),
    with the ids the table has always had: BACKEND-CASE."""
    return [pytest.param(backend, c, id=f"{backend}-{c.id}") for c in CASES
            if c.only in (None, backend) and (ids is None or c.id in ids)]


def filler(env, file):
    """fill(s): s with {root} and {file} filled in."""
    def fill(s):
        return s.replace("{root}", str(env.root)).replace("{file}", str(file))
    return fill


def assert_refused(case, fill, code, out, err):
    """Exit status 2, nothing on stdout, one error line holding what the case expects, no password."""
    assert code == 2, (code, out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    for fragment in case.expect:
        assert fill(fragment) in lines[0], lines[0]
    assert PASSWORD not in err


def refused_in_process(batch, case, main, monkeypatch):
    """One case through `cli.main` in this process (the `main` fixture): refused as assert_refused
    says, and nothing changed (the tables and the job's folder as before)."""
    make_job(batch)
    file = case.setup(batch) if case.setup else None
    before = snapshot(batch)
    fill = filler(batch, file)
    if case.stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(case.stdin))
    r = main(*[fill(a) for a in case.args])
    assert_refused(case, fill, r.code, r.out, r.err)
    assert snapshot(batch) == before, "a bad input changed something"
