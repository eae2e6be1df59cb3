"""The guardian hit while it watches a real worker's HIPE (issue 18, item 7): a signal to it, SIGKILL,
SIGSTOP, and SIGSTOP followed by a frozen worker. The guardian cannot be turned into a fault of
the obsid: the obsid goes back to pending uncounted, HIPE and its children are gone, the worker
stops with one line naming the guardian's pid and what hit it; and a guardian that stops answering
is noticed by its worker within seconds, which fences HIPE itself, so that no obsid runs twice at
once even when the worker is frozen afterwards (the probe of exactly_once.py logs any overlap).
The guardian alone is tested in test_guardian.py.
"""
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from batchUtility import guardian as guardian_py
from exactly_once import assert_exactly_once, go, probe, probe_figures, wait_first_run
from support import OBSID, Worker, new_job, pid_alive, proc_stat, proc_state, wait_for

# A grandchild of HIPE (a child of the job script), in HIPE's process group, that must die with it.
GRANDCHILD = "import subprocess\nsubprocess.Popen(['sleep', '600'])\n"
NOTICED = 10   # seconds within which a worker must have noticed its stopped guardian (it takes about 4)


def guardian_of(worker_pid):
    """The pid of the worker's guardian: its child called hipe-guardian (forked), or running guardian.py."""
    for entry in os.listdir("/proc"):
        fields = proc_stat(entry) if entry.isdigit() else None
        if not fields or int(fields[1]) != worker_pid:
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if comm == "hipe-guardian" or b"guardian.py" in cmdline:
            return int(entry)
    raise AssertionError(f"worker {worker_pid} has no guardian")


def group_members(pgid):
    """Live (not zombie) processes of process group pgid."""
    members = []
    for entry in os.listdir("/proc"):
        fields = proc_stat(entry) if entry.isdigit() else None
        if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


# ----------------------------------------------------------------------------- the worker's look at its guardian
@pytest.fixture(params=["forked", "fresh interpreter"])
def guardian(request):
    g = guardian_py.Guardian(python=sys.executable if request.param == "fresh interpreter" else None)
    yield g
    g.close()


@pytest.fixture
def hipe(reaper):
    """A process group like HIPE's (a leader and a grandchild, sleeping), killed whatever happens."""
    proc = reaper.popen(subprocess.Popen(["sh", "-c", "sleep 600 & exec sleep 600"], start_new_session=True),
                        group=True)
    wait_for(lambda: len(group_members(proc.pid)) == 2, 10, "HIPE's stand-in and its grandchild")
    return proc


@pytest.mark.slow
def test_a_guardian_that_answers_is_never_taken_for_lost(guardian, hipe):
    """Looked at every 0.2 s (as HIPE's wait does) for longer than the ping's patience, a running
    guardian answers each ping: check() says nothing, and several pings were answered."""
    guardian.fence_at(time.monotonic() + 60)
    guardian.launch(hipe.pid)
    end = time.monotonic() + guardian_py.PING_PATIENCE + 2 * guardian_py.PING_EVERY
    while time.monotonic() < end:
        assert guardian.check() == ""
        time.sleep(0.2)
    assert guardian._pings >= 2
    assert hipe.poll() is None


@pytest.mark.slow
def test_a_stopped_guardian_is_found_lost_at_the_next_look(guardian, hipe):
    """SIGSTOP to the guardian: check(), looked at every 0.2 s, says at its next look (the kernel
    reports a child's stop at once; before: a ping's PING_EVERY + PING_PATIENCE later) that it was
    stopped by SIGSTOP, naming its pid; close() then kills it at once rather than wait for a stopped
    process to exit."""
    guardian.fence_at(time.monotonic() + 60)
    guardian.launch(hipe.pid)
    assert guardian.check() == ""
    os.kill(guardian.pid, signal.SIGSTOP)
    wait_for(lambda: proc_state(guardian.pid) in ("T", "t"), 10, "the guardian to stop")
    stopped = time.monotonic()
    lost = wait_for(guardian.check, NOTICED, "check() to find the guardian lost", interval=0.2)
    assert time.monotonic() - stopped < guardian_py.PING_EVERY, "not seen at the next look"
    assert lost == f"the guardian (pid {guardian.pid}) was stopped by SIGSTOP", lost
    assert guardian.check() == lost and hipe.poll() is None   # the worker kills HIPE, not check()
    closing = time.monotonic()
    guardian.close()
    assert time.monotonic() - closing < 2 and guardian.proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_guardian_ended_is_found_lost_at_the_next_look(guardian, hipe, sig):
    """SIGTERM (the guardian kills HIPE first) or SIGKILL (HIPE left running): the next look names
    the guardian's pid and the signal."""
    guardian.fence_at(time.monotonic() + 60)
    guardian.launch(hipe.pid)
    os.kill(guardian.pid, sig)
    lost = wait_for(guardian.check, 5, "check() to find the guardian gone", interval=0.2)
    assert lost == f"the guardian (pid {guardian.pid}) was {'ended' if sig == signal.SIGTERM else 'killed'} by {sig.name}"
    if sig == signal.SIGTERM:
        assert hipe.wait(5) == -signal.SIGKILL
    else:
        assert hipe.poll() is None


# ----------------------------------------------------------------------------- a real worker's guardian hit
def hipe_running(env, reaper, **run):
    """A worker (batch.cfg's [run] updated with `run`) whose HIPE runs the probe, with a grandchild,
    until go(env): (worker, its guardian's pid, HIPE's process group)."""
    env.write_cfg(run=run)
    env.template("j", GRANDCHILD + probe(first=None))
    new_job(env)
    w = Worker(env, reaper, "w")
    script = wait_first_run(env, reaper)
    pgid = int(proc_stat(script)[2])
    wait_for(lambda: len(group_members(pgid)) == 3, 10, "HIPE, its script and the grandchild")
    guardian = guardian_of(w.pid)
    reaper.watch(guardian, *group_members(pgid))
    return w, guardian, pgid


def error_line(w):
    err = w.err()
    assert "Traceback" not in err, err
    [line] = [x for x in err.splitlines() if x.startswith("BatchProcess.py: error: ")]
    return line


def assert_back_uncounted(env):
    table = env.table("j")
    try:
        [row] = table.rows()
        history = table.history(OBSID)
    finally:
        table.close()
    assert (row["state"], row["attempts"]) == ("pending", 0), row
    assert [h["outcome"] for h in history] == ["setup"]


def finish_with_a_new_run(env):
    go(env)
    r = env.cli("j", "run", timeout=120)
    assert r.returncode == 0, r.stderr
    return assert_exactly_once(env, [OBSID])


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signal_to_the_guardian_puts_the_obsid_back_uncounted(batch, reaper, sig):
    """SIGTERM (an operator's kill; caught: the guardian kills HIPE first and exits 128+15) or SIGKILL
    (the OOM killer's choice; the worker sees its guardian gone at its next look) to the guardian
    while HIPE runs, max_attempts = 1: HIPE and its children are gone, the obsid is back to pending
    with attempts 0 (history `setup`), not failed; the worker exits 2 as for any set-up fault, with
    one line naming the guardian's pid and the signal. (Before: SIGTERM failed the obsid with `HIPE
    killed by SIGKILL`; SIGKILL's line said only that the guardian died.)"""
    env = batch
    w, guardian, pgid = hipe_running(env, reaper, max_attempts="1")
    os.kill(guardian, sig)
    wait_for(lambda: not group_members(pgid), 10, "HIPE, its script and the grandchild to be gone")
    assert w.wait(60) == 2, w.err()
    how = "ended" if sig == signal.SIGTERM else "killed"
    assert (f"the guardian (pid {guardian}) was {how} by {sig.name}; HIPE stopped; "
            f"obsid {OBSID} put back to pending and worker stopped") in error_line(w), w.err()
    assert_back_uncounted(env)
    assert finish_with_a_new_run(env)["runs"] == 2


@pytest.mark.slow
def test_a_stopped_guardian_is_noticed_and_hipe_fenced_by_the_worker(batch, reaper):
    """SIGSTOP to the guardian while HIPE runs: it cannot fence HIPE any more. The worker notices
    at its next look (the kernel reports its child's stop), kills HIPE's group itself, puts the obsid back
    uncounted and stops with one line naming the guardian's pid and SIGSTOP; the stopped guardian
    does not outlive it. (Before: nothing noticed; HIPE ran on unwatched.)"""
    env = batch
    w, guardian, pgid = hipe_running(env, reaper)
    os.kill(guardian, signal.SIGSTOP)
    wait_for(lambda: proc_state(guardian) in ("T", "t"), 10, "the guardian to stop")
    wait_for(lambda: not group_members(pgid), NOTICED, "the worker to notice its stopped guardian and stop HIPE")
    assert w.wait(60) == 2, w.err()
    line = error_line(w)
    assert f"the guardian (pid {guardian}) was stopped by SIGSTOP; HIPE stopped" in line, line
    assert f"; HIPE stopped; obsid {OBSID} put back to pending and worker stopped" in line, line
    assert not pid_alive(guardian), "the stopped guardian outlived its worker"
    assert_back_uncounted(env)
    finish_with_a_new_run(env)


def freeze_the_worker_then_a_second_one(env, reaper, w, guardian, fenced):
    """SIGSTOP to worker w (unless it has put its obsid back and stopped already), whose guardian is
    stopped, and a second worker started: the obsid never runs beside the first run. SIGCONT both: w
    exits 2 naming the stop, and a new run finishes the job, every obsid once. fenced: whether HIPE's
    group was gone before w froze."""
    if w.proc.poll() is None:
        os.kill(w.pid, signal.SIGSTOP)
        wait_for(lambda: proc_state(w.pid) in ("T", "t") or w.proc.poll() is not None, 10, "the worker to stop")
    second = Worker(env, reaper, "second")
    status = second.wait(120)
    # On SQLite the first worker may have frozen inside its put-back's transaction, holding the file's
    # one write lock: the second then gives up after db_patience (exit 3), and the new run finishes.
    assert status == 0 or (status == 3 and env.backend == "sqlite"), second.err()
    assert not probe_figures(env)["overlaps"], "the obsid ran beside the first run, which nobody fenced"
    assert fenced, "the worker did not fence HIPE when its guardian stopped"
    for pid in (w.pid, guardian):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert w.wait(60) == 2, w.err()
    assert f"the guardian (pid {guardian}) was stopped by SIGSTOP" in error_line(w)
    finish_with_a_new_run(env)


@pytest.mark.slow
def test_a_worker_frozen_a_second_after_its_guardian_stopped_has_fenced_hipe(batch, reaper):
    """SIGSTOP to the guardian, then 1 s later (before a ping would have gone unanswered for its 3 s)
    SIGSTOP to the worker: the kernel tells the worker of its child's stop at once, so it has fenced
    HIPE at its next look, before it froze; a second worker then runs the obsid with nothing beside
    it. (Before: HIPE ran on, nobody left to stop it, beside the second worker's run.)"""
    env = batch
    w, guardian, pgid = hipe_running(env, reaper, lease="3")
    os.kill(guardian, signal.SIGSTOP)
    wait_for(lambda: proc_state(guardian) in ("T", "t"), 10, "the guardian to stop")
    time.sleep(1.0)   # the fault's timing: the worker freezes within the old window of about 4 s
    freeze_the_worker_then_a_second_one(env, reaper, w, guardian, fenced=not group_members(pgid))


@pytest.mark.slow
def test_a_stopped_guardian_then_a_frozen_worker_never_overlap(batch, reaper):
    """SIGSTOP to the guardian, then (once the worker could have noticed) SIGSTOP to the worker, lease
    3 s, and a second worker started: the obsid goes to the second worker (put back, or taken back
    after the frozen worker's lease) and never runs beside the first run, which the first worker
    fenced itself before it froze. SIGCONT both, a new run: every obsid done exactly once. (Before:
    the first HIPE ran on with nobody to fence it, and the second worker ran the obsid beside it.)"""
    env = batch
    w, guardian, pgid = hipe_running(env, reaper, lease="3")
    os.kill(guardian, signal.SIGSTOP)
    wait_for(lambda: proc_state(guardian) in ("T", "t"), 10, "the guardian to stop")
    fenced = True
    try:
        wait_for(lambda: not group_members(pgid), NOTICED, "the worker to fence HIPE itself")
    except AssertionError:
        fenced = False   # the old code: freeze the worker all the same, to see what the lease protects
    freeze_the_worker_then_a_second_one(env, reaper, w, guardian, fenced)
