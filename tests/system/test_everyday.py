"""Everyday use: installed commands, the root of a batch.cfg, a bare python3, `run -j N` and its cap."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from support import BIN, ROOT, TRIVIAL_HIPE, wait_for

SLOT_LINE = re.compile(r"^\.\.\.\.\.  \[Slot (\d+)/(\d+) on (\S+)\] \[#(\d+), obsid=(\d+)\]$", re.M)
SUMMARY_LINE = re.compile(r"^\S+ SLOT (\d+) SUMMARY: ", re.M)
# A template that counts how many HIPEs of the job run at once: each one leaves a file in
# $PROBE_DIR while it runs and appends the number of files it saw to $PROBE_DIR.max.
COUNTING = ("import os, time\n"
            "d = os.environ['PROBE_DIR']\n"
            "me = os.path.join(d, str(obsid))\n"
            "open(me, 'w').close()\n"
            "f = open(d + '.max', 'a'); f.write('%d\\n' % len(os.listdir(d))); f.close()\n"
            "time.sleep(float(os.environ.get('PROBE_SLEEP', '0.3')))\n"
            "os.remove(me)\n")


def minimal_env(**extra):
    """cron's environment: HOME, LOGNAME, SHELL, PATH=/usr/bin:/bin, nothing else."""
    return {"HOME": os.environ.get("HOME", "/root"), "LOGNAME": "root", "SHELL": "/bin/sh",
            "PATH": "/usr/bin:/bin", **{k: str(v) for k, v in extra.items()}}


def test_version():
    r = subprocess.run([sys.executable, str(BIN), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and re.fullmatch(r"BatchProcess\.py \d+\.\d+\.\d+\n", r.stdout), r


@pytest.mark.slow
def test_config_alone_gives_the_root(batch, tmp_path):
    """No HIPE_BATCH_ROOT: --config's folder is the root, or its parent when that folder is bin/."""
    env = batch.env()
    del env["HIPE_BATCH_ROOT"]
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    for cfg in (batch.cfg_path, batch.root / "bin" / "batch.cfg"):
        if cfg != batch.cfg_path:
            cfg.parent.mkdir()
            text = batch.cfg_path.read_text()
            if batch.backend == "sqlite":
                text = text.replace("path = batch.sqlite", f"path = {batch.root / 'batch.sqlite'}")
            cfg.write_text(text)
            batch.cfg_path.unlink()
            batch.cli("--config", cfg, "j", "wipe", "--yes", env=env)
        r = subprocess.run([sys.executable, str(BIN), "--config", str(cfg), "j", "new", str(batch.obsid_file([1, 2]))],
                           capture_output=True, text=True, env=env, cwd=elsewhere)
        assert r.returncode == 0, r.stderr
        assert f"template: {batch.root / 'jobs' / 'j' / 'j.py'}" in r.stdout
        batch.template("j", "pass\n")
        r = subprocess.run([sys.executable, str(BIN), "--config", str(cfg), "j", "run"],
                           capture_output=True, text=True, env=env, cwd=elsewhere)
        assert r.returncode == 0, r.stderr
        assert sorted(p.name for p in (batch.root / "jobs" / "j" / "log").iterdir()) == \
            ["1.stderr", "1.stdout", "2.stderr", "2.stdout"]
        assert not (elsewhere / "jobs").exists() and not (ROOT / "jobs" / "j").exists()


def test_bare_python3_under_cron_uses_the_checkouts_venv(mysql_batch):
    """/usr/bin/python3 (no MySQLdb) with cron's environment: the checkout's .venv runs the command."""
    batch = mysql_batch
    if subprocess.run(["/usr/bin/python3", "-c", "import MySQLdb"], capture_output=True).returncode == 0:
        pytest.skip("the system Python has MySQLdb: nothing to re-exec for")
    assert (ROOT / ".venv" / "bin" / "python").exists()
    batch.template("j", "pass\n")
    batch.cli("j", "new", batch.obsid_file([5]))
    r = subprocess.run(["/usr/bin/python3", str(BIN), "--config", str(batch.cfg_path), "j", "run"],
                       capture_output=True, text=True, env=minimal_env(), cwd="/")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert [row["state"] for row in batch.table("j").rows()] == ["done"]


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["pip-install", "pip-install-e"])
def test_pip_install_into_a_fresh_venv(tmp_path, editable):
    """`pip install .` (and -e) outside the checkout: commands on the venv's PATH, shared data, a root elsewhere."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", *(["-e"] if editable else []), str(ROOT)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for command in ("BatchProcess.py", "BatchProcess_mpi.sh", "hipe-standin"):
        assert os.access(venv / "bin" / command, os.X_OK), command
    root = tmp_path / "data root"
    root.mkdir()
    (root / "batch.cfg").write_text(f"[sql]\nbackend = sqlite\n[hipe]\ncommand = {TRIVIAL_HIPE}\nmemory = 256m\n")
    (root / "ids").write_text("11\n12\n13\n")
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    env = minimal_env(PATH=f"{venv / 'bin'}:/usr/bin:/bin")

    def run(*args):
        return subprocess.run(["BatchProcess.py", "--config", str(root / "batch.cfg"), *args], capture_output=True,
                              text=True, env=env, cwd=cwd, timeout=120)
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("BatchProcess.py "), r.stderr
    r = run("j", "new", str(root / "ids"))
    assert r.returncode == 0, r.stderr
    template = root / "jobs" / "j" / "j.py"
    assert "Example HIPE job script" in template.read_text()    # the example came along
    template.write_text("x = obsid\n")
    r = run("j", "run", "-j", "2")
    assert r.returncode == 0, r.stderr
    assert sorted(int(m[4]) for m in SLOT_LINE.findall(r.stdout)) == [11, 12, 13]
    assert {m[1] for m in SLOT_LINE.findall(r.stdout)} == {"2"}
    r = run("j", "status")
    assert r.returncode == 0 and r.stdout.startswith("3 of 3 processed."), r.stderr
    assert (root / "batch.sqlite").exists() and not list(venv.glob("lib/python*/jobs"))
    # The shipped batch.cfg copied into a root: its bin/hipe-standin is the installed one.
    other = tmp_path / "copied"
    other.mkdir()
    share = ROOT if editable else venv / "share" / "hipe-batch"
    (other / "batch.cfg").write_text((share / "batch.cfg").read_text())
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "from batchUtility import config; "
                        f"print(config.load({str(other / 'batch.cfg')!r}).hipe.command[0])"],
                       capture_output=True, text=True, env=env, cwd=cwd)
    assert r.stdout.strip() == str(share / "bin" / "hipe-standin"), r.stderr
    assert (share / "sql" / "master_mysql.sql").is_file()
    r = subprocess.run(["BatchProcess_mpi.sh", "j", "--config", str(root / "batch.cfg"), "--hostfile", "/dev/null",
                        "--dry-run"], capture_output=True, text=True, env=env, cwd=cwd)
    # An empty hostfile is refused by the checks, which ran in the venv's Python (no import error).
    assert r.returncode == 2 and "BatchProcess_mpi.sh: error:" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
def test_run_jobs_n_starts_n_workers_with_one_summary(batch):
    obsids = list(range(1000, 1012))
    batch.template("j", "import time\ntime.sleep(0.05)\n")
    batch.cli("j", "new", batch.obsid_file(obsids))
    r = batch.cli("j", "run", "-j", "3")
    assert r.returncode == 0, r.stderr
    lines = SLOT_LINE.findall(r.stdout)
    assert sorted(int(m[4]) for m in lines) == obsids
    assert {(m[0], m[1]) for m in lines} == {("1", "3"), ("2", "3"), ("3", "3")}
    assert sorted(SUMMARY_LINE.findall(r.stdout)) == ["1", "2", "3"]
    assert r.stdout.count("job-wide summary of job j:") == 1 and "12 of 12 processed." in r.stdout
    assert sorted(Counter(batch.calls_list()).items()) == [(o, 1) for o in obsids]
    assert not (batch.root / "jobs" / "j" / ".slots").exists() or \
        all(p.name.startswith(os.uname().nodename) for p in (batch.root / "jobs" / "j" / ".slots").iterdir())


@pytest.mark.slow
def test_two_overlapping_run_j_3_never_exceed_the_cap(batch, tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    obsids = list(range(1, 16))
    batch.template("j", COUNTING)
    batch.cli("j", "new", batch.obsid_file(obsids))
    env = batch.env(PROBE_DIR=probe)
    first = batch.popen("j", "run", "-j", "3", env=env)
    wait_for(lambda: len(batch.calls_list()) >= 3, 60, "the first run's three workers")
    second = batch.cli("j", "run", "-j", "3", env=env)
    assert second.returncode == 0 and "3 worker(s) of job j already run on" in second.stdout, second
    assert "SUMMARY" not in second.stdout and SLOT_LINE.findall(second.stdout) == []
    _out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    seen = [int(n) for n in Path(str(probe) + ".max").read_text().split()]
    assert len(seen) == 15 and max(seen) <= 3 and max(seen) >= 2
    assert sorted(batch.calls_list()) == obsids


@pytest.mark.slow
def test_run_j_starts_only_the_missing_workers(sqlite_batch, tmp_path):
    batch = sqlite_batch
    probe = tmp_path / "probe"
    probe.mkdir()
    batch.template("j", COUNTING)
    batch.cli("j", "new", batch.obsid_file(range(1, 13)))
    env = batch.env(PROBE_DIR=probe, PROBE_SLEEP=1)
    first = batch.popen("j", "run", "-j", "2", env=env)
    wait_for(lambda: len(batch.calls_list()) >= 2, 60, "two workers")
    second = batch.popen("j", "run", "-j", "3", env=env)
    out2, err2 = second.communicate(timeout=300)
    _out1, err1 = first.communicate(timeout=300)
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    assert "2 worker(s) of job j already run on" in out2 and "starting 1 (slot 3 of 3)" in out2
    assert {(m[0], m[1]) for m in SLOT_LINE.findall(out2)} == {("3", "3")}
    assert max(int(n) for n in Path(str(probe) + ".max").read_text().split()) <= 3


def test_a_killed_worker_frees_its_slot(sqlite_batch):
    batch = sqlite_batch
    batch.template("j", "import time\ntime.sleep(60)\n")
    batch.cli("j", "new", batch.obsid_file([1, 2, 3]))
    first = batch.popen("j", "run", "-j", "2", start_new_session=True)
    try:
        wait_for(lambda: len(batch.calls_list()) >= 2, 60, "two HIPEs")
        slot_pids = [int(p.read_text()) for p in (batch.root / "jobs" / "j" / ".slots").glob("*.lock")]
        assert len(slot_pids) == 2
        os.kill(slot_pids[0], signal.SIGKILL)
        second = batch.popen("j", "run", "-j", "2", start_new_session=True)
        wait_for(lambda: len(batch.calls_list()) >= 3, 60, "a third HIPE, in the freed slot")
        os.killpg(second.pid, signal.SIGTERM)
        out, _ = second.communicate(timeout=60)
        assert "1 worker(s) of job j already run on" in out and "starting 1" in out
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.communicate(timeout=60)


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_puts_their_obsids_back(batch):
    batch.template("j", "import time\ntime.sleep(120)\n")
    batch.cli("j", "new", batch.obsid_file([1, 2, 3, 4]))
    proc = batch.popen("j", "run", "-j", "5", start_new_session=True)
    wait_for(lambda: len(batch.calls_list()) >= 4, 60, "four HIPEs (the fifth worker waits, with nothing to claim)")
    os.killpg(proc.pid, signal.SIGINT)   # what a Ctrl-C in the terminal does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert sorted(SUMMARY_LINE.findall(out)) == ["1", "2", "3", "4", "5"]
    # One line per worker on stderr, saying what became of its obsid, and nothing else.
    stops = [re.fullmatch(r"\S+ \S+ WARNING \[\S+ slot (\d)/5 pid \d+( obsid=\d)?\] stopped by SIGINT"
                          r"(: HIPE stopped, obsid put back to pending| with no obsid running): worker stopping", line)
             for line in err.splitlines()]
    assert all(stops) and sorted(m[1] for m in stops) == ["1", "2", "3", "4", "5"], err
    assert sorted(bool(m[2]) for m in stops) == [False, True, True, True, True], err   # the one idle worker
    rows = batch.table("j").rows()
    assert [r["state"] for r in rows] == ["pending"] * 4 and [r["attempts"] for r in rows] == [0] * 4
    # Only the parent signalled (as `kill PID` would): it passes the stop on to every worker.
    proc = batch.popen("j", "run", "-j", "2", start_new_session=True)
    wait_for(lambda: len(batch.calls_list()) >= 6, 60, "two more HIPEs")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and sorted(SUMMARY_LINE.findall(out)) == ["1", "2"], err
    assert {r["state"] for r in batch.table("j").rows()} == {"pending"}


# ----------------------------------------------------------------------------- cron-ready behaviour
def quiet_runs(batch):
    """Every command of a cron line, with -q, on a job whose obsids all succeed."""
    return [("j", "new", "--add", "-", "-q"), ("j", "reset", "--failed", "-q"), ("j", "run", "-q"),
            ("j", "run", "-j", "2", "-q"), ("j", "new", "--add", "-", "-q"), ("j", "run", "-j", "2", "-q"),
            ("j", "reset", "--stale", "-q")]


@pytest.mark.slow
def test_quiet_prints_nothing_when_all_is_well(batch):
    batch.template("j", OK_TEMPLATE)
    for args in quiet_runs(batch):
        r = batch.cli(*args, input="1\n2\n3\n" if "-" in args else None)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), args
    assert [row["state"] for row in batch.table("j").rows()] == ["done"] * 3


@pytest.mark.slow
def test_quiet_speaks_when_something_needs_a_person(batch):
    batch.template("j", "if obsid == 2:\n    raise ValueError('bad calibration')\n")
    batch.cli("j", "new", batch.obsid_file([1, 2, 3]))
    for args in (("j", "run", "-q"), ("j", "run", "-j", "2", "-q")):
        batch.cli("j", "reset", "--failed")
        r = batch.cli(*args)
        assert r.returncode == 1, args
        assert r.stdout == ""
        errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and "obsid=2" in errors[0] and "bad calibration" in errors[0], r.stderr


OK_TEMPLATE = "x = obsid * 2\n"


@pytest.mark.slow
def test_max_time_stops_claiming_and_lets_the_running_obsid_finish(batch):
    batch.template("j", "import time\ntime.sleep(1.5)\n")
    batch.cli("j", "new", batch.obsid_file(range(1, 9)))
    r = batch.cli("j", "run", "--max-time", "1s")
    assert r.returncode == 1, r.stderr                         # obsids left: not every obsid done
    rows = batch.table("j").rows()
    done = [row["obsid"] for row in rows if row["state"] == "done"]
    assert 1 <= len(done) <= 2 and {row["state"] for row in rows} == {"done", "pending"}
    assert "--max-time" in r.stderr and "stopped claiming" in r.stderr
    r = batch.cli("j", "run", "--max-time", "soon")
    assert r.returncode == 2 and "--max-time" in r.stderr and "soon" in r.stderr


@pytest.mark.slow
def test_exit_statuses_are_job_level(batch):
    """0 every obsid done, 1 some failed or left, 2 bad input; the same for run and run -j."""
    batch.template("j", "if obsid == 2:\n    raise ValueError('no')\n")
    batch.cli("j", "new", batch.obsid_file([1, 2]))
    for args in (("j", "run"), ("j", "run", "-j", "2")):
        assert batch.cli(*args).returncode == 1, args          # 2 failed: this run ...
        assert batch.cli(*args).returncode == 1, args          # ... and any later one, with nothing to do
    batch.template("j", OK_TEMPLATE)
    batch.cli("j", "reset", "--failed")
    assert batch.cli("j", "run").returncode == 0
    assert batch.cli("j", "run").returncode == 0
    assert batch.cli("j", "run", "-j", "3").returncode == 0
    assert batch.cli("nojob", "run", "-j", "2").returncode == 2
    r = subprocess.run([sys.executable, str(BIN), "--help"], capture_output=True, text=True)
    assert "exit status" in r.stdout.lower() and "128+N" in r.stdout


# ----------------------------------------------------------------------------- retries
def test_a_script_error_fails_the_obsid_at_once(batch):
    batch.template("j", "raise ValueError('typo')\n")
    batch.cli("j", "new", batch.obsid_file([5]))
    r = batch.cli("j", "run")
    assert r.returncode == 1
    [row] = batch.table("j").rows()
    assert (row["state"], row["attempts"]) == ("failed", 1) and batch.calls_list() == [5]
    assert "will be retried" not in r.stderr


def test_retry_errors_yes_retries_script_errors(batch):
    batch.template("j", "raise ValueError('typo')\n")
    batch.write_cfg(run={"retry_errors": "yes", "max_attempts": "3"})
    batch.cli("j", "new", batch.obsid_file([5]))
    assert batch.cli("j", "run").returncode == 1
    assert batch.calls_list() == [5, 5, 5]


@pytest.mark.slow
def test_hipe_killed_by_a_signal_we_did_not_send_is_retried(batch):
    """The kernel's OOM killer, say: not the script's fault; retried, and done the second time."""
    batch.template("j", "import os, signal\n"
                        "if not os.path.exists(outDir + 'once'):\n"
                        "    open(outDir + 'once', 'w').close()\n"
                        "    os.kill(os.getppid(), signal.SIGKILL)\n")
    batch.cli("j", "new", batch.obsid_file([5]))
    assert batch.cli("j", "run").returncode == 0
    [row] = batch.table("j").rows()
    assert (row["state"], row["attempts"]) == ("done", 2) and batch.calls_list() == [5, 5]


def test_a_worker_halts_after_k_script_errors(batch):
    batch.template("j", "raise ValueError('no')\n")   # it runs, and fails (one that cannot run halts the job at once)
    batch.write_cfg(run={"halt_after": "3"})
    batch.cli("j", "new", batch.obsid_file(range(1, 11)))
    r = batch.cli("j", "run")
    assert r.returncode == 1
    assert len(batch.calls_list()) == 3
    halt = [line for line in r.stderr.splitlines() if "template probably cannot work" in line]
    assert len(halt) == 1 and "3" in halt[0], r.stderr
    counts = batch.table("j").counts()
    assert (counts["failed"], counts["pending"]) == (3, 7)


# ----------------------------------------------------------------------------- a dead worker on this host
@pytest.mark.slow
def test_a_dead_worker_on_this_host_is_seen_at_once(batch):
    batch.write_cfg(run={"lease": "300"})
    batch.template("j", "import time\ntime.sleep(120)\n")
    batch.cli("j", "new", batch.obsid_file([5, 6]))
    worker = batch.popen("j", "run")
    wait_for(lambda: len(batch.calls_list()) >= 1, 60, "HIPE")
    worker.kill()
    worker.communicate()
    batch.template("j", OK_TEMPLATE)
    t0 = time.monotonic()
    r = batch.cli("j", "reset", "--stale")
    assert r.returncode == 0 and r.stdout.startswith("1 obsid of lost workers taken back"), r.stdout
    assert time.monotonic() - t0 < 5
    [five, _six] = batch.table("j").rows()
    assert (five["state"], five["attempts"]) == ("pending", 1) and "gone" in five["reason"]
    worker = batch.popen("j", "run")
    wait_for(lambda: len(batch.calls_list()) >= 2, 60, "the next HIPE")
    worker.kill()
    worker.communicate()
    t0 = time.monotonic()
    r = batch.cli("j", "run")                                 # the next run takes it back as well
    assert r.returncode == 0 and time.monotonic() - t0 < 30, r.stderr
    assert {row["state"] for row in batch.table("j").rows()} == {"done"}


def test_a_claim_of_another_host_waits_for_its_lease(sqlite_batch):
    batch = sqlite_batch
    batch.write_cfg(run={"lease": "300"})
    batch.template("j", OK_TEMPLATE)
    batch.cli("j", "new", batch.obsid_file([5]))
    table = batch.table("j")
    table.claim("otherhost", "1/1", 1)                        # pid 1 is alive here, but that means nothing
    r = batch.cli("j", "reset", "--stale")
    assert r.stdout.startswith("0 obsids") and table.counts()["running"] == 1


# ----------------------------------------------------------------------------- reset asks
def test_plain_reset_asks_before_putting_done_obsids_back(batch):
    batch.template("j", OK_TEMPLATE)
    batch.cli("j", "new", batch.obsid_file([1, 2]))
    batch.cli("j", "run")
    r = batch.cli("j", "reset")                               # no terminal: refuses
    assert (r.returncode, r.stdout) == (2, "") and len(r.stderr.splitlines()) == 1, r
    assert "--yes" in r.stderr and "2 done" in r.stderr
    assert batch.table("j").counts()["done"] == 2
    r = batch.cli("j", "reset", "--yes")
    assert r.returncode == 0 and batch.table("j").counts()["pending"] == 2
    for args in (("--failed",), ("--stale",), ("--obsids", str(batch.obsid_file([1])))):
        assert batch.cli("j", "reset", *args).returncode == 0, args


# ----------------------------------------------------------------------------- tracebacks
def test_the_traceback_names_the_template_and_its_lines(batch):
    template = batch.template("j", "x = 1\ny = 2\nraise ValueError('line three')\n")
    batch.cli("j", "new", batch.obsid_file([5]))
    batch.cli("j", "run")
    stderr = (batch.root / "jobs" / "j" / "log" / "5.stderr").read_text()
    assert f'File "{template}", line 3' in stderr, stderr
    r = batch.cli("j", "status", "--obsid", "5")
    assert str(batch.root / "jobs" / "j" / "log" / "5.stderr") in r.stdout


@pytest.mark.slow
def test_the_traceback_names_the_template_under_jython(sqlite_batch):
    batch = sqlite_batch
    batch.write_cfg(hipe={"command": str(ROOT / "bin" / "hipe-standin")})
    template = batch.template("j", "from __future__ import division\n# a comment\nx = 1 / 2\n"
                                   "s = 'caf\u00e9'\nif obsid == 6:\n    raise ValueError('line six')\n")
    batch.cli("j", "new", batch.obsid_file([5, 6]))
    batch.cli("j", "run", "-j", "2")
    rows = batch.table("j").rows()
    assert [r["state"] for r in rows] == ["done", "failed"], rows
    stderr = (batch.root / "jobs" / "j" / "log" / "6.stderr").read_text()
    assert f'File "{template}", line 6' in stderr, stderr


# ----------------------------------------------------------------------------- wording
def test_summary_counts_obsids_and_attempts(batch):
    batch.write_cfg(run={"retry_errors": "yes", "max_attempts": "2"})
    batch.template("j", "if obsid == 2:\n    raise ValueError('no')\n")
    batch.cli("j", "new", batch.obsid_file([1, 2, 3]))
    r = batch.cli("j", "run")
    assert re.findall(r"\[#(\d+), obsid=(\d+)\]", r.stdout) == [("1", "1"), ("2", "2"), ("2", "2"), ("3", "3")]
    assert "3 obsids in 4 attempts" in r.stdout and "2 done, 1 failed" in r.stdout, r.stdout


def test_verbose_logs_sql_timing_and_claims(batch):
    batch.template("j", OK_TEMPLATE)
    batch.cli("j", "new", batch.obsid_file([1]))
    r = batch.cli("j", "run", "-v")
    assert re.search(r"DEBUG .*sql .* \d+\.\d ms", r.stderr) and re.search(r"DEBUG .*claimed obsid 1", r.stderr), r.stderr


@pytest.mark.slow
def test_an_unreachable_database_is_named_with_its_port_and_the_time_really_waited(sqlite_batch):
    """A port where nothing listens (bound, so nobody else takes it meanwhile): exit 3, one error line
    naming host and port, and the seconds it says it waited are the seconds it took."""
    batch = sqlite_batch
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        batch.write_cfg(sql={"backend": "mysql", "host": "127.0.0.1", "port": port, "user": "u", "pswd": "p",
                             "db": "x", "path": None})
        t0 = time.monotonic()
        r = batch.cli("j", "status")
        took = time.monotonic() - t0
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 3 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"MySQL database 'x' at 127.0.0.1:{port} as user 'u': gave up connecting after " in errors[0]
    waited = float(re.search(r"gave up connecting after (\d+\.\d) s", errors[0]).group(1))
    assert 10.0 <= waited <= took, (waited, took)   # INTERACTIVE_PATIENCE waited out in full, and said so


def test_obsids_from_standard_input(batch):
    batch.template("j", OK_TEMPLATE)
    r = batch.cli("j", "new", "-", input="1342191755\n# comment\n1342191756\n")
    assert r.returncode == 0 and "2 obsids added" in r.stdout
    r = batch.cli("j", "reset", "--obsids", "-", input="1342191755\n")
    assert r.returncode == 0
    r = batch.cli("j", "new", "--add", "-", input="12x\n")
    assert r.returncode == 2 and "<stdin>:1" in r.stderr


def test_a_job_table_of_an_earlier_version_is_upgraded(batch):
    """A job table without the columns added since (pid_start) gets them from the next command, once."""
    batch.template("j", OK_TEMPLATE)
    batch.cli("j", "new", batch.obsid_file([1, 2]))
    table = batch.table("j")
    table._transaction(lambda cur: cur.execute(table.statement("ALTER TABLE {job_table} DROP COLUMN pid_start")),
                       "dropping a column")
    assert "pid_start" not in table.rows()[0]
    for _ in range(2):   # idempotent
        r = batch.cli("j", "status")
        assert r.returncode == 0, r.stderr
    assert "pid_start" in batch.table("j").rows()[0]
    r = batch.cli("j", "run", "-j", "2")
    assert r.returncode == 0, r.stderr
    assert all(row["pid_start"] for row in batch.table("j").rows())


def reading_stdin(pid):
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[:2] == ["0", "0x0"]
    except OSError:
        return False


@pytest.mark.slow
def test_overlapping_new_add_create_the_job_once(batch):
    """Two cron lines firing at once both create the job with `new --add -`: neither fails or drops it."""
    batch.template("j", OK_TEMPLATE)
    for _ in range(3):
        procs = [batch.popen("j", "new", "--add", "-", "-q", stdin=subprocess.PIPE) for _ in range(6)]
        # All of them reading standard input (syscall 0 on fd 0), then all given it at once: they race.
        wait_for(lambda: all(reading_stdin(p.pid) for p in procs), 60, "every `new` to read its obsids")
        for p in procs:
            p.stdin.write("1\n2\n3\n")
            p.stdin.close()
        results = [(p.wait(60), p.stderr.read()) for p in procs]
        assert [code for code, _ in results] == [0] * 6, results
        assert [row["obsid"] for row in batch.table("j").rows()] == [1, 2, 3]
        assert batch.cli("j", "wipe", "--yes").returncode == 0
