"""What the front ends (cli: BatchProcess.py, and the launchers: BatchProcess_mpi.sh) share: how
an error reads, the job-wide summary, and the exit statuses with their one text.

A front end imports this, never another front end: only the entry point (startup) imports cli.
"""
import json
import sys
from typing import Dict, Optional, Tuple

from . import report
from .config import node_name
from .errors import BatchError, JobExists, JobMissing, TemplateMissing
from .model import DONE
from .storage import JobTable, open_table

COMMAND = "BatchProcess.py"
EXIT_STATUSES = """exit status (the same for run, run -j N and BatchProcess_mpi.sh):
  0      every obsid of the job is done (other commands: done as asked)
  1      some obsids failed or are not done yet
  2      bad input: one line says what; nothing was changed
  3      the database stayed away too long
  4      a worker stopped: the Java heap an obsid needs cannot fit in the memory it may ever have
  128+N  stopped by signal N (130 Ctrl-C, 143 SIGTERM); running obsids were put back to pending"""


def error_line(e: BatchError) -> str:
    """The error as the user reads it: the domain errors get what to type next."""
    if isinstance(e, JobMissing) and e.database_missing:
        return f"{e} (create a job with: {COMMAND} {e.job} new [FILE])"
    if isinstance(e, JobMissing):
        return f"{e}: create it with: {COMMAND} {e.job} new [FILE]"
    if isinstance(e, JobExists):
        return f"{e}: use --add to add new obsids, or `{COMMAND} {e.job} wipe` first"
    if isinstance(e, TemplateMissing):
        return f"{e} (`{COMMAND} {e.job} new` copies the example)"
    return str(e)


def job_exit_status(counts) -> int:
    """The job-level exit status: 0 when every obsid of the job is done, else 1."""
    return 0 if counts[DONE] == sum(counts.values()) else 1


def exit_status_of(returncode: int) -> int:
    """A child's exit status as the shell gives it: 128+N when signal N ended it."""
    return 128 - returncode if returncode < 0 else returncode


def summary_heading(job: str) -> str:
    """The line above every job-wide summary (run -j N's, a launcher's)."""
    return f"job-wide summary of job {job}:"


def status_block(table: JobTable, job: str, failures: int = 10, hosts: bool = False,
                 as_json: bool = False) -> Tuple[str, Dict[str, int]]:
    """The status block (or JSON), and the counts it rests on."""
    figures = table.pace_figures(report.RATE_WINDOW, report.WORKERS_WINDOW)
    counts = figures["counts"]
    first_failures = table.failures(max(0, failures))
    by_host = table.by_host() if hosts or as_json else None
    pace = report.pace_of(figures)
    text = (report.status_json(job, counts, first_failures, by_host, pace) if as_json
            else report.status_text(job, counts, first_failures, by_host, pace))
    return _with_node(table, text, as_json), counts


def _with_node(table: JobTable, text: str, as_json: bool) -> str:
    """Which node of a host list answered: a line below the block, or the JSON's "node"."""
    if as_json and table.node is not None:
        data = json.loads(text)
        data["node"] = table.node
        return json.dumps(data, indent=2)
    line = node_line(table)
    return f"{text}\n  {line}" if line else text


def node_line(table: JobTable) -> Optional[str]:
    """'database node H:P answered (I of N in [sql] host)' when [sql] host lists several nodes, else
    None: what every command says (status in its block, the others on stderr, which -q leaves out).
    I is the node's place in the list: 1 unless the nodes before it did not answer."""
    nodes = table.settings.addresses() if table.settings.backend == "mysql" else ()
    if len(nodes) > 1 and table.node is not None:
        names = [node_name(host, port or table.settings.default_port()) for host, port in nodes]
        place = f"{names.index(table.node) + 1} of " if table.node in names else ""
        return f"database node {table.node} answered ({place}{len(nodes)} in [sql] host)"
    return None


def print_status(table: JobTable, job: str, failures: int = 10, hosts: bool = False,
                 as_json: bool = False) -> Dict[str, int]:
    """Print what `status` prints (also a launcher's job-wide summary); returns the counts."""
    text, counts = status_block(table, job, failures, hosts, as_json)
    print(text, flush=True)
    return counts


def job_summary(sql, job: str, patience: float, call_timeout: float, quiet: bool = False) -> int:
    """A launcher's job-wide summary: print what `status --hosts` prints (nothing if quiet); the
    job's exit status (job_exit_status)."""
    table = open_table(sql, job, patience, call_timeout=call_timeout)
    try:
        table.require()
        counts = table.counts() if quiet else print_status(table, job, hosts=True)
    finally:
        table.close()
    return job_exit_status(counts)


def say_error(prog: str, e: BatchError) -> int:
    """Print the error's one line as prog's; its exit status."""
    print(f"{prog}: error: {error_line(e)}", file=sys.stderr, flush=True)
    return e.exit_status
