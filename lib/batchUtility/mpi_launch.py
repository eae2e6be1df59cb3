"""The MPI launcher behind bin/BatchProcess_mpi.sh: checks, mpirun's command line, mpirun supervised
until it ends (stop signals, a lost host, a hang: see supervise), then the job-wide summary.

    python -m batchUtility.mpi_launch JOB [--hostfile FILE] [--config FILE] [-v | -q] [--dry-run] [mpirun options...]

(bin/BatchProcess_mpi.sh runs exactly that; see USAGE.) The hostfile itself is read by `hostfile`.
"""
import importlib.util
import ipaddress
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from . import config, hostfile, local, mpirun_output, rank_status, supervise, worker
from .errors import BadInput, BatchError
from .frontend import job_summary, say_error, summary_heading
from .model import INTERACTIVE_PATIENCE, check_identifier
from .mpi_host import HOSTS_VARIABLE
from .storage import open_table

PROG = "BatchProcess_mpi.sh"
USAGE = f"""\
{PROG} JOB [--hostfile FILE] [--config FILE] [-v | -q] [--dry-run] [mpirun options...]

One `BatchProcess.py JOB run` worker per hostfile slot, started by Open MPI's mpirun on every host
the hostfile names; the job's SQL table is the only coordination. See README.md.

  hostfile   --hostfile FILE, else $HIPE_BATCH_ROOT/hostfile, else $HIPE_BATCH_ROOT/bin/hostfile
  python     $HIPE_BATCH_PYTHON, else this checkout's .venv/bin/python, else python3; by absolute
             path, which must be the same on every host
  mpirun     $HIPE_BATCH_MPIRUN, else mpirun from PATH (Open MPI 4.x)
  -v, --verbose  every worker (and the launcher) also logs each SQL statement's time and each claim
  -q, --quiet    the workers print nothing unless something needs a person, the launcher no summary
             (mpirun's own -v or -q: give them after --)
  --dry-run  print the mpirun command line and exit
  $HIPE_BATCH_MPI_GRACE  seconds mpirun may go on once the job has nothing pending or running
             (it waits for good for the ranks of a lost host); default 30
Every other argument goes to mpirun, e.g. `-x JAVA_HOME` or `--mca plm_rsh_agent "ssh -p 2222"`.
SIGTERM, SIGINT (Ctrl-C) or SIGHUP: every worker puts its running obsid back to pending and stops.
Exit status: 0 when every obsid of the job is done; 1 when some failed or are unfinished; 2 for
bad input (nothing started), or a worker stopped by a bad setup (HIPE or the template gone, a broken
host); 3 when the database stayed away (from the launcher or a worker); 4 when a worker stopped
because the Java heap an obsid needs cannot fit in the memory it may ever have; of a worker's
2, 3 and 4 the highest; mpirun's status when mpirun itself failed; 128+N after signal N.
"""


# --------------------------------------------------------------------------- arguments
@dataclass
class Options:
    job: str
    hostfile: Optional[str] = None
    config: Optional[str] = None
    dry_run: bool = False
    verbose: bool = False   # -v: passed on to every worker's `run`, as -q is
    quiet: bool = False
    extra: List[str] = field(default_factory=list)  # passed to mpirun untouched


class Usage(Exception):
    """Print USAGE and leave with `status` (--help: 0 on stdout; no arguments: 2 on stderr)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def parse_args(argv: List[str]) -> Options:
    """The launcher's arguments, by hand: anything it does not know is mpirun's (argparse would
    take `-x FOO` apart, or `--host` for an abbreviation of --hostfile)."""
    if not argv:
        raise Usage(2)
    if argv[0] in ("-h", "--help"):
        raise Usage(0)
    if argv[0].startswith("-"):
        raise BadInput(f"the first argument must be the job's name (usage: {PROG} JOB [--hostfile FILE] "
                       "[mpirun options...])")
    options, rest = Options(argv[0]), list(argv[1:])
    while rest:
        word = rest.pop(0)
        if word in ("--hostfile", "-hostfile", "--machinefile", "-machinefile", "--config"):
            if not rest:
                raise BadInput(f"{word} needs a FILE")
            setattr(options, "config" if word == "--config" else "hostfile", rest.pop(0))
        elif word.startswith(("--hostfile=", "-hostfile=")):
            options.hostfile = word.split("=", 1)[1]
        elif word.startswith("--config="):
            options.config = word.split("=", 1)[1]
        elif word == "--dry-run":
            options.dry_run = True
        elif word in ("-v", "--verbose"):   # BatchProcess.py's, as every command takes them, not mpirun's
            options.verbose = True
        elif word in ("-q", "--quiet"):
            options.quiet = True
        elif word == "--":
            options.extra += rest
            break
        else:
            options.extra.append(word)
    return options


# --------------------------------------------------------------------------- the checks
def prepare_environment(options: Options) -> None:
    """Root, configuration and interpreter, exported so that every rank on every host sees them."""
    root = config.batch_root()   # $HIPE_BATCH_ROOT, the checkout, or (installed) the current folder
    if not root.is_dir():
        raise BadInput(f"HIPE_BATCH_ROOT={root} is not a folder")
    os.environ["HIPE_BATCH_ROOT"] = str(root.resolve())
    if options.config:
        if not Path(options.config).is_file():
            raise BadInput(f"{options.config}: configuration file not found (from --config)")
        os.environ["HIPE_BATCH_CONFIG"] = str(Path(options.config).resolve())
    # The same interpreter on every host, by absolute path: bin/BatchProcess_mpi.sh chose it, and
    # sys.executable is that interpreter resolved (a pyenv shim or a bare `python3` to the real
    # one), keeping a venv's own path (so that its packages are used).
    os.environ["HIPE_BATCH_PYTHON"] = sys.executable


def find_mpirun() -> str:
    mpirun = os.environ.get("HIPE_BATCH_MPIRUN") or "mpirun"
    if shutil.which(mpirun) is None:
        raise BadInput(f"{mpirun} not found on PATH (install Open MPI, e.g. apt-get install openmpi-bin)")
    try:
        version = subprocess.run([mpirun, "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, errors="replace").stdout
    except OSError:
        version = ""
    if "Open MPI" not in version and "Open RTE" not in version:
        raise BadInput(f"{mpirun} is not Open MPI's mpirun, which this launcher needs (set HIPE_BATCH_MPIRUN)")
    return mpirun


def grace_seconds() -> float:
    grace = os.environ.get("HIPE_BATCH_MPI_GRACE", "30")
    if not re.fullmatch(r"[0-9]+([.][0-9]*)?", grace):
        raise BadInput(f"HIPE_BATCH_MPI_GRACE={grace} is not a number of seconds")
    return float(grace)


def _is_loopback_server(sql) -> bool:
    """The socket, or any node of the host list on this machine only: other hosts would reach another server."""
    return bool(sql.socket) or any(_is_loopback(host) for host, _ in sql.addresses())


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(cfg, job: str, explicit_hostfile: Optional[str] = None, quiet: bool = False) -> Path:
    """Hostfile, database, job, template and HIPE, checked here once rather than failing in every
    rank; returns the hostfile. BadInput says what is wrong."""
    check_identifier(job)
    path = hostfile.find(explicit_hostfile, cfg.root)
    hosts = hostfile.parse(path)
    if not hosts:
        raise BadInput(f"hostfile {path} names no host (write e.g. `localhost slots=2`)")
    if hostfile.slot_count(hosts) == 0:
        raise BadInput(f"hostfile {path} names no slots (every host has slots=0)")
    remote = [h for h in hosts if h.slots != 0 and not hostfile.is_this_host(h.name)]
    if remote and cfg.sql.backend == "sqlite":
        raise BadInput(f"hostfile {path} names host {remote[0].name} (line {remote[0].line}), but the "
                       f"database is SQLite ({cfg.sql.path}), which cannot be shared between machines: "
                       f"use [sql] backend = mysql in {cfg.path}, or only this host in the hostfile")
    if remote and _is_loopback_server(cfg.sql):
        where = f"socket = {cfg.sql.socket}" if cfg.sql.socket else f"host = {cfg.sql.host}"
        raise BadInput(f"hostfile {path} names host {remote[0].name}, but [sql] {where} in {cfg.path} is this "
                       "machine only, so other hosts would not reach the database: give the server's network name")
    table = open_table(cfg.sql, job, INTERACTIVE_PATIENCE)
    try:
        table.require()
        room = local.read_connection_room(table)
    finally:
        table.close()
    # One connection per rank, and one for the launcher's lost-host watch; a host leaving its slots
    # to Open MPI (its cores) counted as one.
    ranks = sum(1 if h.slots is None else h.slots for h in hosts)
    local.warn_if_short_of_connections(room, ranks + 1, cfg.sql, "one per rank, one for the launcher", PROG,
                                       at_least=hostfile.slot_count(hosts) is None)
    worker.check_ready(cfg, job)
    if importlib.util.find_spec("mpi4py") is None:
        logging.warning("mpi4py is not installed for %s: each worker takes its rank and size from "
                        "Open MPI's environment instead", sys.executable)
    if not quiet:
        print(f"{PROG}: hostfile {path}: {hostfile.describe(hosts)}", file=sys.stderr)
    return path


# --------------------------------------------------------------------------- one process per host
# mpirun options that place or count the ranks otherwise than one per hostfile slot: with any of
# them, mpirun starts one rank per slot as it places them (each its own interpreter), as before.
_PLACING = {"np", "n", "c", "N", "npernode", "pernode", "npersocket", "map-by", "rank-by", "bynode",
            "byslot", "bycore", "bysocket", "host", "H", "ppr", "app", "cpus-per-proc", "cpus-per-rank",
            "rankfile", "rf", "add-host", "add-hostfile", "default-hostfile"}


def host_slot_counts(hosts: List[hostfile.Host], extra: List[str]) -> Optional[List[int]]:
    """The slots of each host, in the hostfile's order (a host on several lines counted once, as Open
    MPI merges it), when one process per host can fork them all with the slot numbers Open MPI would
    give one rank per slot (mpi_host); None when not: a host leaves its count to Open MPI (its cores,
    which only that host knows), a host has no slot (Open MPI would still map a process per host
    there), or an mpirun option places the ranks itself."""
    if any(w.startswith("-") and w.lstrip("-").split("=", 1)[0] in _PLACING for w in extra):
        return None
    counts: dict = {}
    for h in hosts:
        if h.slots is None or h.slots == 0:
            return None
        counts[h.name] = counts.get(h.name, 0) + h.slots
    return list(counts.values())


# --------------------------------------------------------------------------- mpirun's command line
def mpirun_command(mpirun: str, path: Path, options: Options, per_host: Optional[List[int]] = None) -> List[str]:
    """per_host: the slots of each host (host_slot_counts): one process per host, which forks them
    (mpi_host); None: one rank per slot."""
    opts = ["--hostfile", str(path)]
    if per_host:
        opts += ["--map-by", "ppr:1:node"]
        os.environ[HOSTS_VARIABLE] = ",".join(map(str, per_host))   # sent below with the other HIPE_*
    else:
        os.environ.pop(HOSTS_VARIABLE, None)
    # The ranks' token for telling their 2, 3 or 4 (rank_status): not in a command line to copy
    # (--dry-run), nor where their stderr would not come back through mpirun (the line would be seen).
    if options.dry_run or rank_status.diverted(options.extra):
        os.environ.pop(rank_status.VARIABLE, None)
    else:
        os.environ[rank_status.VARIABLE] = rank_status.new_token()
    if os.geteuid() == 0:
        opts.append("--allow-run-as-root")
    # Why these options (Open MPI 4.1, mpi4py 4.1; each was seen to matter on this setup):
    #  --enable-recovery  without it, a rank that dies (kill -9, lost node) makes mpirun kill all the
    #      others. With it the other ranks run on, and take the dead rank's obsid back after its lease.
    #      (mpirun's own exit status is then 0 whatever the ranks did, and it prints
    #      "PMIX ERROR: BAD-PARAM" for each rank that ends abnormally: harmless, and left out of the
    #      launcher's stderr by mpirun_output. The launcher's exit status comes from the job table instead.)
    #  MPI4PY_RC_FINALIZE=false and orte_allowed_exit_without_sync  MPI_Finalize is a collective in
    #      Open MPI 4.1 (a PMIx fence): a rank that has finished would wait in it for every other
    #      rank, and a rank on a lost node could keep it waiting for good. The ranks never talk to each
    #      other, so they skip MPI_Finalize and just exit; the MCA option tells mpirun that exiting
    #      without MPI_Finalize is no failure (without --enable-recovery it would abort the job).
    #  --bind-to none  Open MPI binds each rank to a core (or socket) by default; HIPE is a child of
    #      the rank and would inherit that binding: one Java VM squeezed onto one core.
    #  --stdin none  nothing reads the terminal.
    opts += ["--enable-recovery", "--mca", "orte_allowed_exit_without_sync", "1", "--bind-to", "none",
             "--stdin", "none", "-x", "MPI4PY_RC_FINALIZE=false"]
    # The environment every rank needs, also on hosts reached by ssh: PATH (HIPE, java, python), the
    # library and Python paths, and every HIPE_* variable (HIPE_BATCH_ROOT, _CONFIG, _PASSWORD, ...).
    # mpirun sends these values to its daemons itself: none appears on any command line.
    names = ["PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV", *sorted(n for n in os.environ if n.startswith("HIPE_"))]
    for name in names:
        if name in os.environ:
            opts += ["-x", name]
    # The checkout's bin/BatchProcess.py, or the copy `pip install` put in share/hipe-batch/bin.
    return [mpirun, *opts, *options.extra, sys.executable, str(config.share_dir() / "bin" / "BatchProcess.py"),
            options.job, "run", *(["-v"] if options.verbose else []), *(["-q"] if options.quiet else [])]


# --------------------------------------------------------------------------- supervising mpirun
def run_mpirun(command: List[str], watch: supervise.LostHostWatch, stop: supervise.Stop) -> Tuple[int, int]:
    """Start mpirun and supervise it to its end (see supervise); mpirun's status as supervise() gives it,
    and the worst status (2, 3, 4, else 0) a rank told in its status line (rank_status), which
    mpirun does not pass on.

    mpirun's stdout (the ranks' obsid and SUMMARY lines) goes straight to ours; its stderr through
    a filter of Open MPI's noise and the ranks' status lines (see mpirun_output)."""
    listener = rank_status.Listener(os.environ.get(rank_status.VARIABLE))

    def relay(pipe, to, stopping):
        return mpirun_output.Relay(pipe, to, stopping, listener)
    status = supervise.run(command, watch, stop, "mpirun", hangs=" (Open MPI hangs so at times)", relay=relay)
    return status, listener.worst


# --------------------------------------------------------------------------- the end
def finish(cfg, job: str, status: int, stop: supervise.Stop, quiet: bool = False, worker_status: int = 0) -> int:
    """The job-wide summary, then the launcher's exit status (see USAGE): a worker's 2, 3 or 4
    (worker_status, the worst a rank told) as `run -j` passes it on. Each database call is
    bounded as a worker's are (a frozen server must not hold the launcher for a minute), and a
    stopped launcher tries once: it is to end within seconds, the summary is a courtesy."""
    if not quiet:
        print(f"{PROG}: {summary_heading(job)}", flush=True)
    try:
        done = job_summary(cfg.sql, job, 0.0 if stop.status else INTERACTIVE_PATIENCE, cfg.run.call_timeout, quiet)
    except BatchError as e:
        done = say_error(PROG, e)
    if stop.status:
        return stop.status
    if status != 0:
        print(f"{PROG}: mpirun ended with status {status}", file=sys.stderr, flush=True)
        return status
    return max(worker_status, done) if worker_status else done   # the launcher's own 2 or 3 counts too


def launch(argv: List[str]) -> int:
    stop = supervise.Stop(PROG)
    stop.install()
    options = parse_args(argv)
    if options.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    prepare_environment(options)
    mpirun = find_mpirun()
    grace = grace_seconds()
    cfg = config.load(None)  # --config reaches it (and every rank) as $HIPE_BATCH_CONFIG
    path = check(cfg, options.job, options.hostfile, options.quiet)
    command = mpirun_command(mpirun, path, options, host_slot_counts(hostfile.parse(path), options.extra))
    if options.dry_run:
        print(shlex.join(command))
        return 0
    status, worker_status = run_mpirun(command, supervise.LostHostWatch(cfg.sql, options.job, grace,
                                                                         cfg.run.call_timeout), stop)
    stop.uninstall()
    return finish(cfg, options.job, status, stop, options.quiet, worker_status)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return launch(sys.argv[1:] if argv is None else list(argv))
    except Usage as u:
        print(USAGE, end="", file=sys.stdout if u.status == 0 else sys.stderr)
        return u.status
    except BatchError as e:
        return say_error(PROG, e)


if __name__ == "__main__":
    sys.exit(main())
