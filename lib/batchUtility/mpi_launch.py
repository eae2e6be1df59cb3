"""What bin/BatchProcess_mpi.sh needs from Python: the Open MPI hostfile (where it is, what it says),
whether a job can run on the hosts it names, the lost-host watcher, and the job-wide summary.

Format (Open MPI's): one host a line, `#` starts a comment, then `key=value` words:
    node01 slots=8            # eight workers on node01
    node02 slots=4 max_slots=4
    localhost slots=2
A host without `slots=` gets as many slots as it has cores (Open MPI's rule). A host listed on
several lines without `slots=` gets one slot per line.

The launcher calls, before mpirun:
    python -m batchUtility.mpi_launch check JOB [--hostfile FILE]
which prints the hostfile's absolute path on stdout (and what it holds on stderr), or one line
`BatchProcess_mpi.sh: error: ...` and exit status 2 when the hostfile, the database or the job is
not fit for an MPI run; and after mpirun:
    python -m batchUtility.mpi_launch summary JOB
which prints `BatchProcess.py JOB status --hosts` and exits 0 only if every obsid of the job is done;
and, while mpirun runs, `python -m batchUtility.mpi_launch watch JOB PID GRACE` (see watch()).
"""
import argparse
import importlib.util
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .errors import BadInput, BatchError

PROG = "BatchProcess_mpi.sh"
_SLOTS = {"slots", "slot", "count", "cpu"}
_MAX_SLOTS = {"max_slots", "max-slots", "slots_max", "slots-max"}
# Further keys Open MPI's hostfile reader knows; accepted and passed on untouched.
_OTHER = {"username", "user", "user_name", "port", "boards", "sockets", "sockets_per_board",
          "cores", "cores_per_socket"}


@dataclass(frozen=True)
class Host:
    name: str            # as written, without any user@
    slots: Optional[int]  # None: not given (Open MPI then uses the host's cores, or one a line)
    line: int


def default_paths(root: Path) -> List[Path]:
    """Where the hostfile is looked for without --hostfile: $HIPE_BATCH_ROOT/hostfile, then bin/hostfile."""
    return [root / "hostfile", root / "bin" / "hostfile"]


def find(explicit: Optional[str], root: Path) -> Path:
    """The hostfile to use: --hostfile FILE if given, else the first default that exists."""
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise BadInput(f"hostfile {explicit} not found (from --hostfile)")
        return path.resolve()
    for path in default_paths(root):
        if path.exists():
            return path.resolve()
    raise BadInput(f"no hostfile: looked for {' and '.join(map(str, default_paths(root)))} "
                   "(write one, e.g. `localhost slots=2`, or give --hostfile FILE)")


def parse(path: Path) -> List[Host]:
    """The hosts a hostfile names, in order; BadInput naming file and line for anything wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise BadInput(f"hostfile {path} cannot be read: {why}") from None
    hosts = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"\s*=\s*", "=", raw.split("#", 1)[0]).strip()
        if not line:
            continue
        words = line.split()
        name, slots = words[0], None
        if "=" in name:
            raise BadInput(f"{path}:{number}: a line must start with a host name, not {name!r}")
        name = name.rsplit("@", 1)[-1]
        for word in words[1:]:
            key, eq, value = word.partition("=")
            key = key.lower()
            if not eq or key not in _SLOTS | _MAX_SLOTS | _OTHER:
                raise BadInput(f"{path}:{number}: {word!r} is not understood "
                               "(expected e.g. `node01 slots=4 max_slots=4`)")
            if key in _SLOTS | _MAX_SLOTS:
                if not value.isdigit():
                    raise BadInput(f"{path}:{number}: {word!r}: {key} must be a whole number")
                if key in _SLOTS:
                    slots = int(value)
        hosts.append(Host(name, slots, number))
    return hosts


def slot_count(hosts: List[Host]) -> Optional[int]:
    """Total slots, or None when some host leaves its count to Open MPI (its number of cores)."""
    if any(h.slots is None for h in hosts):
        return None
    return sum(h.slots for h in hosts)


def describe(hosts: List[Host]) -> str:
    merged = {}
    for h in hosts:
        before = merged.get(h.name, 0)
        merged[h.name] = None if before is None or h.slots is None else before + h.slots
    total = slot_count(hosts)
    parts = [f"{name} {'cores' if n is None else n}" for name, n in merged.items()]
    return (f"{len(merged)} host(s), {'?' if total is None else total} slot(s): " + ", ".join(parts))


def is_this_host(name: str) -> bool:
    """Whether `name` is this machine: localhost, its host name, or an address of its own."""
    name = name.strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        if ipaddress.ip_address(name).is_loopback:
            return True
    except ValueError:
        pass
    here = socket.gethostname()
    if name in (here, here.split(".")[0], socket.getfqdn()):
        return True
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        return False
    for family, _, _, _, address in infos:
        if ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
            return True
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((address[0], 0))  # succeeds only for an address of one of this machine's interfaces
            return True
        except OSError:
            continue
    return False


def _is_loopback_server(sql) -> bool:
    if sql.socket:
        return True
    host = sql.host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(job: str, explicit_hostfile: Optional[str] = None, config_file: Optional[str] = None) -> Path:
    """Everything the launcher checks before mpirun; returns the hostfile. BadInput says what is wrong."""
    from . import config
    from .slot import Slot
    from .model import check_identifier
    from .storage import open_table
    from .worker import Worker

    check_identifier(job)
    cfg = config.load(config_file)
    path = find(explicit_hostfile, cfg.root)
    hosts = parse(path)
    if not hosts:
        raise BadInput(f"hostfile {path} names no host (write e.g. `localhost slots=2`)")
    if slot_count(hosts) == 0:
        raise BadInput(f"hostfile {path} names no slots (every host has slots=0)")
    remote = [h.name for h in hosts if h.slots != 0 and not is_this_host(h.name)]
    if remote and cfg.sql.backend == "sqlite":
        raise BadInput(f"hostfile {path} names host {remote[0]} (line {_line(hosts, remote[0])}), but the "
                       f"database is SQLite ({cfg.sql.path}), which cannot be shared between machines: "
                       f"use [sql] backend = mysql in {cfg.path}, or only this host in the hostfile")
    if remote and _is_loopback_server(cfg.sql):
        where = f"socket = {cfg.sql.socket}" if cfg.sql.socket else f"host = {cfg.sql.host}"
        raise BadInput(f"hostfile {path} names host {remote[0]}, but [sql] {where} in {cfg.path} is this machine "
                       "only, so other hosts would not reach the database: give the server's network name")
    table = open_table(cfg.sql, job, 10.0)
    try:
        table.require()
    finally:
        table.close()
    Worker(cfg, None, job, Slot(1, 1, socket.gethostname())).check_ready()
    if importlib.util.find_spec("mpi4py") is None:
        logging.warning("mpi4py is not installed for %s: each worker takes its rank and size from "
                        "Open MPI's environment instead", sys.executable)
    print(f"{PROG}: hostfile {path}: {describe(hosts)}", file=sys.stderr)
    return path


def _line(hosts, name):
    return next(h.line for h in hosts if h.name == name)


def summary(job: str, config_file: Optional[str] = None) -> int:
    """Print the job-wide summary (what `status --hosts` prints); 0 if every obsid is done, else 1."""
    from . import cli, config, report
    from .model import DONE
    from .storage import open_table

    table = open_table(config.load(config_file).sql, job, cli.INTERACTIVE_PATIENCE)
    try:
        table.require()
        counts = table.counts()
        print(report.status_text(job, counts, table.failures(), table.by_host()), flush=True)
    finally:
        table.close()
    return 0 if counts[DONE] == sum(counts.values()) else 1


ENDED_MPIRUN = 10  # watch's exit status when it ended an mpirun that outlived its job


def watch(job: str, pid: int, grace: float, config_file: Optional[str] = None, poll: float = 5.0) -> int:
    """Watch the job while mpirun (pid) runs, and end mpirun if it outlives the job.

    Open MPI 4.1 with --enable-recovery lets the other ranks run on when a host is lost (its
    daemon killed or cut off), but mpirun then waits for that host's ranks for good. So once the
    job has nothing pending or running for `grace` seconds (the workers leave within seconds of
    that) and mpirun is still there, mpirun gets SIGTERM, then SIGKILL. Returns ENDED_MPIRUN if
    it did so, else 0 when mpirun ended by itself.
    """
    from . import config
    from .model import PENDING, RUNNING
    from .storage import open_table

    def alive():
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

    def nap(seconds):
        end = time.monotonic() + seconds
        while alive() and time.monotonic() < end:
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))

    table = open_table(config.load(config_file).sql, job, 5.0)
    idle_since = None
    while alive():
        try:
            counts = table.counts()
        except BatchError:  # the database away: the workers wait for it, and so does this
            counts = None
        if counts is not None and counts[PENDING] == 0 and counts[RUNNING] == 0:
            idle_since = idle_since if idle_since is not None else time.monotonic()
            if time.monotonic() - idle_since >= grace:
                print(f"{PROG}: job {job} has nothing left to run, yet mpirun still waits {grace:g} s later "
                      "for workers that are gone (a lost host?): ending mpirun", file=sys.stderr, flush=True)
                for sig, patience in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 15.0)):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        break
                    nap(patience)
                return ENDED_MPIRUN
        else:
            idle_since = None
        nap(poll)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchUtility.mpi_launch",
                                     description="Checks and summaries for bin/BatchProcess_mpi.sh.")
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("check", help="check hostfile, database and job; print the hostfile's path")
    c.add_argument("job")
    c.add_argument("--hostfile")
    c.add_argument("--config")
    s = commands.add_parser("summary", help="the job-wide summary after mpirun; 0 if every obsid is done")
    s.add_argument("job")
    s.add_argument("--config")
    w = commands.add_parser("watch", help="end mpirun PID if it outlives the job by GRACE seconds")
    w.add_argument("job")
    w.add_argument("pid", type=int)
    w.add_argument("grace", type=float)
    w.add_argument("--config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "check":
            print(check(args.job, args.hostfile, args.config))
            return 0
        if args.command == "watch":
            return watch(args.job, args.pid, args.grace, args.config)
        return summary(args.job, args.config)
    except BatchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_status


if __name__ == "__main__":
    sys.exit(main())
