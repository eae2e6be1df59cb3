"""Helpers shared by the tests: waiting for a condition, looking at processes, killing what a test
started, and making a job. No fixtures here (they are in conftest.py), and no import of conftest,
so that the standalone scripts (fault_soak.py, bench_new.py) and mariadb_server.py can use it too.
"""
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

OBSID = 1342191755   # a real Herschel obsid, the one most tests use


# ----------------------------------------------------------------------------- waiting
def wait_for(condition, timeout, what, interval=0.05):
    """Poll condition() until it is true; fail naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------------------- processes
def proc_stat(pid):
    """The fields of /proc/PID/stat after the command name, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_state(pid):
    """The state letter of a process (R, S, T, Z...), or None once it is gone."""
    fields = proc_stat(pid)
    return fields[0] if fields else None


def pid_alive(pid):
    """Running or stopped; a zombie (dead, not yet reaped: PID 1 here reaps no orphans) is dead."""
    return proc_state(pid) not in (None, "Z", "X")


def start_time(pid):
    """When the process started (clock ticks since boot): a reused pid has another one."""
    fields = proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def environ(pid):
    """The environment of a process as a list of b"KEY=value", or [] once it is gone."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def environ_has(pid, markers) -> bool:
    """Whether one of the b"KEY=value" markers is in the process's environment."""
    return any(m in environ(pid) for m in markers)


def _kill(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Reaper:
    """Everything a test starts; `cleanup` SIGKILLs what is left, failed test or not.

    Three ways to be registered: `popen` (a Popen, killed and waited for; with group=True its whole
    process group), `watch` (bare pids, checked against reuse by their start time before the
    kill), `roots` (every process carrying HIPE_BATCH_ROOT=one of them in its environment: what a
    launcher's mpirun, ranks and HIPEs leave, here and in network namespaces)."""

    def __init__(self):
        self.popens, self.groups, self.pids, self.roots = [], set(), {}, set()

    def popen(self, proc, group=False):
        self.popens.append(proc)
        if group:
            self.groups.add(proc.pid)
        return proc

    def watch(self, *pids):
        for pid in pids:
            self.pids.setdefault(pid, start_time(pid))
        return pids

    def ours(self):
        """The pids of live processes whose environment names one of the roots (not this one)."""
        markers = {f"HIPE_BATCH_ROOT={r}".encode() for root in self.roots for r in (root, Path(root).resolve())}
        if not markers:
            return []
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()
                and environ_has(p, markers)]

    def cleanup(self):
        for proc in self.popens:
            if proc.poll() is None:
                if proc.pid in self.groups:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.kill()
        for pid, started in self.pids.items():
            if pid_alive(pid) and start_time(pid) == started:
                _kill(pid)
        self._sweep_roots()
        for proc in self.popens:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass

    def _sweep_roots(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = self.ours()
            if not left:
                return
            for pid in left:
                _kill(pid)
            time.sleep(0.1)


# ----------------------------------------------------------------------------- jobs
# A job script whose HIPE says it started (outDir/OBSID.started), then runs until the test creates outDir/go.
GATED = """import os, time
open(outDir + '%d.started' % obsid, 'w').close()
while not os.path.exists(outDir + 'go'):
    time.sleep(0.05)
"""


def ignoring_sigint():
    """preexec_fn: what a shell does to a script's background job (`cmd &`): SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def new_job(env, obsids=(OBSID,), job="j", template=None):
    """`BatchProcess.py JOB new FILE` for obsids (a BatchEnv, through the command line, exit 0
    asserted), after writing the job's template if one is given. Returns the obsids as a list."""
    if template is not None:
        env.template(job, template)
    r = env.cli(job, "new", env.obsid_file(obsids))
    assert r.returncode == 0, r.stderr
    return list(obsids)


def tables(env):
    """Names of the tables in the env's database (none while a SQLite file does not exist)."""
    if env.backend == "sqlite":
        path = env.root / "batch.sqlite"
        if not path.exists():
            return set()
        with sqlite3.connect(path) as db:
            return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    with env.server.admin(env.db) as c:
        cur = c.cursor()
        cur.execute("SHOW TABLES")
        return {r[0] for r in cur.fetchall()}


def obsids_of(env, job):
    """The obsids of a job's table, in table order."""
    return [r["obsid"] for r in env.table(job).rows()]
