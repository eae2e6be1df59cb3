"""Where one obsid's cost goes, for one worker in one process, one step at a time (N launches each):

- spawn: the bare fork/exec/wait of the C stand-in from Python (what any launcher pays at least);
- launch path: `hipe.run_obsid` as a worker calls it (temporary script and cache folder, log files,
  the process that kills HIPE if the worker dies, the wait, the verdict, clean-up), no database;
- claim + finish on SQLite and on MariaDB, no HIPE.

Their sum, against the ms per obsid of `run` at one worker in the dispatch table, shows what is left
to the worker loop itself. Wall and CPU milliseconds (this process and its children) per obsid.
"""
import inspect
import resource
import shutil
import subprocess
import time

from common import load_average, md_table, record

from batchUtility import hipe, workdir
from batchUtility.model import Lease, Outcome


def _cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _timed(n, step):
    t, c = time.perf_counter(), _cpu()
    for i in range(n):
        step(i)
    return (time.perf_counter() - t) * 1000 / n, (_cpu() - c) * 1000 / n


def _launcher(cfg, folder):
    """A function launching HIPE on obsid i the way the worker does (adapts to run_obsid's signature)."""
    params = inspect.signature(hipe.run_obsid).parameters
    template = "pass\n"
    out, log = folder / "output", folder / "log"
    out.mkdir(parents=True, exist_ok=True)
    log.mkdir(parents=True, exist_ok=True)
    extra, closers = {}, []
    if "guardian" in params:   # one long-lived guardian per worker (helper "fence")
        from batchUtility.guardian import Guardian
        guardian = Guardian.start() if hasattr(Guardian, "start") else Guardian()
        extra = {"lease": lambda: Lease.HELD, "guardian": guardian}
        closers.append(getattr(guardian, "close", None) or getattr(guardian, "stop", None))
    else:
        extra = {"tick": lambda: Lease.HELD, "tick_every": 3600.0}
    if "scratch" in params:   # the worker's temporary folder, made once per worker
        scratch = workdir.make_scratch("launch")
        extra["scratch"] = scratch
        closers.append(lambda: shutil.rmtree(scratch, ignore_errors=True))

    def launch(i):
        request = hipe.LaunchRequest(cfg.hipe, template, "launch", 1342000000 + i, out, log)
        result = hipe.run_obsid(request, lambda: 0, **extra)
        assert result.outcome.ok, result.outcome.reason
    return launch, [c for c in closers if c]


def main(suite, args):
    started_load = load_average()
    n = 300 if suite.quick else 1000
    sqlite, mysql = suite.env("sqlite"), suite.env("mysql")
    script = suite.tmp / "launch-script.py"
    script.write_text(f"obsid=1\nopen(\"{suite.tmp}/launch.done\", \"w\").close()\n")
    command = [str(suite.standin), "-properties", "java.vm.memory.max=2048m", str(script)]
    rows = [["spawn the stand-in (fork, exec, wait)",
             *_timed(n, lambda i: subprocess.Popen(command, stdin=subprocess.DEVNULL).wait())]]
    launch, closers = _launcher(sqlite.config(), suite.tmp / "launch")
    try:
        rows.append(["launch path: hipe.run_obsid", *_timed(n, launch)])
        if hasattr(hipe, "_start_watchdog"):
            # What the per-launch watchdog (a Python interpreter started per obsid) costs: the same
            # launches with it patched out, for this measurement only.
            start = hipe._start_watchdog
            hipe._start_watchdog = lambda pgid: None
            try:
                rows.append(["launch path without its per-launch watchdog (patched out here)", *_timed(n, launch)])
            finally:
                hipe._start_watchdog = start
    finally:
        for close in closers:
            close()
    for env in (sqlite, mysql):
        f = env.obsid_file(range(1342000000, 1342000000 + n), "launch.txt")
        assert env.cli("launch", "new", f).returncode == 0
        table = env.table("launch")
        rows.append([f"claim + finish ({env.backend})",
                     *_timed(n, lambda i: table.finish(table.claim("bench", "1/1", 1), Outcome(True), 3))])
        table.close()
    body = (f"{n:,} of each, one after the other in one process; milliseconds per obsid.\n\n"
            + md_table(["(step", "wall ms", "CPU ms"], [[r[0], f"{r[1]:.2f}", f"{r[2]:.2f}"] for r in rows]))
    record("Where one obsid's cost goes (one worker)", body, started_load)
