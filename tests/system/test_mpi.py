"""bin/BatchProcess_mpi.sh with real mpirun (Open MPI), mpi4py ranks and a real MariaDB.

- test_eight_ranks_thousand_obsids: 8 ranks on this machine share 1,000 obsids through the table:
  each obsid done exactly once, HIPE called once per obsid, every rank took work, the per-obsid
  and SUMMARY lines of every rank and the job-wide summary are printed.
- test_several_hosts: three hosts made of network namespaces (own address, own hostname in a UTS
  namespace, own sshd), MariaDB on the bridge, a hostfile naming the hosts by name: every obsid done
  exactly once, by workers on all three hosts.
- test_rank_killed: a rank SIGKILLed mid-run; the others run on, take its obsid back after the
  lease and finish everything; its interrupted attempt is recorded as lost, never as done.
- test_host_process_killed: the one process of a host (which forked its slots) SIGKILLed while its
  workers run HIPE: the orphans say so, and finish and record their obsids once, or (the launcher
  stopped) put them back uncounted; without --enable-recovery mpirun aborts and the launcher exits
  137 while the orphans finish theirs; a rerun finishes the job. test_host_process_killed_on_another_host:
  the same on h2 of three hosts, under Open MPI's daemon.
- test_a_workers_exit_2_is_the_launchers, test_a_workers_exit_3_is_the_launchers,
  test_a_remote_workers_exit_2_is_the_launchers: a worker's 2 (HIPE removed mid-run) and 3 (MariaDB
  stopped past db_patience) are the launcher's, as run -j's, though mpirun exits 0 (rank_status).
- test_host_lost: a whole host lost mid-run (everything on it SIGKILLed, Open MPI's daemon too):
  the other hosts finish the job, and the launcher still ends, reporting the job done.
- test_launcher_stopped: SIGTERM to the launcher, Ctrl-C (SIGINT to its process group), or SIGTERM
  while mpirun is still starting its ranks: every worker stops, every running obsid goes back to
  pending uncounted, nothing is left running; the output is the launcher's lines and one line per
  worker, no traceback and no Open MPI noise ("PMIX ERROR: BAD-PARAM", "Forwarding signal").
  test_launcher_stopped_while_the_database_is_frozen: the same with mariadbd frozen (SIGSTOP):
  everything ends within seconds; the next run takes the obsids back after their lease.
  test_ctrl_c_while_python_starts: Ctrl-C as the launcher's Python starts up: one line, no
  KeyboardInterrupt traceback. test_launcher_stopped_mpirun_hung: a stop while mpirun hangs (as
  Open MPI's can when a rank dies in MPI_Init): the launcher still ends.
- test_launcher_errors, test_sqlite_with_other_host, test_loopback_mysql_with_other_host: one clear
  line, and nothing started, for a missing, unreadable or empty hostfile, one without slots, and
  for a database other hosts cannot share (SQLite, or MySQL through this machine's loopback).
- test_hostfile_places, test_without_mpi: where the hostfile is found, what the launcher adds to
  mpirun; a worker started without mpirun is slot 1 of 1.
"""
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exactly_once import assert_exactly_once, frozen, go, probe, probe_events
from mariadb_server import MariaDB
from support import GATED, ROOT, TRIVIAL_HIPE, BatchEnv, Reaper, ignoring_sigint, new_job, pid_alive, wait_for

MPI_SH = ROOT / "bin" / "BatchProcess_mpi.sh"
SLOT_LINE = re.compile(r"^\.\.\.\.\.  \[Slot (\d+)/(\d+) on (\S+)\] \[#(\d+), obsid=(\d+)\]$", re.M)
SUMMARY_LINE = re.compile(r"^(\S+) SLOT (\d+) SUMMARY: (\d+) obsids? processed", re.M)
# A worker's one line when a stop signal ends it: with the obsid it put back, or with none running.
STOP_LINE = re.compile(r"\S+ \S+ WARNING \[\S+ slot (?P<slot>\d+)/\d+ pid \d+(?: obsid=(?P<obsid>\d+))?\] "
                       r"stopped by (?P<signal>SIG\w+)(?:: HIPE stopped, obsid put back to pending| with no obsid running)"
                       r": worker stopping")
FIRST = 1342190000

# A HIPE stand-in without Python start-up, for the 1,000-obsid run on two cores: it records each
# call as tests/bin/trivial-hipe does (one O_APPEND line, read by BatchEnv.calls_list) and marks the
# script as having run to its end, without running it.
FAST_HIPE = r"""#!/bin/sh
for script; do :; done
obsid=$(sed -n 's/^obsid=\([0-9]*\)$/\1/p' "$script")
printf '%s %s\n' "$obsid" "$$" >> "$TRIVIAL_HIPE_CALLS"
marker=$(sed -n 's/^open("\(.*\)", "w")\.close()$/\1/p' "$script" | tail -n 1)
[ -n "$marker" ] && printf end > "$marker"   # the script's last word: run to its end
"""


def _is_mpirun_of_job(pid) -> bool:
    """Whether pid is the launcher's mpirun starting the workers (not its `mpirun --version`)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.path.basename(words[0]) == b"mpirun" and any(w.endswith(b"BatchProcess.py") for w in words)


class LauncherReaper(Reaper):
    """Starts launchers and, at the end of the test whatever happened, kills whatever they left:
    every process carrying one of the test's HIPE_BATCH_ROOTs in its environment (launcher,
    mpirun, ranks here and in the namespaces, HIPE, its watchdog)."""

    def launch(self, batch, job, *args, env=None, name="launcher", nohup=False):
        """nohup: started as `nohup BatchProcess_mpi.sh JOB &` in a script (SIGHUP and SIGINT ignored)."""
        out = open(batch.root / f"{name}.out", "w")
        err = open(batch.root / f"{name}.err", "w")
        self.roots.add(batch.root)
        proc = subprocess.Popen(["nohup"] * nohup + [str(MPI_SH), job, *map(str, args)], stdout=out, stderr=err,
                                text=True, env=env or launcher_env(batch), cwd=batch.root, start_new_session=True,
                                preexec_fn=ignoring_sigint if nohup else None)
        out.close()
        err.close()
        proc.out_path, proc.err_path = batch.root / f"{name}.out", batch.root / f"{name}.err"
        return self.popen(proc, group=True)


@pytest.fixture
def reaper():
    r = LauncherReaper()
    try:
        yield r
    finally:
        r.cleanup()


def launcher_env(batch, **extra):
    # The interpreter running the tests (the CI's .venv) is the one every rank must use.
    return batch.env(HIPE_BATCH_PYTHON=sys.executable, **extra)


def finish(proc, timeout):
    """Wait for a launcher; returns (exit status, stdout, stderr)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"launcher still running after {timeout} s; stdout:\n"
                             f"{proc.out_path.read_text()[-3000:]}\nstderr:\n{proc.err_path.read_text()[-3000:]}")
    return proc.returncode, proc.out_path.read_text(), proc.err_path.read_text()


def make_job(batch, job, n, template, hostfile=None, **cfg):
    batch.write_cfg(**cfg)
    obsids = new_job(batch, range(FIRST, FIRST + n), job, template)
    if hostfile is not None:
        (batch.root / "hostfile").write_text(hostfile)
    return obsids


def done_once(batch, job, obsids):
    """Every obsid is done, and the history holds exactly one successful attempt of each."""
    table = batch.table(job)
    rows = table.rows()
    assert [r["obsid"] for r in rows] == obsids
    assert {r["state"] for r in rows} == {"done"}, table.counts()
    done = sorted(h["obsid"] for h in table.history() if h["outcome"] == "done")
    assert done == obsids
    return rows


# --------------------------------------------------------------------------- one machine
@pytest.mark.slow
@pytest.mark.mpi
def test_eight_ranks_thousand_obsids(mysql_batch, reaper, tmp_path):
    batch = mysql_batch
    fast = tmp_path / "fast-hipe"
    fast.write_text(FAST_HIPE)
    fast.chmod(0o755)
    obsids = make_job(batch, "big", 1000, "pass\n", hostfile="localhost slots=8 max_slots=8\n",
                      hipe={"command": str(fast)})

    rc, out, err = finish(reaper.launch(batch, "big"), timeout=300)
    assert rc == 0, err[-3000:]

    rows = done_once(batch, "big", obsids)
    assert sorted(batch.calls_list()) == obsids            # HIPE called once per obsid
    assert {r["worker"] for r in rows} == {f"{k}/8" for k in range(1, 9)}  # every rank took work
    assert all(r["attempts"] == 1 for r in rows)
    lines = SLOT_LINE.findall(out)
    assert sorted(int(o) for *_, o in lines) == obsids
    assert {(int(r), int(s)) for r, s, *_ in lines} == {(k, 8) for k in range(1, 9)}
    assert {h for _, _, h, _, _ in lines} == {socket.gethostname()}
    summaries = SUMMARY_LINE.findall(out)
    assert sorted(int(s) for _, s, _ in summaries) == list(range(1, 9))
    assert sum(int(n) for *_, n in summaries) == 1000
    assert "1000 of 1000 processed. (100.0 %, 0 remaining)" in out
    assert re.search(rf"^  {re.escape(socket.gethostname())}\s+1000\s+0\s", out, re.M), out[-1000:]


def _parent(pid) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _cmdline(pid) -> list:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


@pytest.mark.parametrize("extra", [[], ["-np", "4"]], ids=["per-host", "np-one-rank-per-slot"])
@pytest.mark.slow
@pytest.mark.mpi
def test_one_process_per_host(sqlite_batch, reaper, extra):
    """mpirun starts one BatchProcess.py per host, which forks the host's four slots (one
    interpreter, one check and reclaim pass for the host, not one per slot); numbered 1/4..4/4 as
    Open MPI numbered one rank per slot. With an option placing the ranks itself (-np), mpirun
    starts one rank per slot, each its own process, as before."""
    batch = sqlite_batch
    obsids = make_job(batch, "j", 4, GATED, hostfile="localhost slots=4\n")
    launcher = reaper.launch(batch, "j", *extra)
    table = batch.table("j")
    started = batch.root / "jobs" / "j" / "output"
    wait_for(lambda: launcher.poll() is not None or (
        table.counts()["running"] == 4 and len(list(started.glob("*.started"))) == 4), 120, "four obsids running")
    assert launcher.poll() is None, launcher.err_path.read_text()[-2000:]
    workers = {r["worker"]: r["pid"] for r in table.rows()}
    assert sorted(workers) == [f"{k}/4" for k in range(1, 5)]
    parents = {_parent(pid) for pid in workers.values()}
    assert len(parents) == 1, parents
    words = _cmdline(parents.pop())
    # With -np each worker is a rank, mpirun's child (its daemon's on other hosts). (mpirun's own
    # command line ends as a rank's: BatchProcess.py j run.)
    assert (os.path.basename(words[0]) in ("mpirun", "orted")) == bool(extra), words
    if not extra:   # the four workers forked by one process, mpirun's one rank on this host
        assert words[-3:-1] == ["j", "run"] and words[-4].endswith("BatchProcess.py"), words
        assert _cmdline(_parent(_parent(next(iter(workers.values())))))[0].endswith("mpirun")
    go(batch, "j")
    rc, out, err = finish(launcher, timeout=120)
    assert rc == 0, err[-3000:]
    done_once(batch, "j", obsids)
    lines = SLOT_LINE.findall(out)
    assert sorted((int(r), int(s)) for r, s, *_ in lines) == [(k, 4) for k in range(1, 5)]
    assert sorted(int(s) for _, s, _ in SUMMARY_LINE.findall(out)) == [1, 2, 3, 4]
    assert "job-wide summary" in out and "Traceback" not in err


KILL_TEMPLATE = """import time
time.sleep(0.4)
f = open(outDir + "finished.txt", "a")
f.write("%d\\n" % obsid)
f.close()
"""


@pytest.mark.slow
@pytest.mark.mpi
def test_rank_killed(mysql_batch, reaper):
    batch = mysql_batch
    n = 40
    obsids = make_job(batch, "kill", n, KILL_TEMPLATE, hostfile="localhost slots=4\n",
                      run={"lease": "5", "max_attempts": "3"})
    launcher = reaper.launch(batch, "kill")
    table = batch.table("kill")

    def frozen_victim():
        """Rank 2, stopped (SIGSTOP) while the table says it runs an obsid, after a few were done."""
        rows = table.rows()
        row = next((r for r in rows if r["state"] == "running" and r["worker"] == "2/4"), None)
        if sum(r["state"] == "done" for r in rows) < 4 or row is None:
            return None
        assert row["pid"] in reaper.ours(), "the rank's pid is not one of this test's processes"
        os.kill(row["pid"], signal.SIGSTOP)
        now = next(r for r in table.rows() if r["obsid"] == row["obsid"])
        if now["state"] == "running" and now["token"] == row["token"]:
            return row
        os.kill(row["pid"], signal.SIGCONT)  # it finished that obsid meanwhile: try again
        return None
    row = wait_for(lambda: launcher.poll() is not None or frozen_victim(), 120,
                   "rank 2 running its second obsid or later")
    assert row is not True, "launcher ended early: " + launcher.err_path.read_text()[-2000:]
    os.kill(row["pid"], signal.SIGKILL)
    killed_at = time.time()

    rc, out, err = finish(launcher, timeout=240)
    assert rc == 0, err[-3000:]
    done_once(batch, "kill", obsids)
    history = table.history()
    # The killed rank's obsid: its attempt is recorded as lost (not done), then another rank did it.
    attempts = [h for h in history if h["obsid"] == row["obsid"]]
    assert (attempts[0]["worker"], attempts[0]["outcome"]) == ("2/4", "lost"), attempts
    assert attempts[-1]["outcome"] == "done" and attempts[-1]["worker"] != "2/4", attempts
    # Nothing was recorded for rank 2 after its death; the others ran on and finished the rest.
    assert not [h for h in history if h["worker"] == "2/4" and h["outcome"] == "done" and h["ended"] > killed_at]
    after = {h["worker"] for h in history if h["started"] > killed_at}
    assert after and "2/4" not in after
    # Every obsid ran its script to the end (for the killed one: on its second attempt).
    finished = {int(x) for x in (batch.root / "jobs" / "kill" / "output" / "finished.txt").read_text().split()}
    assert finished >= set(obsids)
    assert sorted(int(s) for _, s, _ in SUMMARY_LINE.findall(out)) == [1, 3, 4]  # the dead rank printed none
    assert f"{n} of {n} processed." in out


ORPHAN_LINE = re.compile(r"WARNING \[\S+ slot (\d+)/3 pid (\d+)\] this host's process \(pid (\d+)\) died: the "
                         r"worker runs on to the job's end")


# mpirun without --enable-recovery, which the launcher always passes (and which a later
# --disable-recovery does not undo in Open MPI 4.1): $HIPE_BATCH_MPIRUN names this wrapper.
NO_RECOVERY_MPIRUN = """#!/bin/sh
for word; do shift; [ "$word" = --enable-recovery ] || set -- "$@" "$word"; done
exec mpirun "$@"
"""


def mpirun_without_recovery(batch):
    wrapper = batch.root / "mpirun-without-recovery"
    wrapper.write_text(NO_RECOVERY_MPIRUN)
    wrapper.chmod(0o755)
    return {"HIPE_BATCH_MPIRUN": str(wrapper)}


@pytest.mark.parametrize("case", ["finish", "stop", "no-recovery"])
@pytest.mark.slow
@pytest.mark.mpi
def test_host_process_killed(batch, reaper, case):
    """The one process of a host (which forked its three slots) SIGKILLed while each of its workers
    runs HIPE. The orphaned workers run on, and each says so on one line. With the launcher's
    --enable-recovery, mpirun waits for them: their HIPEs run to their end and are recorded once by
    them, exit 0 (finish); or a launcher's stop still reaches them through their process group, and
    each stops its HIPE and puts its obsid back uncounted, exit 143 (stop). Without it (an mpirun
    wrapper dropping the option), mpirun aborts at once and says so, and the launcher ends with its
    status (137, never 0) while the orphans finish their HIPEs and record them, then stop (their
    output is gone), putting back uncounted what they claimed meanwhile. Every time: no obsid lost,
    none run twice at once, none done without its product; a rerun finishes the job."""
    n = 8
    obsids = make_job(batch, "j", n, probe(first=None, later=0.3), hostfile="localhost slots=3\n",
                      run={"lease": "5"})
    extra = mpirun_without_recovery(batch) if case == "no-recovery" else {}
    launcher = reaper.launch(batch, "j", env=launcher_env(batch, **extra))
    table = batch.table("j")
    locks = batch.root / "jobs" / "j" / "output"
    wait_for(lambda: launcher.poll() is not None or (
        table.counts()["running"] == 3 and len(list(locks.glob("lock-*"))) == 3), 120, "three HIPEs running")
    assert launcher.poll() is None, launcher.err_path.read_text()[-2000:]
    running = {r["obsid"]: r["pid"] for r in table.rows() if r["state"] == "running"}
    hipes = [int(p.read_text()) for p in locks.glob("lock-*")]
    host = {_parent(pid) for pid in running.values()}
    assert len(host) == 1, host
    host = host.pop()
    assert _cmdline(host)[-3:-1] == ["j", "run"], _cmdline(host)
    os.kill(host, signal.SIGKILL)

    if case == "no-recovery":   # mpirun gone at once: the orphans' lines may go down with its output
        rc, out, err = finish(launcher, timeout=120)
        assert rc == 137 and "BatchProcess_mpi.sh: mpirun ended with status 137" in err, err[-3000:]
        assert "exited on signal 9 (Killed)" in err and "running 3" in out, out[-1500:]
        assert all(pid_alive(p) for p in hipes)   # untouched by mpirun's abort
    else:   # each orphan says so, at once, on the launcher's stderr; its HIPE was not touched
        wait_for(lambda: len(ORPHAN_LINE.findall(launcher.err_path.read_text())) == 3, 30, "three orphans' lines")
        said = ORPHAN_LINE.findall(launcher.err_path.read_text())
        assert {int(pid) for _, pid, _ in said} == set(running.values()) and {int(h) for *_, h in said} == {host}
        assert all(pid_alive(p) for p in [*running.values(), *hipes])
    if case == "stop":
        os.kill(launcher.pid, signal.SIGTERM)
        rc, out, err = finish(launcher, timeout=120)
        assert rc == 143, err[-3000:]
        assert {int(m["obsid"]) for m in STOP_LINE.finditer(err)} == set(running), err[-3000:]
        rows = {r["obsid"]: r for r in table.rows()}
        assert all(rows[o]["state"] == "pending" and rows[o]["attempts"] == 0 for o in running), rows
        assert not (set(running) & {h["obsid"] for h in table.history() if h["outcome"] == "done"})
    go(batch, "j")
    if case == "finish":
        rc, out, err = finish(launcher, timeout=180)
        assert rc == 0, err[-3000:]
        assert f"{n} of {n} processed." in out
    if case != "stop":   # the orphans' obsids recorded once each, by them, no attempt charged
        wait_for(lambda: not any(pid_alive(p) for p in running.values()), 120, "the orphans to end")
        history = table.history()
        for obsid, pid in running.items():
            assert [(h["outcome"], h["pid"]) for h in history if h["obsid"] == obsid] == [("done", pid)], history
        assert not [h for h in history if h["outcome"] in ("lost", "failed")], history
    rerun = batch.cli("j", "run", "-j", "2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    figures = assert_exactly_once(batch, obsids)   # every obsid done once, no overlap, no HIPE left
    assert {r["attempts"] for r in table.rows()} == {1}
    # None done without its product: each obsid's run recorded done ran its script to the end.
    ends = {o for o, _, event, _, _ in probe_events(batch) if event == "end"}
    assert ends >= set(obsids)
    assert figures["runs"] == n + (3 if case == "stop" else 0)
    assert "Traceback" not in err


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C", "SIGTERM while starting"])
@pytest.mark.slow
@pytest.mark.mpi
def test_launcher_stopped(mysql_batch, reaper, how):
    batch = mysql_batch
    n = 12
    make_job(batch, "stop", n, "import time\ntime.sleep(600)\n", hostfile="localhost slots=4\n")
    launcher = reaper.launch(batch, "stop")
    table = batch.table("stop")
    if how == "SIGTERM while starting":  # as soon as mpirun runs, before its ranks took anything
        wait_for(lambda: launcher.poll() is not None or any(map(_is_mpirun_of_job, reaper.ours())),
                 120, "mpirun to start")
    else:
        wait_for(lambda: launcher.poll() is not None
                 or (table.counts()["running"] == 4 and len(batch.calls_list()) == 4), 120,
                 "four workers each running HIPE")
    assert launcher.poll() is None, launcher.err_path.read_text()[-2000:]
    running = [r["obsid"] for r in table.rows() if r["state"] == "running"]
    if how == "Ctrl-C":  # what a terminal does: SIGINT to the foreground process group
        os.killpg(launcher.pid, signal.SIGINT)
    else:
        launcher.send_signal(signal.SIGTERM)

    rc, out, err = finish(launcher, timeout=120)
    name = "SIGINT" if how == "Ctrl-C" else "SIGTERM"
    assert rc == (130 if how == "Ctrl-C" else 143), err[-3000:]
    rows = table.rows()
    assert table.counts() == {"pending": n, "running": 0, "done": 0, "failed": 0}
    assert [r["attempts"] for r in rows] == [0] * n     # a stop costs no attempt
    history = table.history()
    assert {h["outcome"] for h in history} <= {"stopped"}, history
    # No traceback, no Open MPI noise ("PMIX ERROR: BAD-PARAM", "Forwarding signal"): the launcher's
    # own lines and one line per stopped worker, nothing else.
    for noise in ("Traceback", "PMIX", "Forwarding signal"):
        assert noise not in out + err, err
    lines = err.splitlines()
    if how == "SIGTERM while starting":   # a hung mpirun ended (see supervise.HangWatch) is said in one line
        lines = [line for line in lines if not line.startswith("BatchProcess_mpi.sh: mpirun has had no worker")]
    launcher_lines = [f"BatchProcess_mpi.sh: hostfile {batch.root / 'hostfile'}: 1 host(s), 4 slot(s): localhost 4",
                      f"BatchProcess_mpi.sh: {name}: every worker puts its running obsid back to pending and stops"]
    stops = [STOP_LINE.fullmatch(line) for line in lines if line not in launcher_lines]
    assert all(stops), err
    assert [line for line in lines if line in launcher_lines] == launcher_lines, err
    before, summary = out.split("BatchProcess_mpi.sh: job-wide summary of job stop:\n")
    assert summary.startswith(f"0 of {n} processed.")
    if how == "SIGTERM while starting":   # a worker killed before its handler was in place says nothing
        assert len({m["slot"] for m in stops}) == len(stops) <= 4, err
        assert all(m["obsid"] is None or int(m["obsid"]) in [h["obsid"] for h in history] for m in stops), err
    else:   # exactly one line per worker, naming the obsid it put back
        assert sorted((m["slot"], m["signal"], m["obsid"] is not None) for m in stops) == \
            [(str(k), "SIGUSR2", True) for k in range(1, 5)], err
        assert sorted(int(m["obsid"]) for m in stops) == sorted(running) == sorted(h["obsid"] for h in history)
        assert sorted(int(s) for _, s, _ in SUMMARY_LINE.findall(before)) == [1, 2, 3, 4]
        assert len(SLOT_LINE.findall(before)) == 4 and len(before.splitlines()) == 8, before
    wait_for(lambda: not reaper.ours(), 30, "every worker and HIPE to be gone")


@pytest.mark.slow
@pytest.mark.mpi
def test_ctrl_c_while_python_starts(sqlite_batch, reaper):
    """Ctrl-C the moment bin/BatchProcess_mpi.sh has become Python (the signal held from before
    Python starts, not from the launcher's first line): one line, exit 130, no KeyboardInterrupt
    traceback, nothing started. Ten times, as the window is some 40 ms."""
    batch = sqlite_batch
    make_job(batch, "j", 2, "pass\n", hostfile="localhost slots=2\n")
    python = sys.executable.encode() + b"\0"

    def is_python(pid):
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(python)
        except OSError:
            return True   # gone already: its output tells
    for i in range(10):
        launcher = reaper.launch(batch, "j", name=f"launcher{i}")
        wait_for(lambda: is_python(launcher.pid), 60, "the launcher to become Python", interval=0.0005)
        os.killpg(launcher.pid, signal.SIGINT)
        rc, out, err = finish(launcher, timeout=60)
        assert (rc, out, err) == (130, "", "BatchProcess_mpi.sh: SIGINT: stopped before any worker was started\n"), i
    assert batch.table("j").counts()["pending"] == 2 and batch.calls_list() == []


@pytest.mark.slow
@pytest.mark.mpi
def test_launcher_started_with_nohup_ignores_hangup_and_ctrl_c(sqlite_batch, reaper):
    """`nohup BatchProcess_mpi.sh j &`: SIGHUP and SIGINT to its process group (a terminal closing,
    a Ctrl-C) stop neither the launcher nor mpirun nor a worker: the job finishes."""
    batch = sqlite_batch
    obsids = make_job(batch, "j", 2, GATED, hostfile="localhost slots=2\n")
    output = batch.root / "jobs" / "j" / "output"
    launcher = reaper.launch(batch, "j", nohup=True)
    wait_for(lambda: launcher.poll() is not None or len(list(output.glob("*.started"))) == 2, 120, "2 HIPEs to run")
    for sig in (signal.SIGHUP, signal.SIGINT):
        os.killpg(launcher.pid, sig)
    go(batch)
    rc, _out, err = finish(launcher, timeout=120)
    assert rc == 0 and "stop" not in err.lower(), err[-3000:]
    done_once(batch, "j", obsids)


# What Open MPI 4.1's mpirun can become when a rank dies while connecting to it (see
# supervise.HangWatch): no rank left, deaf to every signal but SIGKILL, never ending.
HUNG_MPIRUN = """#!{python}
import os, signal, sys, time
if sys.argv[1:] == ["--version"]:
    print("mpirun (Open MPI) 4.1.4")
    sys.exit(0)
for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
open(os.path.join(os.environ["HIPE_BATCH_ROOT"], "mpirun.hung"), "w").close()
time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.mpi
def test_launcher_stopped_mpirun_hung(sqlite_batch, reaper, tmp_path):
    """A stop while mpirun hangs with no worker left: the launcher kills it and ends (it used to
    wait for good), reporting the stop."""
    batch = sqlite_batch
    n = 3
    make_job(batch, "hung", n, "pass\n", hostfile="localhost slots=2\n")
    fake = tmp_path / "mpirun"
    fake.write_text(HUNG_MPIRUN.format(python=sys.executable))
    fake.chmod(0o755)
    launcher = reaper.launch(batch, "hung", env=launcher_env(batch, HIPE_BATCH_MPIRUN=str(fake)))
    wait_for(lambda: launcher.poll() is not None or (batch.root / "mpirun.hung").exists(), 120,
             "the hung mpirun to start")
    assert launcher.poll() is None, launcher.err_path.read_text()[-2000:]
    launcher.send_signal(signal.SIGTERM)

    rc, out, err = finish(launcher, timeout=60)
    assert rc == 143, err[-3000:]
    assert "mpirun has had no worker left for 10 s yet does not end" in err
    assert batch.table("hung").counts() == {"pending": n, "running": 0, "done": 0, "failed": 0}
    assert f"0 of {n} processed." in out
    wait_for(lambda: not reaper.ours(), 30, "the hung mpirun to be gone")


@pytest.mark.slow
@pytest.mark.mpi
def test_launcher_stopped_while_the_database_is_frozen(freeze_env, reaper):
    """SIGTERM to the launcher while mariadbd is frozen (SIGSTOP), db_patience 600 s, lease 6 s:
    the launcher, mpirun, every worker and every HIPE are gone within seconds, not at the thaw nor
    after db_patience. The obsids that were running could not be put back (the database was away):
    after the thaw a new run takes them back after their lease and finishes the job, each obsid
    run once but for the stopped runs, never two at once."""
    batch = freeze_env
    obsids = make_job(batch, "j", 6, probe(first=None), hostfile="localhost slots=2\n",
                      run={"lease": "6", "db_patience": "600"})
    launcher = reaper.launch(batch, "j")
    out_dir = batch.root / "jobs" / "j" / "output"

    def two_running():
        locks = [p for p in out_dir.glob("lock-*") if p.name.count(".") == 0 and p.read_text().strip()]
        return len(locks) == 2 and [int(p.read_text()) for p in locks]
    scripts = wait_for(lambda: launcher.poll() is not None or two_running(), 120, "both workers running HIPE")
    assert launcher.poll() is None, launcher.err_path.read_text()[-2000:]
    reaper.watch(*scripts)
    table = batch.table("j")
    running = sorted(r["obsid"] for r in table.rows() if r["state"] == "running")
    table.close()
    with frozen(batch.server):
        stopped = time.monotonic()
        launcher.send_signal(signal.SIGTERM)
        wait_for(lambda: not any(map(pid_alive, scripts)), 10, "HIPE to be stopped while the database is frozen")
        rc, _out, err = finish(launcher, timeout=120)
        took = time.monotonic() - stopped
        wait_for(lambda: not reaper.ours(), 30, "every worker and HIPE to be gone")
    assert rc == 143, err[-3000:]
    assert took < 40, f"the launcher took {took:.0f} s to end with the database frozen"
    assert "Traceback" not in err, err[-3000:]
    go(batch)
    r = batch.cli("j", "run", timeout=120)
    assert r.returncode == 0, r.stderr
    figures = assert_exactly_once(batch, obsids)
    assert figures["runs"] == len(obsids) + len(running)
    for obsid in running:
        outcomes = [h["outcome"] for h in batch.table("j").history(obsid)]
        assert outcomes[-1] == "done" and set(outcomes[:-1]) <= {"lost", "stopped", "fenced"}, outcomes


# --------------------------------------------------------------------------- a worker's 2 and 3 passed on
MODES = pytest.mark.parametrize("extra", [[], ["-np", "1"]], ids=["per-host", "np-one-rank-per-slot"])
STATUS_TOKEN = "hipe-batch-status-"   # rank_status's lines, the launcher's alone


def _one_worker_error(text, what):
    """The one line of a worker's stop in the launcher's stderr, which holds no status line."""
    lines = [line for line in text.splitlines() if what in line]
    assert len(lines) == 1, text[-3000:]
    assert STATUS_TOKEN not in text and "Traceback" not in text, text[-3000:]
    return lines[0]


def _hipe_removed_mid_run(batch, reaper, tmp_path, *extra):
    """A launcher over 3 obsids, one slot, whose HIPE (a wrapper) is removed while the first runs;
    (its wrapper's path, its exit status, stdout, stderr)."""
    wrapper = tmp_path / "hipe"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -S {TRIVIAL_HIPE} \"$@\"\n")
    wrapper.chmod(0o755)
    seen = "open(outDir + 'token', 'w').write(os.environ.get('HIPE_BATCH_STATUS_TOKEN', 'none'))\n"
    make_job(batch, "j", 3, GATED + seen, hostfile="localhost slots=1\n", hipe={"command": str(wrapper)})
    launcher = reaper.launch(batch, "j", *extra)
    started = batch.root / "jobs" / "j" / "output"
    wait_for(lambda: launcher.poll() is not None or list(started.glob("*.started")), 120, "HIPE to start")
    assert launcher.poll() is None, launcher.err_path.read_text()[-2000:]
    wrapper.unlink()
    go(batch, "j")
    result = finish(launcher, timeout=120)
    assert (started / "token").read_text() == "none"   # the rank took it: HIPE never sees it
    return (wrapper, *result)


@pytest.mark.parametrize("extra", [[], ["-np", "1"], ["--tag-output", "--timestamp-output"]],
                         ids=["per-host", "np-one-rank-per-slot", "tag-and-timestamp-output"])
@pytest.mark.slow
@pytest.mark.mpi
def test_a_workers_exit_2_is_the_launchers(sqlite_batch, reaper, tmp_path, extra):
    """HIPE removed while the job runs (as test_reliability's run alone): the worker puts the next
    obsid back uncounted and stops with 2; mpirun (--enable-recovery) exits 0 whatever its ranks did,
    yet the launcher exits 2 as `run -j` does, with the worker's one line and the job-wide summary,
    forked by its host's process or a rank of its own (-np), and behind mpirun's own prefixes
    (--tag-output, --timestamp-output). Before: 1, the job being unfinished."""
    batch = sqlite_batch
    wrapper, rc, out, err = _hipe_removed_mid_run(batch, reaper, tmp_path, *extra)
    assert rc == 2, (rc, out[-2000:], err[-3000:])
    line = _one_worker_error(err, "error:")
    assert "BatchProcess.py: error: " in line and f"cannot start HIPE ({wrapper})" in line, line
    assert line.startswith("BatchProcess.py: error: ") or extra[0] == "--tag-output", line
    assert "put back to pending and worker stopped" in line
    assert "job-wide summary" in out and "1 of 3 processed." in out, out[-2000:]
    rows = batch.table("j").rows()
    assert sorted((r["state"], r["attempts"]) for r in rows) == [("done", 1), ("pending", 0), ("pending", 0)]


@pytest.mark.slow
@pytest.mark.mpi
def test_where_the_ranks_stderr_goes_to_files_no_status_line_is_written(sqlite_batch, reaper, tmp_path):
    """mpirun's --output-filename DIR sends the ranks' stderr to DIR/1/rank.N/stderr, not through the
    launcher: the launcher gives no token, so the worker's file holds its error line and nothing
    more, and the launcher exits 1 (the job unfinished), the limit many-hosts.md states."""
    batch = sqlite_batch
    files = tmp_path / "ranks"
    _, rc, out, err = _hipe_removed_mid_run(batch, reaper, tmp_path, "--output-filename", files)
    assert rc == 1, (rc, out[-2000:], err[-3000:])
    [stderr] = files.glob("*/rank.*/stderr")
    _one_worker_error(stderr.read_text(), "cannot start HIPE")
    assert STATUS_TOKEN not in err + out and "job-wide summary" in out


def _mpirun_of(launcher) -> int:
    """The pid of the launcher's mpirun."""
    def find():
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and _is_mpirun_of_job(d.name):
                try:
                    if _parent(d.name) == launcher.pid:
                        return int(d.name)
                except OSError:
                    continue
        return None
    return wait_for(find, 30, "the launcher's mpirun")


def _state(pid) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat[stat.rindex(")") + 2]


@MODES
@pytest.mark.slow
@pytest.mark.mpi
def test_a_workers_exit_3_is_the_launchers(freeze_env, reaper, extra):
    """The MariaDB server stopped while HIPE runs, db_patience 3 s: the worker cannot record the
    outcome, says `stopping. Nothing is lost ...` once and leaves with 3, which mpirun does not pass
    on. The launcher, held (SIGSTOP) meanwhile so that the server is back for its own job-wide
    summary (the workers' database trouble need not be the launcher's: another network, another
    moment), exits 3 as `run -j` does, in both modes. Before: 1, the job being unfinished. The next
    run takes the obsid back after its lease and finishes the job."""
    batch = freeze_env
    obsids = make_job(batch, "j", 2, GATED, hostfile="localhost slots=1\n", run={"lease": "4", "db_patience": "3"})
    launcher = reaper.launch(batch, "j", *extra)
    started = batch.root / "jobs" / "j" / "output"
    wait_for(lambda: launcher.poll() is not None or list(started.glob("*.started")), 120, "HIPE to start")
    assert launcher.poll() is None, launcher.err_path.read_text()[-2000:]
    mpirun = _mpirun_of(launcher)
    launcher.send_signal(signal.SIGSTOP)
    try:
        batch.server.stop()
        go(batch, "j")
        wait_for(lambda: _state(mpirun) in ("Z", "gone"), 120, "the worker to give up and mpirun to end")
    finally:
        if batch.server.proc is None:
            batch.server.start()
        launcher.send_signal(signal.SIGCONT)
    rc, out, err = finish(launcher, timeout=120)
    assert rc == 3, (rc, out[-2000:], err[-3000:])
    line = _one_worker_error(err, "Nothing is lost")
    assert " ERROR " in line and "stopping. Nothing is lost: an obsid left running is taken back after its lease." in line
    assert "error:" not in err, err[-3000:]
    assert "job-wide summary" in out and "0 of 2 processed." in out, out[-2000:]
    r = batch.cli("j", "run", timeout=120)
    assert r.returncode == 0, r.stderr
    rows = batch.table("j").rows()
    assert [(r["obsid"], r["state"]) for r in rows] == [(o, "done") for o in obsids]


# --------------------------------------------------------------------------- bad input
def _one_error_line(r):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("BatchProcess_mpi.sh: error: "), r.stderr
    assert r.stdout == ""
    return lines[0]


def run_launcher(batch, *args, reaper=None, timeout=120):
    if reaper is not None:
        reaper.roots.add(batch.root)  # should it start anything after all, it is killed at the end
    return subprocess.run([str(MPI_SH), *map(str, args)], capture_output=True, text=True,
                          env=launcher_env(batch), cwd=batch.root, timeout=timeout)


@pytest.mark.parametrize("case", ["missing", "not-found", "unreadable", "empty", "no-slots", "bad-word"])
@pytest.mark.mpi
def test_launcher_errors(sqlite_batch, reaper, case):
    batch = sqlite_batch
    make_job(batch, "j", 3, "pass\n")
    hostfile = batch.root / "hostfile"
    args = []
    expected = {"missing": "no hostfile: looked for", "not-found": "not found (from --hostfile)",
                "unreadable": "cannot be read", "empty": "names no host", "no-slots": "names no slots",
                "bad-word": "'slots=two'"}[case]
    if case == "not-found":
        args = ["--hostfile", batch.root / "nowhere"]
    elif case == "unreadable":
        hostfile.mkdir()
    elif case == "empty":
        hostfile.write_text("# only a comment\n\n")
    elif case == "no-slots":
        hostfile.write_text("localhost slots=0  # none\n")
    elif case == "bad-word":
        hostfile.write_text("localhost slots=two\n")
    line = _one_error_line(run_launcher(batch, "j", *args, reaper=reaper))
    assert expected in line
    assert batch.table("j").counts()["pending"] == 3 and batch.calls_list() == []


@pytest.mark.mpi
def test_sqlite_with_other_host(sqlite_batch, reaper):
    # 203.0.113.9 (TEST-NET-3) is only looked at, never contacted.
    make_job(sqlite_batch, "j", 3, "pass\n", hostfile="localhost slots=1\n203.0.113.9 slots=2\n")
    line = _one_error_line(run_launcher(sqlite_batch, "j", reaper=reaper))
    assert "203.0.113.9" in line and "SQLite" in line and "cannot be shared between machines" in line


@pytest.mark.mpi
def test_loopback_mysql_with_other_host(mysql_batch, reaper):
    # A MySQL server reached through this machine's loopback is no better for other hosts.
    make_job(mysql_batch, "j", 3, "pass\n", hostfile="localhost slots=1\n203.0.113.9 slots=2\n")
    line = _one_error_line(run_launcher(mysql_batch, "j", reaper=reaper))
    assert "203.0.113.9" in line and "host = 127.0.0.1" in line


@pytest.mark.mpi
@pytest.mark.slow
def test_hostfile_places(sqlite_batch, tmp_path):
    """--hostfile FILE, else $HIPE_BATCH_ROOT/hostfile, else $HIPE_BATCH_ROOT/bin/hostfile; root adds
    --allow-run-as-root; extra options reach mpirun; the same interpreter runs every rank."""
    batch = sqlite_batch
    make_job(batch, "j", 1, "pass\n")
    (batch.root / "bin").mkdir()
    (batch.root / "bin" / "hostfile").write_text("localhost slots=1\n")

    def hostfile_of(*args):
        r = run_launcher(batch, "j", "--dry-run", *args)
        assert r.returncode == 0, r.stderr
        words = shlex.split(r.stdout)
        assert words[words.index("run") - 3:] == [sys.executable, str(ROOT / "bin" / "BatchProcess.py"), "j", "run"]
        assert ("--allow-run-as-root" in words) == (os.geteuid() == 0)
        return words[words.index("--hostfile") + 1], words
    assert hostfile_of()[0] == str(batch.root / "bin" / "hostfile")
    (batch.root / "hostfile").write_text("localhost slots=2\n")
    assert hostfile_of()[0] == str(batch.root / "hostfile")
    other = tmp_path / "other-hostfile"
    other.write_text("localhost\n")
    path, words = hostfile_of("--hostfile", other, "-x", "FOO", "--mca", "btl", "self,tcp")
    assert path == str(other)
    assert "--enable-recovery" in words and words[words.index("FOO") - 1] == "-x"
    assert words[words.index("btl") - 1] == "--mca" and words[words.index("btl") + 1] == "self,tcp"



@pytest.mark.mpi
@pytest.mark.slow
def test_verbose_and_quiet_reach_the_workers(sqlite_batch, reaper):
    """-v is BatchProcess.py's, not mpirun's: every worker logs at debug level too (each claim, each
    SQL statement's time). -q: no worker prints an obsid or SUMMARY line, the launcher no summary,
    and nobody logs at debug level."""
    batch = sqlite_batch
    obsids = make_job(batch, "j", 4, "pass\n", hostfile="localhost slots=2\n")
    rc, out, err = finish(reaper.launch(batch, "j", "-v", name="verbose"), timeout=120)
    assert rc == 0, err[-3000:]
    claims = re.findall(r"^\S+ \S+ DEBUG \[\S+ slot (\d)/2 pid \d+\] claimed obsid (\d+) \(attempt 1\)$", err, re.M)
    assert sorted(int(o) for _, o in claims) == obsids, err[-3000:]
    assert re.search(r"^\S+ \S+ DEBUG sql UPDATE ", err, re.M), err[-3000:]   # a claim's: a worker's statement
    assert len(SUMMARY_LINE.findall(out)) == 2 and "job-wide summary" in out

    assert batch.cli("j", "reset", "--yes").returncode == 0
    rc, out, err = finish(reaper.launch(batch, "j", "-q", name="quiet"), timeout=120)
    assert (rc, out) == (0, ""), err[-3000:]
    assert " DEBUG " not in err and "hostfile" not in err, err[-3000:]
    done_once_more = [h["obsid"] for h in batch.table("j").history() if h["outcome"] == "done"]
    assert sorted(done_once_more) == sorted(obsids * 2)

def test_without_mpi(sqlite_batch):
    batch = sqlite_batch
    make_job(batch, "j", 2, "pass\n")
    r = batch.cli("j", "run")
    assert r.returncode == 0, r.stderr
    assert [(s[0], s[1], s[2]) for s in SLOT_LINE.findall(r.stdout)] == [("1", "1", socket.gethostname())] * 2
    assert SUMMARY_LINE.findall(r.stdout) == [(socket.gethostname(), "1", "2")]


# --------------------------------------------------------------------------- several hosts
HOSTS = ("h1", "h2", "h3")


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


class Hosts:
    """Three hosts on one bridge: each a network namespace with its own address, hostname (a UTS
    namespace around its sshd, so that everything ssh starts there sees it) and sshd."""

    def __init__(self, base: Path):
        self.base = base
        tag = f"{os.getpid() % 100000}"
        self.prefix = f"hbt{tag}"
        self.bridge = f"{self.prefix}br"
        self.netns = {h: f"{self.prefix}{h}" for h in HOSTS}
        self.sshd = {}
        self.server = None
        self.made_links, self.made_netns = [], []

    def setup(self):
        probe = f"{self.prefix}probe"
        if shutil.which("ip") is None:
            pytest.skip("cannot create network namespaces here: no `ip` command (iproute2)")
        r = _ip("netns", "add", probe, check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot create network namespaces here (ip netns add: {r.stderr.strip()})")
        _ip("netns", "del", probe, check=False)
        # A /24 of 10.231.0.0/16 that no interface here uses (another run of this test may be on).
        used = _ip("-o", "-4", "addr").stdout
        first = os.getpid() % 250
        net = next((f"10.231.{k}" for k in ((first + i) % 250 for i in range(250)) if f" 10.231.{k}." not in used),
                   None)
        assert net, "every 10.231.K.0/24 is in use on this machine"
        self.net = net
        self.address = f"{net}.1"
        self.addresses = {h: f"{net}.1{i}" for i, h in enumerate(HOSTS, 1)}

        _ip("link", "add", self.bridge, "type", "bridge")
        self.made_links.append(self.bridge)
        _ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        mine = [line for line in _ip("-o", "-4", "addr").stdout.splitlines() if f" {net}." in line]
        assert len(mine) == 1, f"{net}.0/24 was taken by someone else at the same time: {mine}"
        for i, h in enumerate(HOSTS, 1):
            ns, outer, inner = self.netns[h], f"{self.prefix}v{i}", f"{self.prefix}p{i}"
            _ip("netns", "add", ns)
            self.made_netns.append(ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            self.made_links.append(outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[h]}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

        keys = self.base / "keys"
        keys.mkdir()
        for name in ("host_key", "id"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hipe-batch-test", "-f",
                            str(keys / name)], check=True, timeout=60)
        shutil.copyfile(keys / "id.pub", keys / "authorized_keys")
        self.ssh_config = self.base / "ssh_config"
        self.ssh_config.write_text(
            "".join(f"Host {h}\n  HostName {a}\n" for h, a in self.addresses.items())
            + f"Host *\n  User root\n  IdentityFile {keys / 'id'}\n  IdentitiesOnly yes\n"
              "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n"
              "  LogLevel ERROR\n  ConnectTimeout 20\n")
        for h in HOSTS:
            config = self.base / f"sshd_config.{h}"
            config.write_text(
                f"ListenAddress {self.addresses[h]}\nPort 22\nHostKey {keys / 'host_key'}\n"
                f"PidFile {self.base / f'sshd.{h}.pid'}\nPermitRootLogin yes\n"
                f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPubkeyAuthentication yes\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                "MaxStartups 100\nLogLevel ERROR\n")
            # sshd needs an empty /run/sshd: it gets a private /run (a tmpfs in a mount namespace of
            # its own) rather than a change to this machine's /run.
            script = (f"mount -t tmpfs hipe-batch-test /run && mkdir /run/sshd && hostname {h} && "
                      f"exec /usr/sbin/sshd -D -e -f {config}")
            log = open(self.base / f"sshd.{h}.log", "wb")
            self.sshd[h] = subprocess.Popen(["ip", "netns", "exec", self.netns[h], "unshare", "--uts", "--mount",
                                             "sh", "-c", script], stdout=log, stderr=log, start_new_session=True)
            log.close()
        for h in HOSTS:
            wait_for(lambda: self._answers(h), 60, f"sshd on {h}", interval=0.2)

        self.server = MariaDB(self.base / "mariadb", bind=self.address).start()
        return self

    def _answers(self, h):
        if self.sshd[h].poll() is not None:
            raise AssertionError(f"sshd on {h} exited: {(self.base / f'sshd.{h}.log').read_text()}")
        r = subprocess.run(["ssh", "-F", str(self.ssh_config), h, "hostname"], capture_output=True, text=True,
                           timeout=60)
        return r.returncode == 0 and r.stdout.strip() == h

    def signal_all(self, h, sig):
        for pid in _ip("netns", "pids", self.netns[h], check=False).stdout.split():
            try:
                os.kill(int(pid), sig)
            except ProcessLookupError:
                pass

    def lose(self, h):
        """The host is gone: SIGKILL everything in its namespace (sshd, mpirun's daemon, ranks, HIPE)."""
        self._empty_netns(self.netns[h])
        self.sshd[h].wait(timeout=30)

    def mpirun_options(self):
        subnet = f"{self.net}.0/24"
        return ["--mca", "plm_rsh_agent", f"ssh -F {self.ssh_config}", "--mca", "plm_rsh_no_tree_spawn", "1",
                "--mca", "routed", "direct", "--mca", "oob_tcp_if_include", subnet,
                "--mca", "btl_tcp_if_include", subnet, "--mca", "btl", "self,vader,tcp"]

    def cleanup(self):
        """Undo everything setup did, each step even if an earlier one failed."""
        errors = []

        def step(what, *args):
            try:
                what(*args)
            except Exception as e:
                errors.append(f"{what.__name__}{args}: {e}")
        for _h, proc in self.sshd.items():
            step(self._stop_sshd, proc)
        for ns in self.made_netns:  # whatever still runs in a namespace was started by this test
            step(self._empty_netns, ns)
        if self.server is not None:
            step(self.server.cleanup)
        for ns in self.made_netns:
            step(_ip, "netns", "del", ns)
        for link in reversed(self.made_links):
            step(self._del_link, link)

        def leftovers():
            return ([line for line in _ip("-o", "link").stdout.splitlines() if self.prefix in line]
                    + [ns for ns in _ip("netns", "list").stdout.split() if ns.startswith(self.prefix)])
        step(wait_for, lambda: not leftovers(), 30, "the test's links and namespaces to be gone")
        assert not errors, errors

    @staticmethod
    def _del_link(link):
        r = _ip("link", "del", link, check=False)
        # A veth goes away with its peer's namespace, possibly while we look.
        if r.returncode != 0 and "Cannot find device" not in r.stderr:
            raise AssertionError(f"ip link del {link}: {r.stderr.strip()}")

    @staticmethod
    def _stop_sshd(proc):
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    @staticmethod
    def _empty_netns(ns):
        def pids():
            return [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
        for pid in pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not pids(), 30, f"the processes in {ns} to end")


@pytest.fixture
def hosts(tmp_path):
    net = Hosts(tmp_path / "hosts")
    net.base.mkdir()
    try:
        yield net.setup()
    finally:
        net.cleanup()


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.netns
def test_several_hosts(hosts, reaper, tmp_path):
    db = hosts.server.create_database("multihost")
    batch = BatchEnv(tmp_path / "root", "mysql", hosts.server, db)
    n = 60
    obsids = make_job(batch, "multi", n, "import time\ntime.sleep(0.2)\nprint(obsid)\n",
                      hostfile="# three hosts, by name\nh1 slots=2\nh2 slots=2\nh3 slots=2\n")

    launcher = reaper.launch(batch, "multi", *hosts.mpirun_options(), "-x", "TRIVIAL_HIPE_CALLS")
    rc, out, err = finish(launcher, timeout=300)
    assert rc == 0, err[-3000:]

    rows = done_once(batch, "multi", obsids)
    assert sorted(batch.calls_list()) == obsids
    assert {r["host"] for r in rows} == set(HOSTS)  # the table records three distinct hosts
    assert {r["worker"] for r in rows} <= {f"{k}/6" for k in range(1, 7)}
    lines = SLOT_LINE.findall(out)
    assert sorted(int(o) for *_, o in lines) == obsids
    assert {h for _, _, h, _, _ in lines} == set(HOSTS)
    # Numbered as Open MPI numbers one rank per slot: the hostfile's hosts in order, host by host.
    assert {(h, int(r)) for r, _, h, _, _ in lines} <= {(h, k) for i, h in enumerate(HOSTS) for k in (2 * i + 1, 2 * i + 2)}
    assert {h for h, _, _ in SUMMARY_LINE.findall(out)} == set(HOSTS)
    for h in HOSTS:
        assert re.search(rf"^  {h}\s+\d+\s+0\s", out, re.M), out[-1500:]


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.netns
def test_host_lost(hosts, reaper, tmp_path):
    """A host lost mid-run (everything on it SIGKILLed, its mpirun daemon too): the other hosts
    run on, take back its obsids after the lease and finish the job; the launcher ends (Open MPI's
    mpirun would wait for the lost host's ranks for good) and reports the job done."""
    db = hosts.server.create_database("hostlost")
    batch = BatchEnv(tmp_path / "root", "mysql", hosts.server, db)
    n = 60
    obsids = make_job(batch, "lost", n, "import time\ntime.sleep(0.5)\n", run={"lease": "5"},
                      hostfile="h1 slots=2\nh2 slots=2\nh3 slots=2\n")
    launcher = reaper.launch(batch, "lost", *hosts.mpirun_options(), "-x", "TRIVIAL_HIPE_CALLS",
                             env=launcher_env(batch, HIPE_BATCH_MPI_GRACE="5"))
    table = batch.table("lost")
    wait_for(lambda: launcher.poll() is not None or (
        table.counts()["done"] >= 6 and any(r["state"] == "running" and r["host"] == "h3" for r in table.rows())),
        120, "h3 running an obsid after a few were done")
    assert launcher.poll() is None, launcher.err_path.read_text()[-2000:]

    def h3_frozen_running():
        """Everything on h3 stopped (SIGSTOP) while it runs an obsid: the obsids it was running."""
        hosts.signal_all("h3", signal.SIGSTOP)
        running = [r["obsid"] for r in table.rows() if r["state"] == "running" and r["host"] == "h3"]
        if not running:
            hosts.signal_all("h3", signal.SIGCONT)
        return running
    on_h3 = wait_for(h3_frozen_running, 60, "h3 running an obsid")
    hosts.lose("h3")
    lost_at = time.time()

    rc, out, err = finish(launcher, timeout=240)
    assert rc == 0, err[-3000:]
    done_once(batch, "lost", obsids)
    history = table.history()
    assert on_h3
    for obsid in on_h3:  # recorded as lost on h3, then done elsewhere
        attempts = [(h["host"], h["outcome"]) for h in history if h["obsid"] == obsid]
        assert ("h3", "lost") in attempts and attempts[-1][1] == "done" and attempts[-1][0] != "h3", attempts
    assert not [h for h in history if h["host"] == "h3" and h["started"] > lost_at]
    assert {h["host"] for h in history if h["started"] > lost_at} == {"h1", "h2"}
    assert f"{n} of {n} processed." in out


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.netns
def test_host_process_killed_on_another_host(hosts, reaper, tmp_path):
    """h2's one process (started there by Open MPI's daemon through ssh, which forked h2's two
    slots) SIGKILLed while both its workers run HIPE: they run on under the daemon, say so on the
    launcher's stderr, finish and record their obsids once; the other hosts are untouched; exit 0."""
    db = hosts.server.create_database("hostprocess")
    batch = BatchEnv(tmp_path / "root", "mysql", hosts.server, db)
    n = 12
    obsids = make_job(batch, "j", n, probe(first=None, later=0.3), run={"lease": "5"},
                      hostfile="h1 slots=2\nh2 slots=2\nh3 slots=2\n")
    launcher = reaper.launch(batch, "j", *hosts.mpirun_options(), "-x", "TRIVIAL_HIPE_CALLS")
    table = batch.table("j")
    locks = batch.root / "jobs" / "j" / "output"
    wait_for(lambda: launcher.poll() is not None or (
        table.counts()["running"] == 6 and len(list(locks.glob("lock-*"))) == 6), 180, "six HIPEs running")
    assert launcher.poll() is None, launcher.err_path.read_text()[-2000:]
    on_h2 = {r["obsid"]: r["pid"] for r in table.rows() if r["state"] == "running" and r["host"] == "h2"}
    assert len(on_h2) == 2, table.rows()
    host = {_parent(pid) for pid in on_h2.values()}
    assert len(host) == 1, host
    host = host.pop()
    assert _cmdline(host)[-3:-1] == ["j", "run"], _cmdline(host)
    os.kill(host, signal.SIGKILL)

    orphan_line = re.compile(ORPHAN_LINE.pattern.replace("/3", "/6"))
    wait_for(lambda: len(orphan_line.findall(launcher.err_path.read_text())) == 2, 30, "two orphans' lines")
    assert {int(pid) for _, pid, _ in orphan_line.findall(launcher.err_path.read_text())} == set(on_h2.values())
    go(batch, "j")
    rc, out, err = finish(launcher, timeout=240)
    assert rc == 0, err[-3000:]
    assert f"{n} of {n} processed." in out
    assert_exactly_once(batch, obsids)
    history = table.history()
    for obsid, pid in on_h2.items():
        assert [(h["outcome"], h["host"], h["pid"]) for h in history if h["obsid"] == obsid] == [("done", "h2", pid)]
    assert {r["attempts"] for r in table.rows()} == {1}
    assert sorted(batch.calls_list()) == obsids   # HIPE launched once per obsid


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.netns
def test_a_remote_workers_exit_2_is_the_launchers(hosts, reaper, tmp_path):
    """Workers on two other hosts only (reached by ssh, their output passed on by Open MPI's daemon
    there), HIPE removed while both run an obsid: each puts its next obsid back and stops with 2;
    the token reached them (mpirun's -x), their status lines came back through the daemons, and
    the launcher exits 2, showing the workers' two lines and no status line. Before: 1."""
    db = hosts.server.create_database("remote2")
    batch = BatchEnv(tmp_path / "root", "mysql", hosts.server, db)
    wrapper = tmp_path / "hipe"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -S {TRIVIAL_HIPE} \"$@\"\n")
    wrapper.chmod(0o755)
    make_job(batch, "j", 4, GATED, hostfile="h1 slots=1\nh2 slots=1\n", hipe={"command": str(wrapper)})
    launcher = reaper.launch(batch, "j", *hosts.mpirun_options(), "-x", "TRIVIAL_HIPE_CALLS")
    started = batch.root / "jobs" / "j" / "output"
    wait_for(lambda: launcher.poll() is not None or len(list(started.glob("*.started"))) == 2, 180,
             "HIPE to start on both hosts")
    assert launcher.poll() is None, launcher.err_path.read_text()[-2000:]
    wrapper.unlink()
    go(batch, "j")
    rc, out, err = finish(launcher, timeout=180)
    assert rc == 2, (rc, out[-2000:], err[-3000:])
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 2 and all(f"cannot start HIPE ({wrapper})" in line for line in lines), err[-3000:]
    assert {re.search(r"\[(h\d) slot", line).group(1) for line in lines} == {"h1", "h2"}, lines
    assert STATUS_TOKEN not in err + out and "Traceback" not in err
    rows = batch.table("j").rows()
    assert sorted((r["state"], r["attempts"]) for r in rows) == [("done", 1)] * 2 + [("pending", 0)] * 2
