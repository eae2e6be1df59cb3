"""Everyday use: installed commands, the root of a batch.cfg, a bare python3, `run -j N` and its cap."""
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import BIN, ROOT, TRIVIAL_HIPE
from mariadb_server import wait_for

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
    out, err = first.communicate(timeout=300)
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
    out1, err1 = first.communicate(timeout=300)
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


def test_ctrl_c_stops_every_worker_and_puts_their_obsids_back(batch):
    batch.template("j", "import time\ntime.sleep(120)\n")
    batch.cli("j", "new", batch.obsid_file([1, 2, 3, 4]))
    proc = batch.popen("j", "run", "-j", "3", start_new_session=True)
    wait_for(lambda: len(batch.calls_list()) >= 3, 60, "three HIPEs")
    os.killpg(proc.pid, signal.SIGINT)   # what a Ctrl-C in the terminal does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert sorted(SUMMARY_LINE.findall(out)) == ["1", "2", "3"]
    rows = batch.table("j").rows()
    assert [r["state"] for r in rows] == ["pending"] * 4 and [r["attempts"] for r in rows] == [0] * 4
    # Only the parent signalled (as `kill PID` would): it passes the stop on to every worker.
    proc = batch.popen("j", "run", "-j", "2", start_new_session=True)
    wait_for(lambda: len(batch.calls_list()) >= 5, 60, "two more HIPEs")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and sorted(SUMMARY_LINE.findall(out)) == ["1", "2"], err
    assert {r["state"] for r in batch.table("j").rows()} == {"pending"}
