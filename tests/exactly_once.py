"""The exactly-once probe of the fault tests, and freezing a MariaDB server.

The probe is a job script: each run of an obsid logs its start and end and holds a lock file while it
runs; a run that finds the lock held by a live process logs an overlap. `assert_exactly_once` reads
what it saw. `frozen(server)` holds mariadbd stopped (SIGSTOP) for a block and thaws it whatever happens.
"""
import contextlib
import os
import signal
import sys

from support import OBSID, TRIVIAL_HIPE, pid_alive, proc_state, wait_for

FAST_HIPE = f"{sys.executable} -S {TRIVIAL_HIPE}"

# Python 3 (the trivial HIPE runs job scripts with CPython). The first run of each obsid holds
# for FIRST seconds (None: until output/go exists), later runs for LATER seconds.
PROBE = r'''
import os, time
FIRST, LATER = @FIRST@, @LATER@
me = os.getpid()
log_path = os.path.join(outDir, "probe.log")
lock = os.path.join(outDir, "lock-%d" % obsid)

def note(event, other=0):
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, ("%d %d %s %.6f %d\n" % (obsid, me, event, time.time(), other)).encode())
    os.close(fd)

def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False

n = 1
while True:
    try:
        os.close(os.open(os.path.join(outDir, "run-%d.%d" % (obsid, n)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        break
    except FileExistsError:
        n += 1
note("start", n)
# The lock appears with the pid already in it (a hard link to a file written first): a run killed
# at any moment never leaves an empty lock that the next run could not judge.
mine = "%s.%d" % (lock, me)
with open(mine, "w") as f:
    f.write(str(me))
try:
    os.link(mine, lock)
except FileExistsError:
    try:
        holder = int(open(lock).read() or 0)
    except (OSError, ValueError):
        holder = 0
    if holder == 0 or alive(holder):
        note("overlap", holder)
    os.replace(mine, lock)
else:
    os.remove(mine)
hold = FIRST if n == 1 else LATER
go, end = os.path.join(outDir, "go"), time.time() + (300 if hold is None else hold)
while time.time() < end and not (hold is None and os.path.exists(go)):
    time.sleep(0.02)
note("end", n)
try:
    if int(open(lock).read() or 0) == me:
        os.remove(lock)
except (OSError, ValueError):
    pass
'''


def probe(first=None, later=0.05):
    return PROBE.replace("@FIRST@", repr(first)).replace("@LATER@", repr(later))


def probe_events(env, job="j"):
    """(obsid, pid, event, time, arg) of every line of the probe's log."""
    path = env.root / "jobs" / job / "output" / "probe.log"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        obsid, pid, event, when, arg = line.split()
        events.append((int(obsid), int(pid), event, float(when), int(arg)))
    return events


def probe_figures(env, job="j"):
    """What the probe saw: runs started, overlaps, and runs with no end that still live."""
    events = probe_events(env, job)
    started = {(o, p) for o, p, e, _, _ in events if e == "start"}
    ended = {(o, p) for o, p, e, _, _ in events if e == "end"}
    return {"runs": len(started), "overlaps": [ev for ev in events if ev[2] == "overlap"],
            "orphans": sorted(p for o, p in started - ended if pid_alive(p))}


def assert_exactly_once(env, obsids, job="j"):
    """Every obsid done, recorded done once, no two runs of one obsid at the same time, no HIPE
    left running; returns the probe's figures."""
    figures = probe_figures(env, job)
    assert not figures["overlaps"], f"an obsid ran twice at once: {figures['overlaps']}"
    assert not figures["orphans"], f"job scripts still running: {figures['orphans']}"
    table = env.table(job)
    try:
        rows = table.rows()
        history = table.history()
    finally:
        table.close()
    assert {r["obsid"]: r["state"] for r in rows} == dict.fromkeys(obsids, "done")
    done = sorted(h["obsid"] for h in history if h["outcome"] == "done")
    assert done == sorted(obsids), "an obsid was recorded done twice, or not at all"
    return figures


def go(env, job="j"):
    (env.root / "jobs" / job / "output" / "go").touch()


def wait_first_run(env, reaper, obsid=OBSID, job="j", timeout=60):
    """The pid of the job script of obsid's first run, once it holds its lock."""
    lock = env.root / "jobs" / job / "output" / f"lock-{obsid}"
    wait_for(lambda: lock.exists() and lock.read_text().strip(), timeout, f"obsid {obsid}'s first run")
    return reaper.watch(int(lock.read_text()))[0]


# ----------------------------------------------------------------------------- a server to freeze
def freeze(server):
    os.kill(server.proc.pid, signal.SIGSTOP)
    wait_for(lambda: proc_state(server.proc.pid) in ("T", "t"), 10, "mariadbd to stop")


def thaw(server):
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)


@contextlib.contextmanager
def frozen(server):
    freeze(server)
    try:
        yield
    finally:
        thaw(server)
