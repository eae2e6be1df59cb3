"""The guardian (lib/batchUtility/guardian.py) with real processes and real signals.

A "worker" here is either this test process holding a Guardian, or a small Python program that
starts one, launches a process group like HIPE's (a leader and a grandchild, both sleeping) and
then renews its fence deadline every 0.1 s until told otherwise; the tests kill or freeze it.
"""
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from batchUtility.guardian import DEADLINE_CLOCK, Guardian, GuardianLost
from support import ROOT, wait_for

LIB = ROOT / "lib"

# argv: fence window (s) renewed every 0.1 s. Prints {"guardian": pid, "pgid": pid} once HIPE's
# stand-in runs; when the group dies, prints {"fenced": bool} and exits.
WORKER = r'''
import json, os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from batchUtility.guardian import Guardian
window = float(sys.argv[2])
g = Guardian()
hipe = subprocess.Popen(["sh", "-c", "sleep 600 & exec sleep 600"], start_new_session=True)
g.fence_at(time.monotonic() + window)
g.launch(hipe.pid)
print(json.dumps({"guardian": g.pid, "pgid": hipe.pid, "worker": os.getpid()}), flush=True)
while True:
    info = os.waitid(os.P_PID, hipe.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is not None:
        break
    g.fence_at(time.monotonic() + window)
    time.sleep(0.1)
fenced = g.was_fenced(hipe.pid)
g.finished(hipe.pid)
hipe.wait()
print(json.dumps({"fenced": fenced}), flush=True)
g.close()
'''


def group_members(pgid):
    """Live (not zombie) processes whose process group is pgid."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


@pytest.fixture
def worker_program():
    """Start the WORKER program in a session of its own; SIGKILL it and its groups at the end."""
    started = []

    def start(window, wrap=()):
        proc = subprocess.Popen([*wrap, sys.executable, "-c", WORKER, str(LIB), str(window)], stdout=subprocess.PIPE,
                                text=True, start_new_session=True)
        started.append(proc)
        info = json.loads(proc.stdout.readline())
        started.append(info)
        wait_for(lambda: len(group_members(info["pgid"])) == 2, 10, "HIPE's stand-in and its grandchild")
        return proc, info

    yield start
    for item in started:
        if isinstance(item, dict):
            kill_group(item["pgid"])
            try:
                os.kill(item["guardian"], signal.SIGKILL)
            except OSError:
                pass
        elif item.poll() is None:
            item.kill()   # SIGKILL ends a stopped process too
            item.wait(10)


@pytest.fixture
def guardian():
    g = Guardian()
    yield g
    g.close()


def hipe_group(*command):
    """A process group like HIPE's: a leader sleeping, with a grandchild sleeping too."""
    return subprocess.Popen(list(command) or ["sh", "-c", "sleep 600 & exec sleep 600"], start_new_session=True)


def finish(g, proc):
    """What the worker does when HIPE exits: tell the guardian before reaping."""
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    g.finished(proc.pid)
    proc.wait()


def test_killed_worker_takes_hipe_group_down(worker_program):
    """SIGKILL to the worker: the pipe ends, the guardian kills HIPE's whole group and exits."""
    proc, info = worker_program(window=60)
    proc.kill()
    proc.wait(10)
    wait_for(lambda: not group_members(info["pgid"]), 10, "HIPE's group to die with its worker")
    wait_for(lambda: state(info["guardian"]) in (None, "Z"), 10, "the guardian to exit")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGSTOP_worker", "SIGSTOP_its_group"])
def test_frozen_worker_is_fenced(worker_program, how):
    """The worker frozen (SIGSTOP to it, or to its whole process group as Ctrl-Z does) stops
    renewing its deadline: the guardian, in a session of its own, is not frozen with it and kills
    HIPE's group when the deadline (1 s) passes. Thawed, the worker learns that HIPE was fenced."""
    proc, info = worker_program(window=1.0)
    frozen = time.monotonic()
    if how == "SIGSTOP_worker":
        os.kill(proc.pid, signal.SIGSTOP)
    else:
        os.killpg(proc.pid, signal.SIGSTOP)   # everything in the worker's group, as Ctrl-Z
    wait_for(lambda: state(proc.pid) == "T", 10, "the worker to stop")
    wait_for(lambda: not group_members(info["pgid"]), 10, "HIPE's group to be fenced")
    took = time.monotonic() - frozen
    assert 0.5 < took < 5, took
    assert state(info["guardian"]) not in ("T", None, "Z"), "the guardian was frozen or died with the worker"
    os.kill(proc.pid, signal.SIGCONT)
    assert json.loads(proc.stdout.readline()) == {"fenced": True}
    assert proc.wait(10) == 0


def test_the_deadline_is_kept_on_the_clock_a_suspend_does_not_stop(worker_program):
    """The guardian's deadlines run on CLOCK_BOOTTIME, which goes on while a VM is suspended (its
    CLOCK_MONOTONIC stops): a deadline that passed during a suspend has passed at the resume. The
    worker reckons on CLOCK_MONOTONIC and converts. In a time namespace whose boot clock is 1000 s
    ahead of its monotonic one (as after a suspend of 1000 s), a frozen worker's HIPE is fenced when
    its 1 s deadline passes, not at once (a deadline sent unconverted would have passed 1000 s ago)
    nor never. (A real suspend cannot be made here: this checks the two clocks are kept apart.)"""
    assert DEADLINE_CLOCK == time.CLOCK_BOOTTIME
    if subprocess.run(["unshare", "--time", "--fork", "--boottime", "1000", "true"], capture_output=True).returncode:
        pytest.skip("no time namespaces here (unshare --time)")
    proc, info = worker_program(window=1.0, wrap=["unshare", "--time", "--fork", "--boottime", "1000"])
    assert len(group_members(info["pgid"])) == 2, "HIPE fenced at once: a deadline sent on the wrong clock"
    frozen = time.monotonic()
    os.kill(info["worker"], signal.SIGSTOP)
    wait_for(lambda: not group_members(info["pgid"]), 10, "HIPE's group to be fenced")
    assert 0.5 < time.monotonic() - frozen < 5
    os.kill(info["worker"], signal.SIGCONT)
    assert json.loads(proc.stdout.readline()) == {"fenced": True}


@pytest.mark.slow
def test_live_worker_renewing_its_deadline_is_left_alone(worker_program):
    """A worker renewing a 0.5 s deadline every 0.1 s keeps its HIPE for far longer than that."""
    proc, info = worker_program(window=0.5)
    end = time.monotonic() + 3
    while time.monotonic() < end:
        assert len(group_members(info["pgid"])) == 2, "HIPE was killed under a live worker"
        time.sleep(0.1)
    kill_group(info["pgid"])   # HIPE ends by itself: the worker is told it was not fenced
    assert json.loads(proc.stdout.readline()) == {"fenced": False}
    assert proc.wait(10) == 0


def test_normal_finish_kills_nothing(guardian):
    """HIPE finished and reported: nothing its group left behind is killed by the guardian, not even
    when the guardian then exits (the worker cleans up its own groups)."""
    proc = hipe_group("sh", "-c", "sleep 600 & exit 0")
    guardian.fence_at(time.monotonic() + 0.3)
    guardian.launch(proc.pid)
    finish(guardian, proc)
    try:
        time.sleep(0.6)   # past the deadline: a finished group is not the guardian's any more
        assert len(group_members(proc.pid)) == 1
        guardian.close()
        assert guardian.proc.returncode == 0
        assert len(group_members(proc.pid)) == 1, "the guardian killed a finished group"
        assert not guardian.was_fenced(proc.pid)
    finally:
        kill_group(proc.pid)


@pytest.mark.slow
def test_one_guardian_serves_many_launches(guardian):
    """300 launches through one guardian process, none killed; then a fenced one, and after a new
    deadline an unfenced one again: the same guardian all along."""
    pid = guardian.pid
    started = time.monotonic()
    for _ in range(300):
        proc = subprocess.Popen(["true"], start_new_session=True)
        guardian.fence_at(time.monotonic() + 30)
        guardian.launch(proc.pid)
        finish(guardian, proc)
        assert proc.returncode == 0
    assert time.monotonic() - started < 30
    hung = hipe_group()
    guardian.fence_at(time.monotonic() + 0.3)
    guardian.launch(hung.pid)
    assert hung.wait(10) == -signal.SIGKILL
    wait_for(lambda: guardian.was_fenced(hung.pid), 5, "the guardian to say it fenced the group")
    guardian.finished(hung.pid)
    proc = subprocess.Popen(["sh", "-c", "sleep 0.5"], start_new_session=True)
    guardian.fence_at(time.monotonic() + 30)
    guardian.launch(proc.pid)
    finish(guardian, proc)
    assert proc.returncode == 0
    assert guardian.pid == pid and guardian.alive()


@pytest.mark.parametrize("with_launch", [False, True], ids=["sent at once", "sent with the launch"])
def test_launch_after_the_deadline_is_killed_at_once(guardian, with_launch):
    """A worker that was frozen between its claim and HIPE's start launches past its deadline: the
    guardian kills HIPE as soon as it hears of it, also when the deadline goes with the launch."""
    guardian.fence_at(time.monotonic() - 0.1, with_launch=with_launch)
    proc = hipe_group()
    guardian.launch(proc.pid)
    assert proc.wait(5) == -signal.SIGKILL
    wait_for(lambda: not group_members(proc.pid), 5, "HIPE's grandchild to be killed too")


def unread(g):
    """Bytes the worker wrote to its guardian that the guardian has not read yet."""
    return int.from_bytes(fcntl.ioctl(g._commands, termios.FIONREAD, b"\0" * 4), "little")


def test_a_deadline_sent_at_once_passes_one_held_for_the_launch(guardian):
    """The heartbeat thread may renew the lease (a later deadline, sent at once) between the claim
    (its deadline held back for the launch) and HIPE's start: the later deadline counts, never the
    earlier one sent after it."""
    guardian.fence_at(time.monotonic() - 0.1, with_launch=True)   # what the claim held back
    guardian.fence_at(time.monotonic() + 60)                      # the renewal
    proc = hipe_group()
    guardian.launch(proc.pid)
    wait_for(lambda: unread(guardian) == 0, 5, "the guardian to read the launch")
    time.sleep(0.2)   # the guardian handles what it read at once: a kill would come now
    assert proc.poll() is None and len(group_members(proc.pid)) == 2
    guardian.fence_at(time.monotonic() - 0.1)
    assert proc.wait(5) == -signal.SIGKILL   # the guardian has the group: it kills at a passed deadline


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_terminal_stops_are_ignored_and_a_signal_ending_the_guardian_takes_hipe_down_first(guardian, sig):
    """SIGTSTP, SIGTTIN and SIGTTOU (a terminal's stops; none can reach the guardian's session) are
    ignored. SIGTERM, SIGINT or SIGHUP to the guardian (someone ending it) kills HIPE's group first,
    says so (`orphaned PGID`), and exits 128+N, so that its worker can tell the obsid is not at fault."""
    proc = hipe_group()
    guardian.fence_at(time.monotonic() + 60)
    guardian.launch(proc.pid)
    for stop in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        os.kill(guardian.pid, stop)
    time.sleep(0.3)
    assert state(guardian.pid) == "S" and proc.poll() is None
    os.kill(guardian.pid, sig)
    assert proc.wait(10) == -signal.SIGKILL
    wait_for(lambda: not group_members(proc.pid), 5, "the grandchild to be killed")
    assert guardian.why_killed(proc.pid, wait=5) == "orphaned"
    assert guardian.ended(wait=5) == f"the guardian (pid {guardian.pid}) was ended by {sig.name}"
    assert guardian.proc.returncode == 128 + sig
    with pytest.raises(GuardianLost):
        guardian.launch(proc.pid)


def test_guardian_that_cannot_start_is_one_clear_error(tmp_path):
    """No usable interpreter: GuardianLost saying why, so that the worker refuses to launch HIPE."""
    with pytest.raises(GuardianLost, match="cannot start the guardian"):
        Guardian(python=str(tmp_path / "no-python"))
    fake = tmp_path / "silent-python"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    with pytest.raises(GuardianLost, match="did not start"):
        Guardian(python=str(fake))


def test_forked_guardian_keeps_none_of_the_workers_descriptors(tmp_path):
    """The guardian is forked from a single-threaded worker: it keeps only its two pipes (and
    /dev/null, and both ends of a pipe of its own, its signals' wakeup pipe), so neither the
    worker's slot lock nor its database files outlive the worker in it."""
    lock = open(tmp_path / "slot.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    g = Guardian()
    try:
        assert Path(f"/proc/{g.pid}/comm").read_text().strip() == "hipe-guardian", "not the forked guardian"
        held = sorted(os.readlink(f"/proc/{g.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{g.pid}/fd"))
        assert [h for h in held if not h.startswith("pipe:") and h != "/dev/null"] == [], held
        pipes = [h for h in held if h.startswith("pipe:")]
        given = {os.readlink(f"/proc/self/fd/{fd}") for fd in (g._commands, g._replies)}
        own = [h for h in pipes if h not in given]
        assert set(pipes) - set(own) == given and len(own) == 2 and own[0] == own[1], held
        lock.close()
        with open(tmp_path / "slot.lock", "w") as again:
            fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)   # free: the guardian holds no copy
    finally:
        g.close()
    assert g.proc.returncode == 0


def test_a_worker_with_a_native_thread_runs_its_guardian_as_a_fresh_interpreter():
    """A thread Python does not know of (Open MPI starts such threads in an MPI rank) makes forking
    unsafe: the guardian is then started as a program of its own, and guards as well."""
    libc = ctypes.CDLL(None, use_errno=True)
    thread = ctypes.c_ulong()
    assert libc.pthread_create(ctypes.byref(thread), None, ctypes.cast(libc.pause, ctypes.c_void_p), None) == 0
    try:
        g = Guardian()
        try:
            assert Path(f"/proc/{g.pid}/comm").read_text().strip() != "hipe-guardian", "forked beside a native thread"
            assert g.alive()
        finally:
            g.close()
        assert g.proc.returncode == 0
    finally:
        libc.pthread_cancel(thread)   # pause() is a cancellation point
        libc.pthread_join(thread, None)
