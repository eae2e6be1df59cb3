"""Bad input never hurts (issue 4): each bad input gives one clear line on stderr,
`BatchProcess.py: error: ...` naming the file, line, key or value, exit status 2, and changes
nothing: the database's tables and rows and the jobs/ folder are the same before and after.

Then the password: never on a command line, in a log, in status or in an error; a warning when
batch.cfg holds it and others may read it; it may come from ~/.my.cnf or $HIPE_BATCH_PASSWORD.
(Hostfile inputs are tested with the MPI launcher, not here.)
"""
import os
import sqlite3
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import pytest

from mariadb_server import PASSWORD
from support import BatchEnv, environ, wait_for

from batchUtility.model import Outcome

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
    Case("hipe_not_on_path", ("j", "run"),
         ("HIPE command 'no-such-hipe' not found on PATH ([hipe] command in {root}/batch.cfg)",),
         cfg(hipe={"command": "no-such-hipe"})),
    Case("hipe_not_executable", ("j", "run"), ("HIPE command '{root}/not hipe.txt' not found on PATH",),
         lambda env: (env.root / "not hipe.txt").write_text("hipe\n") and env.write_cfg(
             hipe={"command": f"'{env.root}/not hipe.txt'"}) and None),
    Case("wipe_unconfirmed", ("j", "wipe"), ("wipe drops job 'j' (3 obsids): confirm with --yes",), stdin=""),
]


@pytest.mark.parametrize("batch,case", [pytest.param(backend, c, id=f"{backend}-{c.id}") for c in CASES
                                        for backend in ("sqlite", "mysql") if c.only in (None, backend)],
                         indirect=["batch"])
def test_bad_input(batch, case):
    make_job(batch)
    file = case.setup(batch) if case.setup else None
    before = snapshot(batch)
    def fill(s):
        return s.replace("{root}", str(batch.root)).replace("{file}", str(file))
    r = batch.cli(*[fill(a) for a in case.args], input=case.stdin, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), r.stderr
    for fragment in case.expect:
        assert fill(fragment) in lines[0], lines[0]
    assert PASSWORD not in r.stderr
    assert snapshot(batch) == before, "a bad input changed something"


# ----------------------------------------------------------------------------- inputs that are fine
def test_crlf_bom_and_csv_obsid_files_are_read_right(batch):
    f = batch.root / "windows.csv"
    f.write_bytes("\ufeffobsid,mode\r\n1342191755,HifiPointModeDBS\r\n1342191756,x\r\n".encode("utf-8"))
    batch.template("j", "print(obsid)\n")
    r = batch.cli("j", "new", f)
    assert r.returncode == 0, r.stderr
    assert [row["obsid"] for row in batch.table("j").rows()] == [1342191755, 1342191756]


def test_batch_cfg_with_bom_and_crlf_works(batch):
    batch.write_cfg()
    text = batch.cfg_path.read_text().replace("\n", "\r\n")
    batch.cfg_path.write_bytes(("\ufeff" + text).encode("utf-8"))
    r = batch.cli("j", "new", batch.obsid_file([1342191755]))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("job", ["select", "order", "table"])
@pytest.mark.slow
def test_job_names_that_are_sql_keywords_are_quoted_not_refused(batch, job):
    """The original failed on them; here they are quoted like every identifier, and just work."""
    batch.template(job, "print(obsid)\n")
    assert batch.cli(job, "new", batch.obsid_file(OBSIDS)).returncode == 0
    r = batch.cli(job, "run", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "3 of 3 processed." in batch.cli(job, "status").stdout
    assert batch.cli(job, "wipe", "--yes").returncode == 0


@pytest.mark.slow
def test_paths_with_spaces_and_quotes(tmp_path):
    """A root folder, an obsid file and the output folder whose names hold spaces and both kinds
    of quotes: HIPE's preamble, the command line and the database path all survive them."""
    env = BatchEnv(tmp_path / "it's a \"quoted\" root $HOME", "sqlite")
    env.template("j", "open(outDir + 'product %d.txt' % obsid, 'w').write(outDir)\n")
    f = env.root / "my 'obsids' \"list\".txt"
    f.write_text("1342191755\n")
    assert env.cli("j", "new", f).returncode == 0
    r = env.cli("j", "run", timeout=120)
    assert r.returncode == 0, r.stderr
    product = env.root / "jobs" / "j" / "output" / "product 1342191755.txt"
    assert product.read_text() == str(env.root / "jobs" / "j" / "output") + os.sep


# ----------------------------------------------------------------------------- the password
def _cmdlines():
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found[int(entry)] = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                pass
    return found


def _environ(pid):
    return b"\0".join(environ(pid)).decode("utf-8", "replace")


@pytest.mark.parametrize("where", ["batch.cfg", "environment"])
@pytest.mark.slow
def test_password_never_shown(mysql_batch, where, tmp_path):
    """The password is in no process's command line while workers and HIPE run, not in HIPE's
    environment, not in any output of any command (errors included), nor in any log."""
    env = mysql_batch
    extra = {}
    env.write_cfg(run={"lease": "5"})   # a worker with nothing left looks for more every second
    if where == "environment":
        env.write_cfg(sql={"pswd": None}, run={"lease": "5"})
        extra = {"HIPE_BATCH_PASSWORD": PASSWORD}
    env.template("j", "import os, time\n"
                      "print(sorted(os.environ.items()))\n"     # a script that prints its environment
                      "go = os.path.join(outDir, 'go')\n"
                      "end = time.time() + 120\n"
                      "while not os.path.exists(go) and time.time() < end:\n"
                      "    time.sleep(0.05)\n")
    outputs = []

    def cli(*args, **kw):
        r = env.cli(*args, env=env.env(**extra), **kw)
        outputs.append(r.stdout + r.stderr)
        return r
    assert cli("j", "new", env.obsid_file(OBSIDS)).returncode == 0
    workers = [env.popen("j", "run", env=env.env(**extra)) for _ in range(2)]
    try:
        wait_for(lambda: len(env.calls_list()) >= 2, 60, "two HIPEs to run")
        lines = _cmdlines()
        assert not [cmd for cmd in lines.values() if PASSWORD in cmd], "the password is on a command line"
        hipes = [int(line.split()[1]) for line in env.calls.read_text().splitlines()]
        assert not [pid for pid in hipes if PASSWORD in _environ(pid)], "HIPE was given the password"
        assert cli("j", "status", "--hosts").returncode == 0
        assert cli("j", "status", "--json").returncode == 0
        (env.root / "jobs" / "j" / "output" / "go").touch()
        for w in workers:
            out, err = w.communicate(timeout=120)
            outputs.append(out + err)
            assert w.returncode == 0, err
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.communicate()
    assert cli("j", "status", "--obsid", OBSIDS[0]).returncode == 0
    assert cli("j", "status", "--obsid", OBSIDS[0], "--json").returncode == 0
    assert cli("j", "reset", "--failed").returncode == 0
    assert cli("nojob", "status").returncode == 2
    env.write_cfg(sql={"db": "nosuchdb"} if where == "environment" else {"db": "nosuchdb", "pswd": PASSWORD})
    assert cli("j", "status").returncode == 2
    env.write_cfg(raw=env.cfg_path.read_text().replace("[sql]\n", "[sql]\npswd " + PASSWORD + "\n", 1))
    assert cli("j", "status").returncode == 2
    assert len(outputs) == 11
    assert not [o for o in outputs if PASSWORD in o], "the password was printed"
    logs = [p for p in (env.root / "jobs").rglob("*") if p.is_file()]
    assert any("HIPE_BATCH_ROOT" in p.read_text() for p in logs)   # the script did print its environment
    assert not [p for p in logs if PASSWORD in p.read_text()], "the password is in a log"


def test_world_readable_batch_cfg_with_a_password_is_warned_about(mysql_batch):
    env = mysql_batch
    env.table("j", create=True).create(OBSIDS)
    env.cfg_path.chmod(0o644)
    r = env.cli("j", "status")
    assert r.returncode == 0
    [warning] = [line for line in r.stderr.splitlines() if "WARNING" in line]
    assert f"{env.cfg_path} holds a database password and is readable by other users: chmod 600" in warning
    assert PASSWORD not in r.stderr
    env.cfg_path.chmod(0o600)
    assert env.cli("j", "status").stderr == ""
    env.write_cfg(sql={"pswd": None})   # no password in the file: nothing to warn about
    env.cfg_path.chmod(0o644)
    r = env.cli("j", "status", env=env.env(HIPE_BATCH_PASSWORD=PASSWORD))
    assert r.returncode == 0 and r.stderr == ""


@pytest.mark.parametrize("source", ["home_my_cnf", "option_file", "environment"])
def test_password_from_elsewhere_than_batch_cfg(mysql_batch, tmp_path, source):
    """batch.cfg without pswd: the password comes from ~/.my.cnf, from [sql] option_file, or from
    $HIPE_BATCH_PASSWORD; without any of them the server refuses, with one clear line."""
    env = mysql_batch
    home = tmp_path / "home"
    home.mkdir()
    my_cnf = f"[client]\npassword = {PASSWORD}\n"
    sql, extra = {"pswd": None}, {"HOME": home}
    if source == "home_my_cnf":
        (home / ".my.cnf").write_text(my_cnf)
    elif source == "option_file":
        (tmp_path / "db.cnf").write_text(my_cnf)
        sql["option_file"] = str(tmp_path / "db.cnf")
    else:
        extra["HIPE_BATCH_PASSWORD"] = PASSWORD
    for path in home.iterdir():
        path.chmod(0o600)
    env.write_cfg(sql=sql)
    env.template("j", "print(obsid)\n")
    r = env.cli("j", "new", env.obsid_file(OBSIDS), env=env.env(**extra))
    assert r.returncode == 0, r.stderr
    r = env.cli("j", "run", env=env.env(**extra), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "3 of 3 processed." in env.cli("j", "status", env=env.env(**extra)).stdout
    assert PASSWORD not in r.stdout + r.stderr
    # Without it: refused, one line, exit 2.
    env.write_cfg(sql={"pswd": None})
    r = env.cli("j", "status", env=env.env(HOME=tmp_path / "empty-home"))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(PREFIX) and "Access denied for user 'hipeuser'" in r.stderr
