"""Bad input through the real entry point, and the password.

A few cases of the bad-input table (bad_input_cases.py; the whole table runs in-process in tests/unit
and tests/integration) run through `bin/BatchProcess.py` in a subprocess, to show the entry point
says the same as `cli.main`. Then inputs that are fine, and the password: never on a command line, in
a log, in status or in an error; a warning when batch.cfg holds it and others may read it; it may
come from ~/.my.cnf or $HIPE_BATCH_PASSWORD. (Hostfile inputs are tested with the MPI launcher.)
"""
import os

import pytest

from bad_input_cases import OBSIDS, PREFIX, assert_refused, cases_on, filler, make_job, snapshot
from mariadb_server import PASSWORD
from support import BatchEnv, environ, wait_for

# One case of each kind: a batch.cfg line (holding the password), an obsid file, a job name, a command
# that asks for confirmation on stdin, and the database refusing the password.
THROUGH_THE_ENTRY_POINT = (cases_on("sqlite", {"config_garbage_line", "obsid_garbage", "job_name_0", "wipe_unconfirmed"})
                           + cases_on("mysql", {"wrong_password"}))


@pytest.mark.parametrize("batch,case", THROUGH_THE_ENTRY_POINT, indirect=["batch"])
def test_bad_input_through_the_entry_point(batch, case):
    make_job(batch)
    file = case.setup(batch) if case.setup else None
    before = snapshot(batch)
    fill = filler(batch, file)
    r = batch.cli(*[fill(a) for a in case.args], input=case.stdin, timeout=60)
    assert_refused(case, fill, r.returncode, r.stdout, r.stderr)
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
