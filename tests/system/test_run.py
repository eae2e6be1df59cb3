"""`run`: claiming, launching HIPE, judging success, timeouts and stops, with real processes."""
import os
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from support import BIN, GATED, STANDIN, ignoring_sigint, new_job, pid_alive, wait_for

OK = "x = obsid * 2\n"


@pytest.mark.slow
def test_eight_concurrent_workers_do_every_obsid_exactly_once(batch):
    obsids = list(range(1342190000, 1342190500))
    batch.template("c", OK)
    assert batch.cli("c", "new", batch.obsid_file(obsids)).returncode == 0
    workers = [batch.popen("c", "run") for _ in range(8)]
    outs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0] * 8, [o[1][-2000:] for o in outs]
    calls = Counter(batch.calls_list())
    assert sorted(calls) == obsids and set(calls.values()) == {1}       # HIPE called once per obsid
    rows = batch.table("c").rows()
    assert [r["state"] for r in rows] == ["done"] * 500 and {r["pipelined"] for r in rows} == {1}
    printed = Counter(int(m) for out, _ in outs for m in re.findall(r"obsid=(\d+)\]", out))
    assert sorted(printed) == obsids and set(printed.values()) == {1}
    assert sum(1 for out, _ in outs if "SUMMARY" in out) == 8
    history = batch.table("c").history()
    assert len(history) == 500 and {h["outcome"] for h in history} == {"done"}


# The job script checks that HIPE's pool cache folder is empty, then leaves a folder and a file in it.
FILLS_ITS_POOL_CACHE = """import os
cache = [line.split()[3] for line in open(os.environ['TRIVIAL_HIPE_CALLS']) if line.split()[0] == str(obsid)][-1]
assert os.listdir(cache) == [], 'pool cache not empty: %r' % os.listdir(cache)
os.mkdir(os.path.join(cache, 'pool'))
open(os.path.join(cache, 'pool', 'product.fits'), 'w').write('x')
open(os.path.join(cache, 'index'), 'w').write('y')
"""


def test_output_lines_launch_and_temporaries(batch):
    batch.template("o", FILLS_ITS_POOL_CACHE + "import sys\nprint('out %d' % obsid)\nsys.stderr.write('err\\n')\n")
    batch.cli("o", "new", batch.obsid_file([11, 12]))
    r = batch.cli("o", "run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    host = os.uname().nodename
    assert lines[:2] == [f".....  [Slot 1/1 on {host}] [#1, obsid=11]", f".....  [Slot 1/1 on {host}] [#2, obsid=12]"]
    assert re.fullmatch(rf"{re.escape(host)} SLOT 1 SUMMARY: 2 obsids processed in \d+\.\d\d minutes "
                        r"\(\d+\.\d\d minutes/obsid\); 2 done, 0 failed", lines[2])
    log = batch.root / "jobs" / "o" / "log"
    assert (log / "11.stdout").read_text() == "out 11\n" and (log / "11.stderr").read_text() == "err\n"
    assert sorted(os.listdir(log)) == ["11.stderr", "11.stdout", "12.stderr", "12.stdout"]   # nothing else, ever
    calls = [line.split() for line in batch.calls.read_text().splitlines()]
    assert [c[2] for c in calls] == ["512m", "512m"]                    # java.vm.memory.max
    caches = [c[3] for c in calls]   # each launch found its pool cache empty (the script says so), and
    assert not any(os.path.exists(c) for c in caches)   # it is removed with the worker's temporary folder
    assert not any(os.path.exists(os.path.dirname(c)) for c in caches)  # the temporary script's folder too


# Obsid 11's script leaves behind a process that escaped HIPE's process group (setsid) and goes on
# writing into 11's pool cache: by its path, making the folder again if it is gone (as a Java cache
# would), or through its working folder (it went into the cache: a renamed folder is still its working
# folder). Obsid 12's script, run next by the same worker, gives it time to write (up to 5 s, or until
# it is gone), then checks that it is gone and that its own pool cache is empty.
STRAY = """import os, sys, time
cache, count, stop, how = sys.argv[1:]
if how == 'cwd':
    os.chdir(cache)
n = 0
while not os.path.exists(stop):
    try:
        if how == 'cwd':
            open('stray-%d' % n, 'w').write('x')
        else:
            if not os.path.isdir(cache):
                os.mkdir(cache)
            open(os.path.join(cache, 'stray-%d' % n), 'w').write('x')
    except OSError:
        pass
    n += 1
    open(count, 'a').write('.')
    time.sleep(0.01)
"""
LEAVES_A_STRAY_WRITER = """import os, subprocess, sys, time
cache = [line.split()[3] for line in open(os.environ['TRIVIAL_HIPE_CALLS']) if line.split()[0] == str(obsid)][-1]
count, stop = os.path.join(outDir, 'stray-writes'), os.path.join(outDir, 'stop')
pid_file = os.path.join(outDir, 'stray-pid')
def writes():
    return os.path.getsize(count) if os.path.exists(count) else 0
def alive(pid):
    try:
        return open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except OSError:
        return False
if obsid == 11:
    stray = subprocess.Popen([sys.executable, '-c', STRAY, cache, count, stop, HOW], start_new_session=True)
    open(pid_file, 'w').write(str(stray.pid))
    while not writes():
        time.sleep(0.01)
else:
    stray, seen, end = int(open(pid_file).read()), writes(), time.time() + 5
    while writes() < seen + 5 and alive(stray) and time.time() < end:
        time.sleep(0.01)
    assert os.listdir(cache) == [], 'a stray process wrote into this pool cache: %r' % os.listdir(cache)[:3]
    assert not alive(stray), 'the stray process of the last launch still runs'
"""


@pytest.mark.parametrize("how", ["path", "cwd"])
def test_a_process_escaped_from_hipe_is_killed_before_the_next_launch(batch, reaper, how):
    """A process HIPE's script started in a session of its own (setsid) outlives HIPE: the worker,
    its subreaper, kills it when HIPE ends (one line says so), so it never writes into the next
    launch's pool cache, by its path or through its working folder (before: the renamed cache, the
    stray's working folder, was the next launch's)."""
    batch.template("e", f"STRAY = {STRAY!r}\nHOW = {how!r}\n" + LEAVES_A_STRAY_WRITER)
    batch.cli("e", "new", batch.obsid_file([11, 12]))
    output = batch.root / "jobs" / "e" / "output"
    try:
        r = batch.cli("e", "run")
        assert r.returncode == 0, r.stderr + (output.parent / "log" / "12.stderr").read_text()
        assert [row["state"] for row in batch.table("e").rows()] == ["done", "done"]
        stray = int((output / "stray-pid").read_text())
        assert f"HIPE left 1 process(es) running after its end (pids {stray}): killed" in r.stderr, r.stderr
        assert not pid_alive(stray)
    finally:
        (output / "stop").touch()
        if (output / "stray-pid").exists():
            reaper.watch(int((output / "stray-pid").read_text()))


def test_links_a_script_leaves_in_the_workers_folder_are_not_followed(batch, tmp_path):
    """A script that replaces its pool cache folder, its own script and the template's copy (the
    worker's temporary folder) by symbolic links to a user's files: the worker empties the cache
    and rewrites the scripts at the next launch, and must replace the links, never touch what they
    point to."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    (precious / "notes.py").write_text("# notes")
    batch.template("l", f"""import os, shutil
cache = [line.split()[3] for line in open(os.environ['TRIVIAL_HIPE_CALLS']) if line.split()[0] == str(obsid)][-1]
assert os.path.isdir(cache) and not os.path.islink(cache) and os.listdir(cache) == []
shutil.rmtree(cache)
os.symlink({str(precious)!r}, cache)
folder = os.path.dirname(cache)
scripts = [name for name in os.listdir(folder) if name.endswith('.py')]
assert 'template.py' in scripts and len(scripts) >= 2, scripts
for name in scripts:
    os.remove(os.path.join(folder, name))
    os.symlink({str(precious / "notes.py")!r}, os.path.join(folder, name))
""")
    batch.cli("l", "new", batch.obsid_file([21, 22, 23]))
    r = batch.cli("l", "run")
    assert sorted(os.listdir(precious)) == ["notes.py", "thesis.tex"]
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert (precious / "notes.py").read_text() == "# notes"
    assert r.returncode == 0, r.stderr
    assert [row["state"] for row in batch.table("l").rows()] == ["done", "done", "done"]


def test_an_earlier_attempts_logs_are_kept(batch):
    batch.template("r", "print('attempt at %d' % obsid)\n")
    batch.cli("r", "new", batch.obsid_file([6]))
    batch.cli("r", "run")
    batch.template("r", "print('second go')\n")
    batch.cli("r", "reset", "--yes")
    assert batch.cli("r", "run").returncode == 0
    log = batch.root / "jobs" / "r" / "log"
    assert (log / "6.stdout").read_text() == "second go\n" and (log / "6.stdout.1").read_text() == "attempt at 6\n"


def test_summary_of_a_worker_that_got_nothing(batch):
    batch.template("n", OK)
    batch.cli("n", "new", batch.obsid_file([1]))
    batch.cli("n", "run")
    r = batch.cli("n", "run")
    assert r.returncode == 0
    assert "SUMMARY: 0 obsids processed in" in r.stdout and "(no obsid); 0 done, 0 failed" in r.stdout


@pytest.mark.parametrize("template,exit_zero,reason", [
    ("raise ValueError('bad calibration')\n", "0", "HIPE exited with status 1: ValueError: bad calibration"),
    ("raise ValueError('bad calibration')\n", "1",
     "script stopped before its end though HIPE exited 0: ValueError: bad calibration"),
    ("import sys\nsys.exit(0)\nprint('never')\n", "0", "script stopped before its end though HIPE exited 0"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "0", "HIPE exited with status 137"),
])
def test_success_needs_exit_zero_and_the_end_of_the_script(batch, template, exit_zero, reason):
    batch.template("f", template)
    batch.write_cfg(run={"max_attempts": "2", "retry_errors": "yes"})   # script errors are not retried by default
    batch.cli("f", "new", batch.obsid_file([5]))
    r = batch.cli("f", "run", env=batch.env(TRIVIAL_HIPE_EXIT_ZERO=exit_zero))
    assert r.returncode == 1
    [row] = batch.table("f").rows()
    assert (row["state"], row["pipelined"], row["attempts"], row["reason"]) == ("failed", 0, 2, reason)
    assert batch.calls_list() == [5, 5]                                 # retried once, then failed
    assert [h["outcome"] for h in batch.table("f").history(5)] == ["failed", "failed"]
    assert "1 of 1" not in batch.cli("f", "status").stdout


def test_the_last_launchs_end_marker_never_counts_for_the_next(batch):
    """A worker's launches share its temporary folder: obsid 1 runs to its end (its marker written),
    then obsid 2's script stops early with exit 0. That is not a success."""
    batch.template("m", "import sys\nif obsid == 2:\n    sys.exit(0)\n")
    batch.write_cfg(run={"max_attempts": "1"})
    batch.cli("m", "new", batch.obsid_file([1, 2]))
    assert batch.cli("m", "run").returncode == 1
    assert batch.calls_list() == [1, 2]   # in this order, one worker
    rows = {r["obsid"]: (r["state"], r["reason"]) for r in batch.table("m").rows()}
    assert rows == {1: ("done", None), 2: ("failed", "script stopped before its end though HIPE exited 0")}, rows


@pytest.mark.slow
def test_hipe_killed_by_a_signal(batch):
    batch.template("k", OK)
    batch.write_cfg(hipe={"command": "/bin/sh -c 'kill -9 $$' hipe"}, run={"max_attempts": "1"})
    batch.cli("k", "new", batch.obsid_file([5]))
    assert batch.cli("k", "run").returncode == 1
    [row] = batch.table("k").rows()
    assert (row["state"], row["signal_no"], row["reason"]) == ("failed", 9, "HIPE killed by SIGKILL")


GRANDCHILD = """import subprocess, sys, time
child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
open(outDir + 'pids', 'w').write('%d' % child.pid)
time.sleep(600)
"""


@pytest.mark.slow
def test_timeout_kills_hipe_and_its_grandchildren(batch):
    batch.template("t", GRANDCHILD)
    batch.write_cfg(hipe={"timeout": "2"}, run={"max_attempts": "1"})
    batch.cli("t", "new", batch.obsid_file([3]))
    r = batch.cli("t", "run", timeout=120)
    assert r.returncode == 1
    [row] = batch.table("t").rows()
    assert row["state"] == "failed" and row["reason"] == "timeout: HIPE ran over 2 s and was killed"
    grandchild = int((batch.root / "jobs" / "t" / "output" / "pids").read_text())
    wait_for(lambda: not pid_alive(grandchild), 10, "the grandchild to be gone")


SLOW = """import time
open(outDir + '%d.started' % obsid, 'w').close()
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_hipe_and_puts_the_obsid_back(batch, sig):
    batch.template("s", SLOW)
    batch.cli("s", "new", batch.obsid_file([8, 9]))
    worker = batch.popen("s", "run")
    started = batch.root / "jobs" / "s" / "output"
    wait_for(lambda: list(started.glob("*.started")), 60, "HIPE to start")
    hipe_pid = int(batch.calls.read_text().split()[1])
    worker.send_signal(sig)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 128 + sig, err
    assert not pid_alive(hipe_pid)
    rows = batch.table("s").rows()
    assert [(r["state"], r["attempts"]) for r in rows] == [("pending", 0), ("pending", 0)]
    assert [h["outcome"] for h in batch.table("s").history()] == ["stopped"]
    assert f"stopped by {signal.Signals(sig).name}" in err
    assert "SUMMARY: 0 obsids processed" in out and "0 done, 0 failed, 1 back to pending" in out   # put back: not processed



# Ctrl-C while `run` starts up. How far the command has got, read from /proc: 0 the shell and env
# of bin/BatchProcess.py (or a pyenv shim), 1 Python starting up with the stop signals held
# (blocked), 2 batchUtility.startup answering them while the imports run, 3 the worker's (or run -j's)
# own handlers in place (SIGUSR2 is caught: signals.WORKER_STOP_SIGNALS).
CTRL_C_STOP_LINE = re.compile(r"BatchProcess\.py: stopped by SIGINT with no obsid running\Z|\S+ \S+ WARNING \[\S+ slot "
                              r"\d+/\d+ pid \d+(?: obsid=\d+)?\] stopped by SIGINT(?:: HIPE stopped, obsid put back to "
                              r"pending| with no obsid running): worker stopping\Z")


def _signal_mask(pid, field):
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
        return int(line.split()[1], 16)
    except (OSError, StopIteration):
        return 0


def _start_phase(pid):
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return 0
    if not os.path.basename(argv[0]).startswith(b"python") or str(BIN).encode() not in argv:
        return 0
    if _signal_mask(pid, "SigCgt") & (1 << (signal.SIGUSR2 - 1)):
        return 3
    return 1 if _signal_mask(pid, "SigBlk") & (1 << (signal.SIGINT - 1)) else 2


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [[], ["-j", "2"]], ids=["run", "run -j 2"])
def test_ctrl_c_while_run_starts(sqlite_batch, reaper, jobs):
    """`bin/BatchProcess.py j run` started as a shell starts it (by its path), and Ctrl-C'd (SIGINT
    to its process group, as a terminal sends it) as soon as it reaches each phase of its start-up,
    then again and again until it ends: never a KeyboardInterrupt traceback, exit 130 with stop
    lines only, nothing left running, every obsid back to pending. Before Python the shell may die
    of the signal itself, silently (a shell reports that as 130 too)."""
    batch = sqlite_batch
    obsids = new_job(batch, [1342190001, 1342190002], template=SLOW)
    reaper.roots.add(batch.root)
    reached = Counter()
    for phase in (0, 1, 2, 3):
        for attempt in range(3):
            run = reaper.popen(subprocess.Popen([str(BIN), "j", "run", *jobs], stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, text=True, env=batch.env(), cwd=batch.root,
                                                start_new_session=True), group=True)
            wait_for(lambda: run.poll() is not None or _start_phase(run.pid) >= phase, 60,
                     f"phase {phase} of the start-up", interval=0.0005)
            reached[_start_phase(run.pid)] += 1
            for _ in range(20):   # Ctrl-C, then more, some 160 ms of them, until it ends
                if run.poll() is not None:
                    break
                os.killpg(run.pid, signal.SIGINT)
                try:
                    run.wait(timeout=0.008)
                except subprocess.TimeoutExpired:
                    pass
            _out, err = run.communicate(timeout=60)
            what = f"phase {phase}, attempt {attempt}: exit {run.returncode}\n{err}"
            assert "Traceback" not in err and "KeyboardInterrupt" not in err, what
            assert run.returncode == 130 or (run.returncode == -signal.SIGINT and phase == 0 and err == ""), what
            assert all(CTRL_C_STOP_LINE.match(line) for line in err.splitlines()), what
            wait_for(lambda: not reaper.ours(), 30, "every process of the run (workers, guardians, HIPEs) to end")
            assert batch.table("j").counts() == {"pending": len(obsids), "running": 0, "done": 0, "failed": 0}, what
    assert reached[1] and reached[2] and reached[3], f"phases hit: {dict(reached)}"


@pytest.mark.parametrize("jobs", [[], ["-j", "2"]], ids=["run", "run -j 2"])
def test_a_stop_signal_ignored_at_start_stays_ignored(sqlite_batch, reaper, jobs):
    """`nohup BatchProcess.py j run &` in a script: SIGHUP (the terminal closing) and SIGINT (Ctrl-C)
    were ignored when it started, so they never stop it, in any of its processes; SIGTERM still does."""
    batch = sqlite_batch
    obsids = new_job(batch, [1342190001, 1342190002], template=GATED)
    output = batch.root / "jobs" / "j" / "output"

    def start():
        run = reaper.popen(subprocess.Popen(["nohup", str(BIN), "j", "run", *jobs], stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True, env=batch.env(), cwd=batch.root,
                                            start_new_session=True, preexec_fn=ignoring_sigint), group=True)
        running = len(obsids) if jobs else 1
        wait_for(lambda: len(list(output.glob("*.started"))) == running, 60, f"{running} HIPE(s) to run")
        return run

    run = start()
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGHUP, signal.SIGINT):
        os.killpg(run.pid, sig)
    (output / "go").touch()
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0 and "stopped" not in err, err
    assert batch.table("j").counts()["done"] == len(obsids)

    assert batch.cli("j", "reset", "--yes").returncode == 0
    (output / "go").unlink()
    for started in output.glob("*.started"):
        started.unlink()
    run = start()
    os.killpg(run.pid, signal.SIGTERM)
    _out, err = run.communicate(timeout=120)
    assert run.returncode == 143, err
    assert batch.table("j").counts() == {"pending": len(obsids), "running": 0, "done": 0, "failed": 0}


def test_output_is_streamed_to_the_log_while_hipe_runs(batch):
    batch.template("l", "import sys, os, time\nprint('first line')\nsys.stdout.flush()\n"
                        "while not os.path.exists(outDir + 'go'):\n    time.sleep(0.05)\nprint('last line')\n")
    batch.cli("l", "new", batch.obsid_file([4]))
    worker = batch.popen("l", "run")
    log = batch.root / "jobs" / "l" / "log" / "4.stdout"
    wait_for(lambda: log.exists() and log.read_text() == "first line\n", 60, "the first line in the log")
    (batch.root / "jobs" / "l" / "output" / "go").touch()
    worker.communicate(timeout=60)
    assert worker.returncode == 0 and log.read_text() == "first line\nlast line\n"


def test_run_refuses_without_template_or_hipe(batch):
    batch.cli("m", "new", batch.obsid_file([1]))
    (batch.root / "jobs" / "m" / "m.py").unlink()
    r = batch.cli("m", "run")
    assert r.returncode == 2 and "template" in r.stderr and "m.py not found" in r.stderr
    batch.template("m", OK)
    batch.write_cfg(hipe={"command": "no-such-hipe"})
    r = batch.cli("m", "run")
    assert r.returncode == 2
    assert r.stderr.strip() == f"BatchProcess.py: error: HIPE command 'no-such-hipe' not found on PATH " \
                               f"([hipe] command in {batch.cfg_path})"
    assert batch.table("m").counts()["pending"] == 1


@pytest.mark.slow
def test_the_stand_in_runs_the_example_job_in_jython(sqlite_batch):
    batch = sqlite_batch
    batch.write_cfg(hipe={"command": str(STANDIN), "memory": "256m"})
    assert batch.cli("ex", "new", batch.obsid_file([1342191755])).returncode == 0   # copies the example
    r = batch.cli("ex", "run", timeout=300)
    assert r.returncode == 0, r.stderr
    product = (batch.root / "jobs" / "ex" / "output" / "1342191755.txt").read_text()
    assert "obsid=1342191755" in product and "jython=" in product
    out = (batch.root / "jobs" / "ex" / "log" / "1342191755.stdout").read_text()
    assert "Reducing obsid 1342191755 (job ex), pool cache /" in out


@pytest.mark.slow
def test_the_stand_in_reports_script_errors_as_hipe_does(sqlite_batch):
    batch = sqlite_batch
    batch.template("e", "from java.lang import System\nassert System.getProperty('my.prop') == 'yes'\n"
                        "raise RuntimeError('broken %d' % obsid)\n")
    batch.write_cfg(hipe={"command": f"{STANDIN} --exit-zero", "memory": "256m", "properties": "my.prop=yes"},
                    run={"max_attempts": "1"})
    batch.cli("e", "new", batch.obsid_file([77]))
    assert batch.cli("e", "run", timeout=300).returncode == 1
    [row] = batch.table("e").rows()
    assert row["exit_code"] == 0 and row["reason"] == \
        "script stopped before its end though HIPE exited 0: RuntimeError: broken 77"


@pytest.mark.slow
def test_a_jython_job_script_writes_to_mariadb_through_jdbc(mysql_batch):
    """As in the original, scripts can write results to SQL: the stand-in puts the MariaDB JDBC driver on the class path."""
    batch = mysql_batch
    from mariadb_server import PASSWORD, USER
    url = f"jdbc:mariadb://127.0.0.1:{batch.server.port}/{batch.db}"
    batch.template("jdbc", f"""from java.sql import DriverManager
from java.lang import Class
Class.forName("org.mariadb.jdbc.Driver")
conn = DriverManager.getConnection("{url}", "{USER}", "{PASSWORD}")
st = conn.prepareStatement("INSERT INTO results (obsid, note) VALUES (?, ?)")
st.setLong(1, obsid)
st.setString(2, "reduced by " + jobName)
st.executeUpdate()
conn.close()
""")
    with batch.server.admin(batch.db) as c:
        c.cursor().execute("CREATE TABLE results (obsid BIGINT PRIMARY KEY, note VARCHAR(100))")
    batch.write_cfg(hipe={"command": str(STANDIN), "memory": "256m"})
    batch.cli("jdbc", "new", batch.obsid_file([1342191755]))
    r = batch.cli("jdbc", "run", timeout=300)
    assert r.returncode == 0, (batch.root / "jobs" / "jdbc" / "log" / "1342191755.stderr").read_text()
    with batch.server.admin(batch.db) as c:
        cur = c.cursor()
        cur.execute("SELECT obsid, note FROM results")
        assert cur.fetchall() == ((1342191755, "reduced by jdbc"),)


def _children(pid):
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except OSError:
        return []


def _waits_at_the_gate(pid):
    """Asleep in the gate's poll of its pipe (gate.py), or in its read."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()   # do_sys_poll, poll_schedule_timeout, anon_pipe_read
    except OSError:
        return False
    return "poll" in wchan or "pipe" in wchan


@pytest.mark.slow
def test_run_j_workers_start_once_the_last_is_forked(sqlite_batch, reaper):
    """`run -j 64`: no worker starts its work before the parent has forked the last one (else the first
    ones took the CPU from the parent still forking, and the last started long after the first). The
    parent stopped (SIGSTOP) half-way through its forks: the workers it forked wait at the gate
    and nothing is claimed; continued, every obsid is done once."""
    batch = sqlite_batch
    obsids = new_job(batch, range(1342190001, 1342190065), template=OK)
    run = reaper.popen(batch.popen("-q", "j", "run", "-j", "64", start_new_session=True), group=True)

    def stopped_while_forking():
        if not _children(run.pid):
            return None
        os.kill(run.pid, signal.SIGSTOP)
        return _children(run.pid)
    forked = wait_for(lambda: run.poll() is not None or stopped_while_forking(), 60, "the first worker forked",
                      interval=0.002)
    assert forked is not True, run.communicate()[1][-2000:]
    if len(forked) == 64:   # the parent forked them all before the stop could come: nothing to see
        os.kill(run.pid, signal.SIGCONT)
        pytest.skip("the parent forked all 64 workers between two looks")
    wait_for(lambda: all(map(_waits_at_the_gate, forked)), 30, f"the {len(forked)} workers forked to wait at the gate")
    assert batch.table("j").history() == [] and batch.calls_list() == []
    os.kill(run.pid, signal.SIGCONT)
    _out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-2000:]
    assert sorted(batch.calls_list()) == obsids
    assert {r["state"] for r in batch.table("j").rows()} == {"done"}
