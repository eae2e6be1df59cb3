"""One commit per obsid on a durable MariaDB (issue 21): `run` against GNU parallel -j over the same C
stand-in, at 1 and 8 workers, with the suite's MariaDB flushing its log at every commit
(innodb_flush_log_at_trx_commit=1, Debian's default; common.Suite sets it). The tools interleaved
within each repetition (the machine is shared); median of 3 (1 with --quick).

Per obsid: wall and CPU milliseconds (every process: tool, workers, stand-ins, MariaDB server), and
the server's fsyncs (MariaDB 10.11 has no Innodb_os_log_fsyncs: Innodb_data_fsyncs of SHOW GLOBAL
STATUS, which counts the log's fsyncs with the data files' (so if anything more than the log's),
read before and after the run, `new` excluded): a worker that records an outcome and claims its next obsid in one transaction
costs one per obsid, fewer with several workers (group commit: one flush for the commits waiting).
--compare CHECKOUT adds `run` of another checkout (e.g. one before issue 21: two commits per obsid).
"""
import time
from pathlib import Path

from bench_dispatch import Scripts, run_once
from common import BIN, CpuMeter, commit_of, load_average, md_table, median, obsids, record, start_workers, wait_workers

WORKERS = (1, 8)


def log_fsyncs(server) -> int:
    with server.admin() as c:
        cur = c.cursor()
        cur.execute("SHOW GLOBAL STATUS LIKE 'Innodb_data_fsyncs'")
        return int(cur.fetchone()[1])


def run_measured(suite, tool, n, scripts, state):
    """One run of a tool at n workers: (CpuMeter, the server's log fsyncs during the run alone)."""
    if not tool.startswith("run"):
        before = log_fsyncs(suite.server)
        m = run_once(suite, tool, n, scripts, state)
        return m, log_fsyncs(suite.server) - before
    env = state["run (MariaDB)"]
    state["jobs"] = state.get("jobs", 0) + 1
    job = f"f{state['jobs']}"
    r = env.cli(job, "new", env.obsid_file(obsids(state["obsids"]), "ids.txt"))
    assert r.returncode == 0, r.stderr
    env.template(job, "pass\n")
    before = log_fsyncs(suite.server)
    with CpuMeter(suite.server) as m:
        wait_workers(start_workers(env, job, n, bin_path=state["bins"].get(tool, BIN)))
    fsyncs = log_fsyncs(suite.server) - before
    done = env.table(job).counts()["done"]
    if done != state["obsids"]:
        raise RuntimeError(f"{tool}: {done} of {state['obsids']} done")
    (env.root / "jobs" / job).rename(env.root / f"spent-{job}")
    return m, fsyncs


def main(suite, args):
    n_obsids, workers = args.obsids or 1000, tuple(args.workers or WORKERS)
    started_load = load_average()
    scripts = Scripts(suite.tmp / "durable-scripts", obsids(n_obsids))
    server = suite.server
    with server.admin() as c:
        cur = c.cursor()
        cur.execute("SELECT @@GLOBAL.innodb_flush_log_at_trx_commit")
        durability = cur.fetchone()[0]
    state = {"run (MariaDB)": suite.env("mysql"), "obsids": n_obsids, "bins": {}}
    tools = ["parallel -j", "run (MariaDB)"]
    for other in args.compare:
        bin_path = Path(other).resolve() / "bin" / "BatchProcess.py"
        tool = f"run (MariaDB) @{commit_of(bin_path)}"
        state["bins"][tool] = bin_path
        tools.append(tool)
    walls = {(t, n): [] for t in tools for n in workers}
    cpus = {(t, n): [] for t in tools for n in workers}
    syncs = {(t, n): [] for t in tools for n in workers}
    ratios = {n: [] for n in workers}
    for rep in range(suite.reps):
        for n in workers:
            for tool in tools:
                m, fsyncs = run_measured(suite, tool, n, scripts, state)
                walls[tool, n].append(m.wall)
                cpus[tool, n].append(m.cpu + m.server_cpu)
                syncs[tool, n].append(fsyncs / n_obsids)
                print(f"  rep {rep + 1}/{suite.reps}  {n:2} workers  {tool:28} {m.wall:7.2f} s wall  "
                      f"{(m.cpu + m.server_cpu) * 1000 / n_obsids:6.1f} ms CPU/obsid  {fsyncs / n_obsids:5.2f} "
                      f"fsyncs/obsid  (load {load_average()})", flush=True)
                time.sleep(0.5)
            ratios[n].append(walls["run (MariaDB)", n][-1] / walls["parallel -j", n][-1])
    rows = [[n, *(f"{median(walls[t, n]) * 1000 / n_obsids:.1f} / {median(cpus[t, n]) * 1000 / n_obsids:.1f} / "
                  f"{median(syncs[t, n]):.2f}" for t in tools),
             " ".join(f"{r:.2f}" for r in ratios[n])] for n in workers]
    body = (f"{n_obsids:,} obsids, C stand-in, the suite's MariaDB with innodb_flush_log_at_trx_commit={durability} "
            f"(1: Debian's default, every commit flushed), median of {suite.reps} run(s) per cell, the tools "
            "interleaved in each repetition on a shared 2-core machine (other sessions' tests running).\n\n"
            "Per obsid: milliseconds of wall / of CPU (every process, the MariaDB server's included) / fsyncs "
            "(Innodb_data_fsyncs, log and data files: MariaDB 10.11 has no Innodb_os_log_fsyncs; `new` excluded). "
            "Last column: `run`'s wall over parallel's, each repetition "
            "(same repetition, run right after it):\n\n"
            + md_table(["workers", *tools, "run / parallel wall"], rows))
    record("One commit per obsid on a durable MariaDB (issue 21)", body, started_load)
