"""Dispatch cost: 2,000 obsids through the C HIPE stand-in, side by side in one run: xargs -P, GNU
parallel -j, GNU parallel --sqlworker on MariaDB, `run` on SQLite, `run` on MariaDB (one `run -j N`
command: N workers forked after the imports; N `run` processes for a --compare checkout without -j); at 1, 8 and 32
workers; the median of 3 repetitions (1 with --quick), the tools interleaved within each repetition
so that a change of load on the shared machine hits all of them alike.

Each tool runs the same stand-in with HIPE's command line on a script whose last line names the
completion marker; for xargs and parallel the 2,000 scripts are written beforehand (untimed), `run`
writes its own per launch as it always does. Wall seconds from start to the last process's exit
(for `run`, that includes the workers' wait for obsids running elsewhere at the end), and CPU
milliseconds per obsid of every process involved (the tool, the stand-ins, and the MariaDB server).

Nothing a run made is deleted before the benchmark ends (markers and job folders are moved aside):
on a file system without a journal (this machine's), ext4 makes each new file scan past every inode
freed in the last 60 s or more, so deleting a run's thousands of files made the next runs' file
creations (logs, markers) pay for them, whichever tool came next.
"""
import subprocess
import time
from pathlib import Path

from common import (
    BIN,
    CpuMeter,
    commit_of,
    has_run_j,
    load_average,
    md_table,
    median,
    obsids,
    record,
    start_workers,
    wait_workers,
)

WORKERS = (1, 8, 32)
TOOLS = ("xargs -P", "parallel -j", "parallel --sqlworker (MariaDB)", "run (SQLite)", "run (MariaDB)")
PROPERTIES = ["-properties", "java.vm.memory.max=2048m"]


class Scripts:
    """The 2,000 scripts xargs and parallel hand to the stand-in, and their markers."""

    def __init__(self, folder, ids):
        self.folder, self.ids = folder, ids
        folder.mkdir(parents=True, exist_ok=True)
        for o in ids:
            (folder / f"{o}.py").write_text(f"obsid={o}\npass\nopen(\"{folder}/{o}.done\", \"w\").close()\n")
        self.list = folder / "scripts.txt"
        self.list.write_text("".join(f"{folder}/{o}.py\n" for o in ids))

    def clear(self):
        """Markers of the last run moved aside (renamed, not deleted: see the module's docstring)."""
        spent = self.folder / f"spent-{time.monotonic_ns()}"
        spent.mkdir()
        for p in self.folder.glob("*.done"):
            p.rename(spent / p.name)

    def check(self, tool):
        done = len(list(self.folder.glob("*.done")))
        if done != len(self.ids):
            raise RuntimeError(f"{tool}: {done} of {len(self.ids)} markers written")


def _xargs(suite, scripts, n):
    return [subprocess.Popen(["xargs", "-P", str(n), "-n", "1", "-a", str(scripts.list), str(suite.standin),
                              *PROPERTIES], stdout=subprocess.DEVNULL)]


def _parallel(suite, scripts, n):
    return [subprocess.Popen(["parallel", "--will-cite", "-j", str(n), "-a", str(scripts.list), str(suite.standin),
                              *PROPERTIES, "{}"], stdout=subprocess.DEVNULL)]


def _sql_url(suite, db, table):
    from mariadb_server import PASSWORD, USER
    return f"mysql://{USER}:{PASSWORD}@127.0.0.1:{suite.server.port}/{db}/{table}"


def _parallel_sql_setup(suite, scripts, db):
    """Fill GNU parallel's SQL table with the jobs (--sqlmaster, untimed); returns its DBURL."""
    url = _sql_url(suite, db, "pjobs")
    subprocess.run(["parallel", "--will-cite", "--sqlmaster", url, "-a", str(scripts.list), str(suite.standin),
                    *PROPERTIES, "{}"], check=True, stdout=subprocess.DEVNULL)
    return url


def run_once(suite, tool, n, scripts, state):
    """Run one tool once at n workers; returns the CpuMeter (wall, cpu)."""
    server = suite.server if "MariaDB" in tool else None
    if tool.startswith("run"):
        env = state[tool.split(" @")[0]]
        state["jobs"] = state.get("jobs", 0) + 1
        job = f"d{state['jobs']}"
        r = env.cli(job, "new", env.obsid_file(obsids(state["obsids"]), "ids.txt"))
        assert r.returncode == 0, r.stderr
        env.template(job, "pass\n")
        with CpuMeter(server) as m:
            wait_workers(start_workers(env, job, n, bin_path=state["bins"].get(tool, BIN)))
        done = env.table(job).counts()["done"]
        if done != state["obsids"]:
            raise RuntimeError(f"{tool}: {done} of {state['obsids']} done")
        (env.root / "jobs" / job).rename(env.root / f"spent-{job}")   # deleted with the suite's folder at the end
        return m
    scripts.clear()
    if tool.startswith("parallel --sql"):
        url = _parallel_sql_setup(suite, scripts, state["db"])
        with CpuMeter(server) as m:
            p = subprocess.Popen(["parallel", "--will-cite", "--sqlworker", url, "-j", str(n)],
                                 stdout=subprocess.DEVNULL)
            p.wait()
    else:
        start = _xargs if tool.startswith("xargs") else _parallel
        with CpuMeter(server) as m:
            for p in start(suite, scripts, n):
                p.wait()
    scripts.check(tool)
    return m


def main(suite, args):
    n_obsids, workers = args.obsids or 2000, tuple(args.workers or WORKERS)
    started_load = load_average()
    ids = obsids(n_obsids)
    scripts = Scripts(suite.tmp / "dispatch-scripts", ids)
    state = {"run (SQLite)": suite.env("sqlite"), "run (MariaDB)": suite.env("mysql"),
             "db": suite.server.create_database("parallel_sql"), "obsids": n_obsids}
    state["bins"] = {}
    tools = list(TOOLS)
    for other in args.compare:   # `run` of another checkout, side by side
        bin_path = Path(other).resolve() / "bin" / "BatchProcess.py"
        for backend in ("run (SQLite)", "run (MariaDB)"):
            state["bins"][f"{backend} @{commit_of(bin_path)}"] = bin_path
            tools.append(f"{backend} @{commit_of(bin_path)}")
    tools = [t for t in tools if not args.only or any(o in t for o in args.only)]
    walls = {(t, n): [] for t in tools for n in workers}
    cpus = {(t, n): [] for t in tools for n in workers}
    for rep in range(suite.reps):
        state["rep"] = rep
        for n in workers:
            for tool in tools:
                m = run_once(suite, tool, n, scripts, state)
                walls[tool, n].append(m.wall)
                cpus[tool, n].append(m.cpu + m.server_cpu)
                print(f"  rep {rep + 1}/{suite.reps}  {n:2} workers  {tool:32} {m.wall:7.2f} s wall  "
                      f"{(m.cpu + m.server_cpu) * 1000 / n_obsids:6.1f} ms CPU/obsid  (load {load_average()})",
                      flush=True)
                time.sleep(0.5)
    rows = []
    for n in workers:
        rows.append([n] + [f"{median(walls[t, n]):.1f} s" for t in tools])
    rows_ms = [[n] + [f"{median(walls[t, n]) * 1000 / n_obsids:.1f} / {median(cpus[t, n]) * 1000 / n_obsids:.1f}"
                      for t in tools] for n in workers]
    how = {t: "one `run -j N` (N workers forked after the imports)" if has_run_j(state["bins"].get(t, BIN))
           else "N `run` processes" for t in tools if t.startswith("run")}
    started = "; ".join(f"{t}: {h}" for t, h in how.items())
    body = (f"{n_obsids:,} obsids, C stand-in, median of {suite.reps} run(s) per cell, all tools in the same session. "
            f"Workers of `run` started as: {started}.\n\n"
            "Wall seconds:\n\n" + md_table(["workers", *tools], rows) +
            "\n\nPer obsid, milliseconds of wall / of CPU (every process: tool, workers, stand-ins, MariaDB server):\n\n"
            + md_table(["workers", *tools], rows_ms))
    record("Dispatch cost", body, started_load)
