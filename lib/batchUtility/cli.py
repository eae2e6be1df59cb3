"""The command line, `BatchProcess.py JOB new [FILE] | reset | run | status | history | report |
results | wipe`: a thin layer over config, storage and worker, which tests call directly."""
import argparse
import datetime
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from . import __version__, config, rank_status, report, results, signals, workdir
from .errors import BadInput, BatchError
from .frontend import COMMAND, EXIT_STATUSES, job_exit_status, node_line, print_status, say_error, status_block
from .model import DONE, INTERACTIVE_PATIENCE, PENDING, RUNNING, check_identifier, printable
from .obsids import MAX_OBSID, WHAT_AN_OBSID_IS, read_obsids
from .procfs import process_gone
from .slot import current_slot, host_name
from .storage import DEFAULT_CALL_TIMEOUT, JobTable, open_table

# Imported by the commands that use them (local, worker: `run`; timeline: `report`), not by every
# command: `status` on a big job is asked often and should answer at once (tests/bench/RESULTS.md).

PROG = COMMAND
WATCH_EVERY = 5.0   # seconds between redraws of `status --watch`
# A command a person waits for gives a server that does not answer (frozen, a network dropping
# packets) INTERACTIVE_PATIENCE in all: each call (connecting, a query) may block INTERACTIVE_CALL,
# and the calls are retried for the rest, so that the last one ends within INTERACTIVE_PATIENCE.
INTERACTIVE_CALL = 3.0
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\Z")
_DURATION_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="batch.cfg to use (else $HIPE_BATCH_CONFIG, $HIPE_BATCH_ROOT/batch.cfg, "
                             "$HIPE_BATCH_ROOT/bin/batch.cfg)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log more: also each SQL statement's time and each claim")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="print nothing unless something needs a person (a failed obsid, an error)")

    parser = argparse.ArgumentParser(prog=PROG, parents=[common], epilog=EXIT_STATUSES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Run a HIPE job script over many obsids, tracked in SQL.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("job", metavar="JOB", help="the job's name: its table, and its folder jobs/JOB")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    new = commands.add_parser("new", parents=[common], help="create the job from the master table, or from FILE")
    new.add_argument("file", metavar="FILE", nargs="?", help="obsids, one a line (first CSV column); - for standard input")
    new.add_argument("--add", action="store_true", help="the job may exist: add only obsids not yet in it")

    reset = commands.add_parser("reset", parents=[common], help="put obsids back to pending")
    which = reset.add_mutually_exclusive_group()
    which.add_argument("--failed", action="store_true", help="only failed obsids")
    which.add_argument("--stale", action="store_true",
                       help="only obsids of lost workers (this host's: process gone; others: lease ran out)")
    which.add_argument("--obsids", metavar="FILE", help="only the obsids listed in FILE (- for standard input)")

    reset.add_argument("--yes", action="store_true", help="do not ask before putting done obsids back")

    run = commands.add_parser("run", parents=[common], help="process pending obsids until none is left",
                              epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("-j", "--jobs", type=_positive_int, metavar="N",
                     help="N workers on this host (at most N per host: only the missing ones are started)")
    run.add_argument("--max-time", type=_duration_argument, metavar="DURATION",
                     help="stop claiming obsids after this long (90m, 8h, 45s, 2d); running ones finish")

    status = commands.add_parser("status", parents=[common], help="how far the job is")
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.add_argument("--hosts", action="store_true", help="also per host: done, failed, busy time")
    status.add_argument("--failures", type=int, default=10, metavar="N", help="list the first N failed obsids")
    status.add_argument("--obsid", type=int, metavar="OBSID",
                        help="one obsid's state and every attempt at it: when, where, exit, signal, reason")
    status.add_argument("--running", action="store_true",
                        help="one line per running obsid: host, slot, pid, elapsed, expected, heartbeat age")
    status.add_argument("--watch", type=float, nargs="?", const=WATCH_EVERY, metavar="SECONDS",
                        help=f"redraw every SECONDS (default {WATCH_EVERY:g}) until nothing is pending or running")

    history = commands.add_parser("history", parents=[common], help="every attempt: where, when, how long, how it ended")
    form = history.add_mutually_exclusive_group()
    form.add_argument("--csv", action="store_true", help="CSV with a header (columns as GNU parallel's --joblog)")
    form.add_argument("--json", action="store_true", help="a JSON array")
    history.add_argument("--since", metavar="TIME",
                         help="only attempts started since TIME: 2026-11-26 14:00, an epoch, or '2 hours ago'")

    page = commands.add_parser("report", parents=[common], help="a self-contained HTML page of the run, with a timeline")
    page.add_argument("file", metavar="FILE.html", nargs="?", help="the page to write")
    page.add_argument("--svg", metavar="FILE.svg", help="also (or only) the timeline alone, as SVG")

    found = commands.add_parser("results", parents=[common], help="what scripts recorded with batchResult: "
                                "one row per done obsid, one column per name")
    found.add_argument("--csv", metavar="FILE", help="write CSV to FILE instead of standard output")

    wipe = commands.add_parser("wipe", parents=[common], help="drop the job's table (not its files)")
    wipe.add_argument("--yes", action="store_true", help="do not ask")
    wipe.add_argument("--force", action="store_true",
                      help="drop the job even while obsids run under live leases (their HIPEs run on, orphaned)")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def duration(text: str) -> float:
    """Seconds in a duration such as 90m, 8h, 45s, 2d or 30 (seconds); ValueError if it is none."""
    match = _DURATION.match(text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(text)
    return float(match.group(1)) * _DURATION_UNIT[match.group(2)]


def _duration_argument(text: str) -> float:
    try:
        return duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90m, 8h, 45s or 2d") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command; a reader of its output that went away (`status | head`, `--help | head -1`)
    is not an error and gets no traceback, buffered or not (PYTHONUNBUFFERED)."""
    token = rank_status.take()   # a rank of BatchProcess_mpi.sh tells it its 2, 3 or 4 at the end
    try:
        status = _main(argv)
        sys.stdout.flush()   # here, not at exit, where a closed pipe would be reported
        return rank_status.tell(status, token)
    except BrokenPipeError:
        _reader_gone()
        return 0
    except SystemExit:   # argparse's --help, --version and usage errors: what they printed, flushed here
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _reader_gone()
        raise


def _reader_gone() -> None:
    """Standard output's reader is gone: what is left goes nowhere, rather than into a second
    BrokenPipeError when Python flushes standard output at exit."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.quiet = getattr(args, "quiet", False)
    _setup_logging(getattr(args, "verbose", False), args.quiet)
    if args.command != "run":
        _stops_as_python_does()
    try:
        check_identifier(args.job)
        cfg = config.load(getattr(args, "config", None))
        return COMMANDS[args.command](cfg, args)
    except BatchError as e:
        return say_error(PROG, e)
    except KeyboardInterrupt:   # after the command's own clean-up (`new` drops a table it made half-way)
        print(signals.stop_line(signal.SIGINT), file=sys.stderr)
        return 130


def _stops_as_python_does() -> None:
    """`run` keeps answering stops at once (signals) until its workers set their own handlers (before any claim).
    The other commands clean up on KeyboardInterrupt, so Ctrl-C raises it again; SIGTERM and SIGHUP
    end them as they did."""
    for s, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL),
                       (signal.SIGHUP, signal.SIG_DFL)):
        if signals.answers_stops(s):
            signal.signal(s, default)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def _interactive(cfg: config.Config, job: str, create: bool = False, long_writes: bool = False,
                 say_node: bool = True) -> JobTable:
    """The job's table for a command a person waits for: a server that does not answer is given up
    on within INTERACTIVE_PATIENCE (DatabaseUnavailable: one line, exit 3), not after a call's 60 s.

    long_writes (new, reset, wipe): one of their statements may change a million rows, which takes
    longer than INTERACTIVE_CALL; once the server has answered within it, their calls may take
    as long as any command's (DEFAULT_CALL_TIMEOUT)."""
    # Each connect waits at most the patience left (Engine._transaction), so the last ends within it.
    table = open_table(cfg.sql, job, INTERACTIVE_PATIENCE, create=create, call_timeout=INTERACTIVE_CALL)   # connects
    if long_writes:
        table.close()
        table = open_table(cfg.sql, job, INTERACTIVE_PATIENCE, create=create, call_timeout=DEFAULT_CALL_TIMEOUT)
    _say_node(table, say_node)
    return table


def _say_node(table: JobTable, say: bool = True) -> None:
    """Which node of a host list answered, on stderr (-q leaves it out): every command says it."""
    line = node_line(table) if say else None
    if line:
        logging.getLogger(PROG).info(line)


def cmd_new(cfg: config.Config, args: argparse.Namespace) -> int:
    obsids = read_obsids(args.file) if args.file else None   # the whole file is checked first
    if obsids == [] and not args.add:   # a job with nothing in it: `run` would exit 0 having done nothing
        raise BadInput(f"{args.file}: no obsid in it (only blank lines, comments or a header); nothing was created")
    if obsids is None and not cfg.sql.table:
        raise BadInput(f"{cfg.path}: [sql] table is missing: `new` without FILE takes every obsid of that master table")
    table = _interactive(cfg, args.job, create=True, long_writes=True)
    existed = args.add and table.exists()   # without --add, create() refuses an existing job
    added = table.create(obsids, cfg.sql.table, add=args.add)
    try:
        template = _make_job_dir(cfg, args.job)
    except OSError as e:
        if not existed:
            table.drop()
        raise BadInput(f"cannot create {cfg.job_dir(args.job)}: {e.strerror}; job not created") from None
    _say(args, f"job {args.job}: {_obsids(added)} added, {table.total()} in all, in {cfg.sql.describe()}")
    _say(args, f"template: {template}")
    return 0


def _obsids(n: int) -> str:
    """'1 obsid', '3 obsids'."""
    return f"{n} obsid" if n == 1 else f"{n} obsids"


def _are(n: int) -> str:
    return "is" if n == 1 else "are"


def _say(args: argparse.Namespace, line: str) -> None:
    """A line that tells how things went, which -q leaves out."""
    if not args.quiet:
        print(line)


def _make_job_dir(cfg: config.Config, job: str) -> Path:
    """jobs/JOB/log, jobs/JOB/output, and the template jobs/JOB/JOB.py copied from the example if absent."""
    job_dir = cfg.job_dir(job)
    for sub in ("log", "output"):
        (job_dir / sub).mkdir(parents=True, exist_ok=True)
    template = job_dir / f"{job}.py"
    if not os.path.lexists(template):   # anything there, a link included, is the user's
        for example in (cfg.root / "jobs" / "example" / "example.py",
                        config.share_dir() / "jobs" / "example" / "example.py"):
            if example.is_file():
                _copy_example(example, template)
                break
        else:
            logging.warning("no example template found: write the job's HIPE script to %s", template)
    return template


def _copy_example(example: Path, template: Path) -> None:
    """The example copied to template (made new: nothing followed), with the example's own date: the
    text is as old as the example, and a worker runs a template at once only once it has settled."""
    try:
        fd = workdir.open_to_write(template)
        with open(fd, "wb") as f:
            f.write(example.read_bytes())
        st = example.stat()
        os.utime(template, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    except OSError as e:
        raise BadInput(f"cannot write the template {template}: {e.strerror}") from None


def cmd_reset(cfg: config.Config, args: argparse.Namespace) -> int:
    obsids = read_obsids(args.obsids) if args.obsids else None
    table = _interactive(cfg, args.job, long_writes=True)
    table.require()
    # Workers of this machine (host name, boot id and PID namespace) whose process is gone are known
    # dead: their obsids are not "running".
    dead_here = table.reclaim_dead_here(host_name(os.environ), process_gone, cfg.run.max_attempts)
    if args.stale:
        lost = _reclaim_watched(table, cfg, args)
        _say(args, f"{_obsids(len(dead_here) + len(lost))} of lost workers taken back: {len(dead_here)} at once (a worker "
                   f"of this machine whose process is gone), {len(lost)} whose heartbeat stood still for their "
                   "whole lease while this command watched")
        return 0
    if not args.failed and obsids is None and not args.yes and not _confirm_putting_done_back(table, args.job):
        print("nothing reset")   # the person answered no: as asked, not an error (exit 0)
        return 0
    changed, running = table.reset(cfg.run.lease, only_failed=args.failed, obsids=obsids)
    _say(args, f"{_obsids(changed)} reset to pending")
    if running:
        _say(args, f"{_obsids(running)} {_are(running)} running under live workers and left alone")
    lapsed, _ = table.lapsed(cfg.run.lease)
    if lapsed:
        _say(args, f"{_obsids(lapsed)} {_are(lapsed)} running with their lease over by the database's clock and were left alone: "
                   "`reset --stale` takes back those of lost workers")
    return 0


def _reclaim_watched(table: JobTable, cfg: config.Config, args: argparse.Namespace) -> list:
    """`reset --stale`'s take-back of claims of other machines: only when the database's clock says
    some lease ran out (a hint, never evidence: clocks step), it watches the running claims for the
    longest of those leases by its own monotonic clock, saying so on standard error, and takes back
    those whose heartbeat stood still all that time (JobTable.reclaim_stale). Ctrl-C while it
    watches changes nothing."""
    lapsed, longest = table.lapsed(cfg.run.lease)
    if not lapsed:
        return []
    table.reclaim_stale(cfg.run.lease, cfg.run.max_attempts)   # the first look
    if not args.quiet:
        looks = f"{lapsed} running obsid looks" if lapsed == 1 else f"{lapsed} running obsids look"
        print(f"{looks} lost by the database's clock: watching their heartbeats for one lease "
              f"({longest:g} s) before taking back those that stay still (Ctrl-C leaves them alone)", file=sys.stderr)
    watched_until = time.monotonic() + longest
    while time.monotonic() < watched_until:
        time.sleep(min(1.0, max(0.0, watched_until - time.monotonic())))
    return table.reclaim_stale(cfg.run.lease, cfg.run.max_attempts)


def _confirm_putting_done_back(table: JobTable, job: str) -> bool:
    """A plain reset puts done obsids back to pending, where they will run again: ask first.
    Whether to go on (BadInput without a terminal to ask on)."""
    done = table.counts()[DONE]
    if not done:
        return True
    question = f"reset puts {_obsids(done).replace('obsid', 'done obsid')} of job '{job}' back to pending, to be run again"
    if not sys.stdin.isatty():
        raise BadInput(f"{question}: confirm with --yes (or reset only --failed ones)")
    return input(f"{question}. Go on? [y/N] ").strip().lower() in ("y", "yes")


def cmd_run(cfg: config.Config, args: argparse.Namespace) -> int:
    """The worker's own status (2, 3, 128+N) when it ended abnormally, else the job's: 0 every obsid done, else 1."""
    from .local import LocalRun
    from .worker import Worker
    options = {"quiet": args.quiet, "max_time": args.max_time}
    if args.jobs:
        return LocalRun(cfg, args.job, args.jobs, quiet=args.quiet, worker_options=options).run()
    from .mpi_host import HostRun, host_share
    share = host_share(os.environ)   # started by BatchProcess_mpi.sh once for this host's slots
    if share is not None:
        return HostRun(cfg, args.job, share, quiet=args.quiet, worker_options=options).run()
    slot = current_slot()
    table = open_table(cfg.sql, args.job, cfg.run.db_patience, call_timeout=cfg.run.call_timeout)
    table.require()
    _say_node(table)
    status = Worker(cfg, table, args.job, slot, **options).run()
    if status not in (0, 1):
        return status
    return job_exit_status(table.counts())


def cmd_status(cfg: config.Config, args: argparse.Namespace) -> int:
    if args.watch is not None and args.obsid is None and not args.running:
        return _watch(cfg, args)
    # The status block names the node itself; --obsid and --running have it on stderr.
    table = _interactive(cfg, args.job, say_node=args.obsid is not None or args.running)
    table.require()
    if args.obsid is not None:  # one obsid and its attempt history
        if not 0 < args.obsid <= MAX_OBSID:   # also keeps huge numbers away from the driver
            raise BadInput(f"--obsid {args.obsid}: not an obsid ({WHAT_AN_OBSID_IS})")
        row = table.row(args.obsid)
        if row is None:
            raise BadInput(f"obsid {args.obsid} is not in job '{args.job}'")
        history = table.history(args.obsid)
        print(report.obsid_json(row, history) if args.json else report.obsid_text(row, history))
        if history and not args.json:   # no attempt, no logs
            log = cfg.job_dir(args.job) / "log" / str(args.obsid)
            print(f"  logs: {log}.stdout  {log}.stderr" + ("  (earlier attempts: .1, .2, ...)"
                                                          if Path(f"{log}.stderr.1").exists() else ""))
        return 0
    if args.running:
        figures = table.pace_figures(report.RATE_WINDOW, report.WORKERS_WINDOW, census=False)
        rows = [{**r, "expected": report.expected_now(figures, r["expected"])} for r in figures["running"]]
        print(report.running_text(rows, figures["now"], cfg.run.heartbeat, cfg.run.lease))
        return 0
    print_status(table, args.job, args.failures, args.hosts, args.json)
    return 0


def _watch(cfg: config.Config, args: argparse.Namespace) -> int:
    """Redraw the status every args.watch seconds until nothing is pending or running; in place on
    a terminal (ANSI: cursor up, clear), as plain blocks one after the other elsewhere.

    The watch runs in a thread of its own while this one waits for it, so that Ctrl-C is answered
    at once even while a frozen server holds a call in the driver (for up to INTERACTIVE_CALL;
    Python answers a signal only between its own steps, and only in the main thread)."""
    if not args.watch > 0:
        raise BadInput(f"--watch {args.watch:g}: give a number of seconds above 0")
    # Ctrl-C ends a watch whatever the parent left: a script's background job starts with SIGINT
    # ignored, and Python then raises no KeyboardInterrupt (workers set their handlers likewise).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ended: dict = {}

    def watch():
        try:
            ended["status"] = _watch_loop(cfg, args)
        except BaseException as e:   # raised again in the main thread
            ended["error"] = e

    thread = threading.Thread(target=watch, name="status --watch", daemon=True)   # left behind at Ctrl-C
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        sys.stdout.flush()
        return 130
    if "error" in ended:
        raise ended["error"]
    return ended["status"]


def _watch_loop(cfg: config.Config, args: argparse.Namespace) -> int:
    table = _interactive(cfg, args.job)   # in the watch's thread: SQLite's connection stays in its thread
    table.require()
    terminal = sys.stdout.isatty()
    drawn = 0
    while True:
        text, counts = status_block(table, args.job, args.failures, args.hosts)
        if terminal:
            width = shutil.get_terminal_size().columns - 1   # no line may wrap, or the redraw drifts
            text = "\n".join(report.fit_line(line, width) for line in text.splitlines())
            sys.stdout.write((f"\x1b[{drawn}F\x1b[J" if drawn else "") + text + "\n")
        else:
            sys.stdout.write(("\n" if drawn else "") + text + "\n")
        sys.stdout.flush()
        drawn = text.count("\n") + 1
        if counts[PENDING] + counts[RUNNING] == 0:
            return 0
        time.sleep(args.watch)


def cmd_history(cfg: config.Config, args: argparse.Namespace) -> int:
    table = _interactive(cfg, args.job)
    table.require()
    since = parse_since(args.since, table.clock) if args.since else None
    if args.csv or args.json:
        write = report.write_history_csv if args.csv else report.write_history_json
        return _to_stdout(lambda: write(table.iter_history(since), sys.stdout))
    return _to_stdout(lambda: report.history_text(table.iter_history(since), sys.stdout, quiet=args.quiet))


def _to_stdout(write) -> int:
    """Run write(); a reader that went away (`| head`) is not an error."""
    try:
        write()
        sys.stdout.flush()
    except BrokenPipeError:
        _reader_gone()
    return 0


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?)(?:\s+ago)?\Z")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, clock) -> float:
    """--since TIME as epoch seconds: an epoch, a local date and time (ISO), or 'N minutes/hours/days ago'
    (counted back from clock(), the database's)."""
    value = text.strip().lower()
    if re.fullmatch(r"\d{9,}(\.\d+)?", value):
        return float(value)
    relative = _RELATIVE.match(value)
    if relative:
        return clock() - float(relative.group(1)) * _UNIT[relative.group(2)[0]]
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise BadInput(f"--since {text!r}: not a time (give e.g. '2026-11-26 14:00', '90 min ago', "
                       "or epoch seconds)") from None


def cmd_report(cfg: config.Config, args: argparse.Namespace) -> int:
    if not args.file and not args.svg:
        raise BadInput("report: give the page to write (FILE.html), --svg FILE.svg, or both")
    from . import timeline
    table = _interactive(cfg, args.job)
    table.require()
    now, running = table.running()
    attempts = list(table.iter_history()) + [{**r, "ended": None, "outcome": RUNNING, "exit_code": None,
                                             "signal_no": None, "reason": ""} for r in running]
    written = []
    if args.svg:
        written.append(_write(args.svg, timeline.standalone_svg(attempts, now, args.job)))
    if args.file:
        block, counts = status_block(table, args.job, failures=0)   # the page lists every failed obsid below
        if not counts[RUNNING]:   # nothing running: an ETA on an archived page would only mislead
            block = "\n".join(line for line in block.splitlines() if not line.startswith("  ETA"))
        page = timeline.page(args.job, block, table.by_host(), table.failures(10_000), attempts, now,
                             cfg.job_dir(args.job) / "log", page_dir=Path(args.file).resolve().parent,
                             finished=counts[PENDING] + counts[RUNNING] == 0)
        written.append(_write(args.file, page))
    _say(args, f"{len(attempts)} attempt{'' if len(attempts) == 1 else 's'} drawn: {', '.join(written)}")
    return 0


def _write(path: str, text: str) -> str:
    """Write the report's page or SVG (workdir.open_to_write): a link, a FIFO or anything but a regular
    file at path is refused with one line, and what it points to is left untouched."""
    try:
        with open(workdir.open_to_write(Path(path)), "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror}") from None
    return path


def cmd_results(cfg: config.Config, args: argparse.Namespace) -> int:
    table = _interactive(cfg, args.job)
    table.require()
    names = table.result_names()
    rows = ((r["obsid"], r["name"], r["value"]) for r in table.iter_results())
    if not args.csv:   # a terminal's: a script's string must not drive it (a FILE keeps values as recorded)
        shown = ((obsid, name, None if value is None else printable(value)) for obsid, name, value in rows)
        return _to_stdout(lambda: results.write_table(names, shown, sys.stdout))
    try:
        # As the report's files (_write): a link, a FIFO or anything but a regular file is refused.
        with open(workdir.open_to_write(Path(args.csv)), "w", encoding="utf-8", newline="") as out:
            count = results.write_table(names, rows, out)
    except OSError as e:
        raise BadInput(f"cannot write {args.csv}: {e.strerror}") from None
    _say(args, f"{count} done obsid{'' if count == 1 else 's'}, {len(names)} result name{'' if len(names) == 1 else 's'}, "
               f"written to {args.csv}")
    return 0


def cmd_wipe(cfg: config.Config, args: argparse.Namespace) -> int:
    table = _interactive(cfg, args.job, long_writes=True)
    table.require()  # only ever drops a job table of this tool
    total = table.total()
    # Every running obsid counts, whatever the clocks say of its lease: a database clock stepped forward
    # makes live leases look lapsed (on SQLite, this very process's clock), and the workers would lose
    # their table under them. Those of lost workers go back by `reset --stale`, which watches them.
    running = table.counts()[RUNNING]
    if running and not args.force:
        lapsed = total_lapsed(table, cfg.run.lease)
        hint = f" ({lapsed} of them look lost: `reset --stale` takes those back)" if lapsed else ""
        raise BadInput(f"job '{args.job}': {_obsids(running)} {_are(running)} running under live leases or lost "
                       f"ones{hint}; nothing dropped. Stop their workers first (or wait), or use --force: their "
                       "HIPEs would be orphaned of a table")
    if not args.yes:
        if not sys.stdin.isatty():
            raise BadInput(f"wipe drops job '{args.job}' ({_obsids(total)}): confirm with --yes")
        answer = input(f"Drop job '{args.job}' ({_obsids(total)}) and its history from {cfg.sql.describe()}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing dropped")   # as the person asked: information, exit 0
            return 0
    table.drop()
    _say(args, f"job {args.job} dropped ({_obsids(total)}); its folder {cfg.job_dir(args.job)} was left as it is")
    if running:   # a person may want to know, -q or not
        were = "was" if running == 1 else "were"
        print(f"{_obsids(running)} {were} running: their HIPEs are orphaned of a table; their live "
              "workers stop them at their next heartbeat, or their guardians when the lease runs short", file=sys.stderr)
    return 0


def total_lapsed(table, lease: float) -> int:
    """How many running obsids look lost by the database's clock: a hint for the refusal's line only."""
    try:
        return table.lapsed(lease)[0]
    except BatchError:
        return 0


COMMANDS = {"new": cmd_new, "reset": cmd_reset, "run": cmd_run, "status": cmd_status, "history": cmd_history,
            "report": cmd_report, "results": cmd_results, "wipe": cmd_wipe}
