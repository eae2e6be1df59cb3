"""Helpers shared by the tests: the paths, a batch environment (`BatchEnv`), waiting for a
condition, looking at processes, killing what a test started, making a job, running workers. No
fixtures here (they are in conftest.py), and no import of conftest or of a test module, so that the
standalone scripts (fault_soak.py, bench_new.py, bench/) and mariadb_server.py can use it too.
"""
import gzip
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "lib") not in sys.path:   # the standalone scripts run without pytest's pythonpath
    sys.path.insert(0, str(ROOT / "lib"))

from batchUtility import config  # noqa: E402
from batchUtility.storage import open_table  # noqa: E402

BIN = ROOT / "bin" / "BatchProcess.py"
TRIVIAL_HIPE = ROOT / "tests" / "bin" / "trivial-hipe"
STANDIN = ROOT / "bin" / "hipe-standin"
SHARED_DATA = ROOT.parent / "shared" / "data"

OBSID = 1342191755   # a real Herschel obsid, the one most tests use
# libfaketime (Debian package faketime): a process's wall clock moved (FAKETIME="+60s"); None if missing.
LIBFAKETIME = next((p for p in ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                                "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
                                "/usr/lib/faketime/libfaketime.so.1") if os.path.exists(p)), None)


# ----------------------------------------------------------------------------- a batch environment
class BatchEnv:
    """A HIPE_BATCH_ROOT of its own (batch.cfg, jobs/), on one backend, with the trivial HIPE."""

    def __init__(self, root: Path, backend: str, server=None, db=None):
        self.root, self.backend, self.server, self.db = root, backend, server, db
        self.root.mkdir(parents=True, exist_ok=True)
        self.cfg_path = root / "batch.cfg"
        self.calls = root / "hipe-calls.txt"
        self.write_cfg()

    def sql_section(self):
        if self.backend == "sqlite":
            return {"backend": "sqlite", "path": "batch.sqlite", "table": "v11_1"}
        return self.server.cfg_sql(self.db)

    def write_cfg(self, sql=None, hipe=None, run=None, raw=None):
        """Write batch.cfg: the defaults for this env, updated by the given sections' keys."""
        sections = {"sql": {**self.sql_section(), **(sql or {})},
                    "hipe": {"command": str(TRIVIAL_HIPE), "memory": "512m", **(hipe or {})},
                    "run": {"lease": "30", "max_attempts": "3", "db_patience": "60", **(run or {})}}
        text = raw if raw is not None else "".join(
            f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None) + "\n"
            for name, keys in sections.items())
        self.cfg_path.write_text(text)
        self.cfg_path.chmod(0o600)
        return self.cfg_path

    def env(self, **extra):
        env = dict(os.environ, HIPE_BATCH_ROOT=str(self.root), TRIVIAL_HIPE_CALLS=str(self.calls),
                   PYTHONUNBUFFERED="1")
        env.pop("HIPE_BATCH_CONFIG", None)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def cli(self, *args, timeout=300, input=None, env=None):
        """Run bin/BatchProcess.py with args; returns the CompletedProcess (text)."""
        return subprocess.run([sys.executable, str(BIN), *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, input=input, env=env or self.env(), cwd=self.root)

    def popen(self, *args, env=None, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen([sys.executable, str(BIN), *map(str, args)], text=True,
                                env=env or self.env(), cwd=self.root, **kw)

    def config(self):
        return config.load(str(self.cfg_path))

    def table(self, job, **kw):
        return open_table(self.config().sql, job, **kw)

    def template(self, job, text):
        """Write the job's template, dated a minute back: a worker runs only a template that has not
        changed for 2 s (read whole, issue 18), and a user's was saved long before `run`."""
        path = self.root / "jobs" / job / f"{job}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        settled(path)
        return path

    def obsid_file(self, obsids, name="obsids.txt"):
        path = self.root / name
        path.write_text("".join(f"{o}\n" for o in obsids))
        return path

    def load_master(self, *sql_files):
        """Create the master table v11_1 and load SQL files into it (sample data or the 2014 dump)."""
        if self.backend == "sqlite":
            db = sqlite3.connect(self.root / "batch.sqlite")
            db.executescript((ROOT / "sql" / "master_sqlite.sql").read_text())
            for f in sql_files:
                db.executescript(Path(f).read_text())
            db.commit()
            db.close()
            return None
        results = []
        for f in [ROOT / "sql" / "master_mysql.sql", *sql_files]:
            data = subprocess.run(["zcat", str(f)], capture_output=True).stdout if str(f).endswith(".gz") \
                else Path(f).read_bytes()
            results.append(subprocess.run(["mariadb", f"--socket={self.server.socket}", "-uroot", self.db],
                                          input=data, capture_output=True))
        return results

    def calls_list(self):
        """The obsid of every HIPE call made so far, in call order."""
        if not self.calls.exists():
            return []
        return [int(line.split()[0]) for line in self.calls.read_text().splitlines() if line.strip()]


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


def settled(path):
    """Date a file a minute back, as one written long before it is read (see BatchEnv.template)."""
    then = time.time() - 60
    os.utime(path, (then, then))


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


def kill_a_slot_worker(slots, killed, rng):
    """SIGKILL one live worker of `run -j` (its pid read from a slot lock in `slots`) not killed
    before, chosen by rng; it joins `killed`. False when none is left alive."""
    pids = {int(p.read_text()) for p in slots.glob("*.lock") if p.read_text().strip()} - killed
    alive = sorted(p for p in pids if pid_alive(p))
    if not alive:
        return False
    victim = rng.choice(alive)
    os.kill(victim, signal.SIGKILL)
    killed.add(victim)
    return True


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


def row_of(env, obsid=OBSID, job="j"):
    """The job table's row of obsid, read on a connection of its own, closed at once."""
    table = env.table(job)
    try:
        return table.row(obsid)
    finally:
        table.close()


def done_count(env, job="j"):
    """How many obsids of the job are done, or 0 while the database cannot say (a node being killed)."""
    try:
        table = env.table(job)
        try:
            return table.counts()["done"]
        finally:
            table.close()
    except Exception:
        return 0


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


# ----------------------------------------------------------------------------- workers
class Worker:
    """One `BatchProcess.py JOB run` in the background, its output going to files."""

    def __init__(self, env, reaper, name, job="j", **env_extra):
        self.out_path, self.err_path = env.root / f"{name}.out", env.root / f"{name}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = reaper.popen(env.popen(job, "run", stdout=out, stderr=err,
                                               env=env.env(**env_extra) if env_extra else None))
        self.pid = self.proc.pid

    def err(self):
        return self.err_path.read_text()

    def out(self):
        return self.out_path.read_text()

    def wait(self, timeout=60):
        return self.proc.wait(timeout=timeout)


def in_transaction(env):
    """Whether some connection holds an open write transaction on the job's database."""
    if env.backend == "sqlite":
        probe = sqlite3.connect(str(env.root / "batch.sqlite"), timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            probe.close()
    with env.server.admin() as c:
        cur = c.cursor()
        cur.execute("SELECT COUNT(*) FROM information_schema.innodb_trx t JOIN information_schema.processlist p"
                    " ON p.id = t.trx_mysql_thread_id WHERE p.db = %s", (env.db,))
        return cur.fetchone()[0] > 0


@dataclass
class CliResult:
    """What `cli.main(argv)` called in-process gave: its exit status and what it wrote."""
    code: int
    out: str
    err: str

    def error(self):
        """The one error line, asserting there is exactly one and exit status 2."""
        lines = self.err.strip().splitlines()
        assert self.code == 2, self
        assert len(lines) == 1 and lines[0].startswith("BatchProcess.py: error: "), self.err
        return lines[0][len("BatchProcess.py: error: "):]


# ----------------------------------------------------------------------------- made-up runs (the operator's view)
SVG = "{http://www.w3.org/2000/svg}"
COUNTS = {"pending": 300, "running": 16, "done": 1380, "failed": 5}


def made_up_run(lanes=8, per_lane=20, seed=7, now=1_700_000_000.0):
    """Attempts of a run: `lanes` host+slot lanes, some failed, lost and stopped, the last ones running."""
    rng = random.Random(seed)
    attempts, obsid = [], 1342000000
    for lane in range(lanes):
        host, slot = f"node{lane // 4 + 1:02d}", f"{lane % 4 + 1}/{lanes}"
        t = now - per_lane * 100.0
        for i in range(per_lane):
            d = rng.uniform(20, 120)
            running = i == per_lane - 1
            outcome = "running" if running else rng.choice(["done"] * 8 + ["failed", "lost", "stopped"])
            attempts.append({"obsid": obsid, "attempt": 1, "host": host, "worker": slot, "pid": 1000 + lane,
                             "started": t, "ended": None if running else t + d, "outcome": outcome,
                             "exit_code": 1 if outcome == "failed" else 0, "signal_no": None,
                             "reason": "HIPE exited with status 1: <ValueError> & \x07bell" if outcome == "failed" else ""})
            obsid += 1
            t += d + 1
    return attempts, now


_SQL_VALUE = re.compile(r"'(?:[^'\\]|\\.)*'|[^,()\s]+")


def blkr_pipetimes(dump: Path):
    """(obsid, pipetime) of the 1,701 rows the 2014 dump (blkr_v11_1.sql.gz) loads: its first INSERT
    (the second is cut off)."""
    rows, inside = [], False
    with gzip.open(dump, "rt", encoding="latin-1") as f:
        for line in f:
            if line.startswith("INSERT"):
                if inside:
                    break
                inside = True
            elif inside and line.startswith("\t("):
                fields = _SQL_VALUE.findall(line.strip().rstrip(",;"))
                rows.append((int(fields[0]), int(fields[7])))
                if line.rstrip().endswith(";"):
                    break
    return rows


# Headless Chromium as this machine's probe runs it: without background networking its connections
# would be refused by the closed network, many at a time.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def chromium(profile: Path, *args: str):
    """Run headless Chromium with a profile folder of its own (check=True, text); None where it is
    not installed (.ci/install installs it; the caller skips)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120, check=True)
