"""What every benchmark shares: the machine's description, RESULTS.md, the C HIPE stand-in, one
private MariaDB server per suite run, batch environments, and starting `run` workers.

Not a test module: nothing here is collected by pytest (no test_*.py under tests/bench/).
"""
import functools
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TESTS = BENCH.parent
ROOT = TESTS.parent
RESULTS = BENCH / "RESULTS.md"
for p in (str(TESTS), str(ROOT / "lib")):
    if p not in sys.path:
        sys.path.insert(0, p)

from mariadb_server import MariaDB  # noqa: E402
from support import BIN, TRIVIAL_HIPE, BatchEnv  # noqa: E402,F401

FIRST_OBSID = 1342000000
# ../shared/data beside the checkout (as tests/support.py has it), or beside a folder above it (a
# git worktree kept in a subfolder of the main checkout's parent).
SHARED_DATA = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()),
                   ROOT.parent / "shared" / "data")
SAVE = [True]   # run.py --no-save: print only (for trying the suite out)


class Suite:
    """One run of the suite: its temporary folder, options, the stand-in and the MariaDB server."""

    def __init__(self, tmp: Path, quick: bool):
        self.tmp, self.quick = Path(tmp), quick
        self.reps = 1 if quick else 3
        self._standin = None
        self._server = None
        self._envs = 0

    @property
    def standin(self) -> Path:
        """The C stand-in, compiled once per suite run into the temporary folder."""
        if self._standin is None:
            out = self.tmp / "hipe-c"
            subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(BENCH / "standin.c")], check=True)
            self._standin = out
        return self._standin

    @property
    def server(self) -> MariaDB:
        if self._server is None:
            # Its temporary tables in a folder of ours: on this shared machine other work cleans /tmp.
            tmpdir = self.tmp / "mariadb-tmp"
            tmpdir.mkdir()
            saved = os.environ.get("TMPDIR")
            os.environ["TMPDIR"] = str(tmpdir)   # mariadbd's default tmpdir
            try:
                self._server = MariaDB(self.tmp / "mariadb").start()
                # Debian's default durability, as users' servers have it (the tests' server flushes once
                # a second, innodb_flush_log_at_trx_commit=2): every commit waits for its log flush.
                with self._server.admin() as c:
                    c.cursor().execute("SET GLOBAL innodb_flush_log_at_trx_commit = 1")
            finally:
                if saved is None:
                    os.environ.pop("TMPDIR")
                else:
                    os.environ["TMPDIR"] = saved
        return self._server

    def env(self, backend: str, hipe=None, run=None) -> BatchEnv:
        """A fresh HIPE_BATCH_ROOT (its own SQLite file or MariaDB database) using the C stand-in."""
        self._envs += 1
        name = f"b{self._envs}"
        if backend == "sqlite":
            env = BatchEnv(self.tmp / name, "sqlite")
        else:
            env = BatchEnv(self.tmp / name, "mysql", self.server, self.server.create_database(name))
        env.write_cfg(hipe={"command": str(self.standin), **(hipe or {})},
                      run={"lease": "60", "max_attempts": "3", **(run or {})})
        return env

    def close(self):
        if self._server is not None:
            self._server.cleanup()


# ------------------------------------------------------------------------ the machine and RESULTS.md
def _git(*args) -> str:
    r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return r.stdout.strip()


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _version(command) -> str:
    try:
        r = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError:
        return "absent"
    return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else "?"


def machine() -> str:
    """One paragraph: date, machine, load, commit, backends' and tools' versions."""
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!tests/bench/RESULTS.md")
    dirty = " (with uncommitted changes)" if changed else ""
    return (f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n"
            f"- machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {_cpu_model()}\n"
            f"- commit: {_git('rev-parse', '--short', 'HEAD')} {_git('log', '-1', '--format=%s')[:80]}{dirty}\n"
            f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"{_version(['mariadbd', '--version'])}, {_version(['parallel', '--will-cite', '--version'])}, "
            f"{_version(['gcc', '--version'])}\n"
            "- the suite's MariaDB (if used): innodb_flush_log_at_trx_commit=1, Debian's default (every commit "
            "flushed to disk), since issue 21; before, 2")


def md_table(headers, rows) -> str:
    def right(h):
        return not h.startswith("(")
    lines = ["| " + " | ".join(h.lstrip("(") for h in headers) + " |",
             "| " + " | ".join("---:" if right(h) else "---" for h in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def record(title: str, body: str, started_load: str):
    """Print a benchmark's result and append it, with the machine's description, to RESULTS.md."""
    text = (f"\n## {title}\n\n{machine()}\n- load average (1, 5, 15 min) at the start: {started_load}; "
            f"at the end: {load_average()} (the machine is shared: above 2 means others were running)\n\n{body.strip()}\n")
    print(text, flush=True)
    if not SAVE[0]:
        return
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by `tests/bench/run.py`; newest last. "
                           "What each benchmark measures is said at the top of its file, tests/bench/bench_NAME.py.\n")
    with open(RESULTS, "a") as f:
        f.write(text)


# ------------------------------------------------------------------------ measuring
def median(values):
    return statistics.median(values) if values else float("nan")


def children_cpu() -> float:
    """CPU seconds of every waited-for descendant so far (their children included once waited for)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def process_cpu(pid) -> float:
    """CPU seconds of a live process (e.g. mariadbd, which is never waited for during a benchmark)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by this process's children and, if given, the MariaDB server, between start and stop."""

    def __init__(self, server=None):
        self.server_pid = server.proc.pid if server is not None and server.proc else None

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.c0 = children_cpu()
        self.s0 = process_cpu(self.server_pid) if self.server_pid else 0.0
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = children_cpu() - self.c0
        self.server_cpu = (process_cpu(self.server_pid) - self.s0) if self.server_pid else 0.0


# ------------------------------------------------------------------------ workers
@functools.cache
def has_run_j(bin_path: Path = BIN) -> bool:
    """Whether `run -j N` exists in that checkout (forked workers)."""
    r = subprocess.run([sys.executable, str(bin_path), "x", "run", "--help"], capture_output=True, text=True)
    return " -j" in r.stdout


def start_workers(env: BatchEnv, job: str, n: int, extra=(), stdout=subprocess.DEVNULL, bin_path: Path = BIN):
    """n workers of `job`: `run -j n` where it exists, else n `run` processes, all started at once.
    bin_path: the BatchProcess.py of another checkout, to compare it in the same session."""
    args = [sys.executable, str(bin_path), "-q", job, "run", *extra]

    def start(*more):
        return subprocess.Popen([*args, *map(str, more)], text=True, env=env.env(), cwd=env.root, stdout=stdout,
                                stderr=subprocess.PIPE)
    if has_run_j(bin_path):
        return [start("-j", n)]
    return [start() for _ in range(n)]


def commit_of(bin_path: Path) -> str:
    """The short commit of the checkout holding bin_path (or its folder's name if it is no git checkout)."""
    r = subprocess.run(["git", "-C", str(bin_path.parent), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or bin_path.parent.parent.name


def wait_workers(procs, timeout=3600):
    """Wait for every worker; raise naming the first one that failed."""
    deadline = time.monotonic() + timeout
    errors = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
            if p.returncode != 0:
                errors.append(f"worker exit {p.returncode}: {err.strip()[-500:]}")
    except BaseException:   # the suite stopped (Ctrl-C, SIGTERM) or timed out: no worker outlives it
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait(60)
        raise
    if errors:
        raise RuntimeError(errors[0])


def obsids(n: int):
    return list(range(FIRST_OBSID, FIRST_OBSID + n))
