"""The command line, `BatchProcess.py JOB new [FILE] | reset | run | status | wipe`: a thin layer
over config, storage and worker, which tests call directly."""
import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

from . import config, report
from .errors import BadInput, BatchError, JobExists, JobMissing, TemplateMissing
from .model import INTERACTIVE_PATIENCE, check_identifier
from .obsids import MAX_OBSID, WHAT_AN_OBSID_IS, read_obsids
from .slot import current_slot
from .storage import JobTable, open_table
from .worker import Worker

PROG = "BatchProcess.py"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="batch.cfg to use (else $HIPE_BATCH_CONFIG, $HIPE_BATCH_ROOT/batch.cfg, "
                             "$HIPE_BATCH_ROOT/bin/batch.cfg)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="log only problems")

    parser = argparse.ArgumentParser(prog=PROG, parents=[common],
                                     description="Run a HIPE job script over many obsids, tracked in SQL.")
    parser.add_argument("job", metavar="JOB", help="the job's name: its table, and its folder jobs/JOB")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    new = commands.add_parser("new", parents=[common], help="create the job from the master table, or from FILE")
    new.add_argument("file", metavar="FILE", nargs="?", help="obsids, one a line (first CSV column)")
    new.add_argument("--add", action="store_true", help="the job may exist: add only obsids not yet in it")

    reset = commands.add_parser("reset", parents=[common], help="put obsids back to pending")
    which = reset.add_mutually_exclusive_group()
    which.add_argument("--failed", action="store_true", help="only failed obsids")
    which.add_argument("--stale", action="store_true", help="only obsids of lost workers (lease ran out)")
    which.add_argument("--obsids", metavar="FILE", help="only the obsids listed in FILE")

    commands.add_parser("run", parents=[common], help="process pending obsids until none is left")

    status = commands.add_parser("status", parents=[common], help="how far the job is")
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.add_argument("--hosts", action="store_true", help="also per host: done, failed, busy time")
    status.add_argument("--failures", type=int, default=10, metavar="N", help="list the first N failed obsids")
    status.add_argument("--obsid", type=int, metavar="OBSID",
                        help="one obsid's state and every attempt at it: when, where, exit, signal, reason")

    wipe = commands.add_parser("wipe", parents=[common], help="drop the job's table (not its files)")
    wipe.add_argument("--yes", action="store_true", help="do not ask")
    wipe.add_argument("--force", action="store_true",
                      help="drop the job even while obsids run under live leases (their HIPEs run on, orphaned)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False), getattr(args, "quiet", False))
    try:
        check_identifier(args.job)
        cfg = config.load(getattr(args, "config", None))
        return COMMANDS[args.command](cfg, args)
    except BatchError as e:
        print(f"{PROG}: error: {error_line(e)}", file=sys.stderr)
        return e.exit_status


def error_line(e: BatchError) -> str:
    """The error as the user reads it: the domain errors get what to type next."""
    if isinstance(e, JobMissing) and e.database_missing:
        return f"{e} (create a job with: {PROG} {e.job} new [FILE])"
    if isinstance(e, JobMissing):
        return f"{e}: create it with: {PROG} {e.job} new [FILE]"
    if isinstance(e, JobExists):
        return f"{e}: use --add to add new obsids, or `{PROG} {e.job} wipe` first"
    if isinstance(e, TemplateMissing):
        return f"{e} (`{PROG} {e.job} new` copies the example)"
    return str(e)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def cmd_new(cfg: config.Config, args: argparse.Namespace) -> int:
    obsids = read_obsids(args.file) if args.file else None   # the whole file is checked first
    if obsids == [] and not args.add:   # a job with nothing in it: `run` would exit 0 having done nothing
        raise BadInput(f"{args.file}: no obsid in it (only blank lines, comments or a header); nothing was created")
    if obsids is None and not cfg.sql.table:
        raise BadInput(f"{cfg.path}: [sql] table is missing: `new` without FILE takes every obsid of that master table")
    table = open_table(cfg.sql, args.job, INTERACTIVE_PATIENCE, create=True)
    existed = args.add and table.exists()   # without --add, create() refuses an existing job
    added = table.create(obsids, cfg.sql.table, add=args.add)
    try:
        template = _make_job_dir(cfg, args.job)
    except OSError as e:
        if not existed:
            table.drop()
        raise BadInput(f"cannot create {cfg.job_dir(args.job)}: {e.strerror}; job not created") from None
    print(f"job {args.job}: {added} obsids added, {table.total()} in all, in {cfg.sql.describe()}")
    print(f"template: {template}")
    return 0


def _make_job_dir(cfg: config.Config, job: str) -> Path:
    """jobs/JOB/log, jobs/JOB/output, and the template jobs/JOB/JOB.py copied from the example if absent."""
    job_dir = cfg.job_dir(job)
    for sub in ("log", "output"):
        (job_dir / sub).mkdir(parents=True, exist_ok=True)
    template = job_dir / f"{job}.py"
    if not template.exists():
        for example in (cfg.root / "jobs" / "example" / "example.py",
                        config.CHECKOUT / "jobs" / "example" / "example.py"):
            if example.is_file():
                shutil.copyfile(example, template)
                break
        else:
            logging.warning("no example template found: write the job's HIPE script to %s", template)
    return template


def cmd_reset(cfg: config.Config, args: argparse.Namespace) -> int:
    obsids = read_obsids(args.obsids) if args.obsids else None
    table = open_table(cfg.sql, args.job, INTERACTIVE_PATIENCE)
    table.require()
    if args.stale:
        taken = table.reclaim_stale(cfg.run.lease, cfg.run.max_attempts)
        print(f"{len(taken)} obsids of lost workers taken back (no heartbeat for {cfg.run.lease:g} s)")
        return 0
    changed, running = table.reset(cfg.run.lease, only_failed=args.failed, obsids=obsids)
    print(f"{changed} obsids reset to pending")
    if running:
        print(f"{running} obsids are running under live workers and were left alone")
    return 0


def cmd_run(cfg: config.Config, args: argparse.Namespace) -> int:
    slot = current_slot()
    table = open_table(cfg.sql, args.job, cfg.run.db_patience, call_timeout=cfg.run.call_timeout)
    table.require()
    return Worker(cfg, table, args.job, slot).run()


def cmd_status(cfg: config.Config, args: argparse.Namespace) -> int:
    table = open_table(cfg.sql, args.job, INTERACTIVE_PATIENCE)
    table.require()
    if args.obsid is not None:  # one obsid and its attempt history
        if not 0 < args.obsid <= MAX_OBSID:   # also keeps huge numbers away from the driver
            raise BadInput(f"--obsid {args.obsid}: not an obsid ({WHAT_AN_OBSID_IS})")
        row = table.row(args.obsid)
        if row is None:
            raise BadInput(f"obsid {args.obsid} is not in job '{args.job}'")
        history = table.history(args.obsid)
        print(report.obsid_json(row, history) if args.json else report.obsid_text(row, history))
        return 0
    print_status(table, args.job, args.failures, args.hosts, args.json)
    return 0


def print_status(table: JobTable, job: str, failures: int = 10, hosts: bool = False,
                 as_json: bool = False) -> Dict[str, int]:
    """Print what `status` prints (also the MPI launcher's job-wide summary); returns the counts."""
    counts = table.counts()
    failed = table.failures(max(0, failures))
    by_host = table.by_host() if hosts or as_json else None
    print(report.status_json(job, counts, failed, by_host) if as_json
          else report.status_text(job, counts, failed, by_host), flush=True)
    return counts


def cmd_wipe(cfg: config.Config, args: argparse.Namespace) -> int:
    table = open_table(cfg.sql, args.job, INTERACTIVE_PATIENCE)
    table.require()  # only ever drops a job table of this tool
    total = table.total()
    running = table.live_running(cfg.run.lease)
    if running and not args.force:
        raise BadInput(f"job '{args.job}': {running} obsids are running under live leases; nothing dropped. Stop "
                       f"their workers first (or wait), or use --force: their HIPEs would be orphaned of a table")
    if not args.yes:
        if not sys.stdin.isatty():
            raise BadInput(f"wipe drops job '{args.job}' ({total} obsids): confirm with --yes")
        answer = input(f"Drop job '{args.job}' ({total} obsids) and its history from {cfg.sql.describe()}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing dropped")
            return 1
    table.drop()
    print(f"job {args.job} dropped ({total} obsids); its folder {cfg.job_dir(args.job)} was left as it is")
    if running:
        print(f"{running} obsids were running under live leases: their HIPEs are orphaned of a table; their "
              "workers stop them at their next heartbeat, or their guardians when the lease runs short")
    return 0


COMMANDS = {"new": cmd_new, "reset": cmd_reset, "run": cmd_run, "status": cmd_status, "wipe": cmd_wipe}
