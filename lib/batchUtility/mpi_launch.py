"""The MPI launcher behind bin/BatchProcess_mpi.sh: checks, mpirun's command line, and one loop that
supervises mpirun (stop signals, a lost host) until it ends, then the job-wide summary.

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
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from . import config, hostfile, mpirun_output, signals, worker
from .errors import BadInput, BatchError
from .frontend import exit_status_of, job_summary, say_error, summary_heading
from .model import INTERACTIVE_PATIENCE, PENDING, RUNNING, check_identifier
from .procfs import has_children, process_state
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
bad input (nothing started); 3 when the database stayed away; mpirun's status when mpirun itself
failed; 128+N after signal N.
"""
REPEAT = 2.0       # seconds between SIGUSR2s to mpirun once stopping (see Stop)
WATCH_POLL = 5.0   # seconds between looks at the job table for a lost host (see LostHostWatch)
TICK = 0.2         # the supervising loop's longest nap: how late a stop signal is passed on at most
END_PATIENCE = 15.0  # seconds an mpirun that outlived its job gets after SIGTERM, then after SIGKILL
HUNG_AFTER = 10.0  # seconds a stopping mpirun with no process left under it gets, then SIGKILL (see HangWatch)
STOP_DEADLINE = 60.0  # seconds a stopping mpirun gets to end at all, then it is ended (see HangWatch)


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
    if sql.socket:
        return True
    host = sql.host.strip("[]")
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
    finally:
        table.close()
    worker.check_ready(cfg, job)
    if importlib.util.find_spec("mpi4py") is None:
        logging.warning("mpi4py is not installed for %s: each worker takes its rank and size from "
                        "Open MPI's environment instead", sys.executable)
    if not quiet:
        print(f"{PROG}: hostfile {path}: {hostfile.describe(hosts)}", file=sys.stderr)
    return path


# --------------------------------------------------------------------------- mpirun's command line
def mpirun_command(mpirun: str, path: Path, options: Options) -> List[str]:
    opts = ["--hostfile", str(path)]
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
    names = ["PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV"] + sorted(n for n in os.environ if n.startswith("HIPE_"))
    for name in names:
        if name in os.environ:
            opts += ["-x", name]
    # The checkout's bin/BatchProcess.py, or the copy `pip install` put in share/hipe-batch/bin.
    return [mpirun, *opts, *options.extra, sys.executable, str(config.share_dir() / "bin" / "BatchProcess.py"),
            options.job, "run", *(["-v"] if options.verbose else []), *(["-q"] if options.quiet else [])]


# --------------------------------------------------------------------------- supervising mpirun
class Stop:
    """What SIGTERM, SIGINT and SIGHUP do, caught from the start so that no stop is lost.

    mpirun cannot pass SIGTERM or SIGINT on: on either it kills the ranks itself (SIGKILL one
    second later, too soon for them to put their obsids back), and ess_base_forward_signals
    refuses SIGTERM. So mpirun runs in a process group of its own (a Ctrl-C in the terminal
    reaches the launcher only), and the launcher turns TERM, INT and HUP into SIGUSR2 to mpirun,
    which mpirun forwards to every rank on every host; the worker treats SIGUSR2 as it treats
    SIGTERM. A stop that comes before mpirun is being started means mpirun never starts.

    The handler only takes note (and says so with one os.write, which cannot collide with a print
    it interrupted): the supervising loop does the signalling, so that no Popen method is ever
    entered twice at once.
    """

    def __init__(self):
        self.status = 0           # 128+N once stop signal N came (the last one counts)
        self.launching = False    # from just before mpirun is started: stop it rather than exit
        self.caught = ()          # the stop signals handled here (not those ignored when the launcher started)

    def install(self):
        self.caught = tuple(signals.catch(self._on_signal))   # nohup's SIGHUP stays ignored
        # bin/BatchProcess_mpi.sh holds these signals back while Python starts: one that came
        # meanwhile is delivered now, to the handler. (Unblocked before any child inherits the mask.)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals.STOP_SIGNALS)

    def uninstall(self):
        # As the shell's `trap - TERM INT HUP`: from here on a stop signal ends the launcher at once.
        for sig in self.caught:
            signal.signal(sig, signal.SIG_DFL)

    def _on_signal(self, signum, frame):
        self.status = 128 + signum
        name = signal.Signals(signum).name
        if not self.launching:
            _say(f"{PROG}: {name}: stopped before any worker was started")
            raise SystemExit(self.status)
        _say(f"{PROG}: {name}: every worker puts its running obsid back to pending and stops")


def _say(line: str) -> None:
    os.write(sys.stderr.fileno(), (line + "\n").encode(errors="replace"))


class LostHostWatch:
    """Ends an mpirun that outlives its job.

    Open MPI 4.1 with --enable-recovery lets the other ranks run on when a host is lost (its daemon
    killed or cut off), but mpirun then waits for that host's ranks for good, even once the other
    ranks have finished the job. So once the job has had nothing pending or running for `grace`
    seconds (the workers leave within seconds of that) and mpirun is still there, it is ended.
    """

    def __init__(self, sql, job: str, grace: float, call_timeout: float):
        self.sql, self.job, self.grace, self.call_timeout = sql, job, grace, call_timeout
        self.table = None
        self.idle_since: Optional[float] = None
        self.next_look = time.monotonic()

    def outlived(self, now: float) -> bool:
        """Whether mpirun has outlived the job by `grace` seconds; looks at the table every WATCH_POLL s."""
        if now < self.next_look:
            return False
        self.next_look = now + WATCH_POLL
        counts = self._counts()
        if counts is None or counts[PENDING] or counts[RUNNING]:
            self.idle_since = None
            return False
        self.idle_since = now if self.idle_since is None else self.idle_since
        return now - self.idle_since >= self.grace

    def _counts(self):
        # One try a look (patience 0), never the retry loop: the supervising loop must not sit in a
        # database outage while a stop signal waits to be passed on. The database away is no reason
        # to end mpirun: the workers wait for it.
        try:
            if self.table is None:
                self.table = open_table(self.sql, self.job, 0.0, call_timeout=self.call_timeout)
            return self.table.counts()
        except BatchError as e:
            logging.debug("lost-host watch: %s", e)
            self.close()
            return None

    def close(self):
        if self.table is not None:
            self.table.close()
            self.table = None


class HangWatch:
    """Ends an mpirun that hangs once stopping.

    Open MPI 4.1's mpirun can deadlock for good when a rank dies while it connects to mpirun's PMIx
    server (in MPI_Init): SIGUSR2 kills a rank that has no handler yet, so a stop that comes while
    the ranks start can do that. Seen: mpirun's main thread waits in the PMIx server's
    deregister_client while the PMIx thread waits for a lock, with no rank left ("PMIX ERROR:
    UNREACHABLE in ptl_base_connection_hdlr.c"); mpirun then ignores every signal but SIGKILL. So a
    stopping mpirun with no process left under it for HUNG_AFTER s is killed (nothing of it is left
    to orphan), and one still there STOP_DEADLINE s after the stop is ended as `end` does (the
    workers have long had time to put their obsids back: a HIPE stop and a database wait).
    """

    def __init__(self, mpirun: subprocess.Popen):
        self.mpirun = mpirun
        self.stopping_since: Optional[float] = None
        self.childless_since: Optional[float] = None

    def hung(self, now: float) -> Optional[str]:
        """Why mpirun is to be ended now, else None; called every REPEAT s once stopping."""
        self.stopping_since = now if self.stopping_since is None else self.stopping_since
        if now - self.stopping_since >= STOP_DEADLINE:
            return f"still running {STOP_DEADLINE:g} s after the stop"
        if has_children(self.mpirun.pid):
            self.childless_since = None
            return None
        self.childless_since = now if self.childless_since is None else self.childless_since
        if now - self.childless_since >= HUNG_AFTER:
            return f"has had no worker left for {HUNG_AFTER:g} s yet does not end (Open MPI hangs so at times)"
        return None


def _frozen_childless(mpirun: subprocess.Popen) -> bool:
    """Whether mpirun, stopped (SIGSTOP: it cannot start a rank meanwhile), has no child: then
    SIGKILL orphans nothing. Else it is let go on (SIGCONT)."""
    if mpirun.poll() is not None:
        return True  # gone and reaped: its pid may be another process's by now
    mpirun.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and process_state(mpirun.pid)[0] not in ("T", "Z", None):
        time.sleep(0.01)
    if process_state(mpirun.pid)[0] == "T" and not has_children(mpirun.pid):
        return True
    mpirun.send_signal(signal.SIGCONT)
    return False


def _own_process_group() -> dict:
    # mpirun gets a process group of its own (as `set -m` gave it in the shell): a Ctrl-C in the
    # terminal goes to the launcher's group only, and the launcher decides what mpirun gets.
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}  # the launcher has no threads, so preexec_fn is safe here


def supervise(mpirun: subprocess.Popen, watch: LostHostWatch, stop: Stop) -> int:
    """Wait for mpirun, passing stop signals on and ending it if it outlives the job; its status
    (0 when the launcher ended it because the job itself was finished)."""
    job, grace = watch.job, watch.grace
    hang = HangWatch(mpirun)
    next_usr2 = None  # when SIGUSR2 is due (again), once stopping
    try:
        while mpirun.poll() is None:
            now = time.monotonic()
            if stop.status and (next_usr2 is None or now >= next_usr2):
                why = hang.hung(now)
                if why:
                    print(f"{PROG}: mpirun {why}: ending it", file=sys.stderr, flush=True)
                    end(mpirun, term=not _frozen_childless(mpirun))
                    break
                # Ranks still starting have no handler yet (SIGUSR2 ends them before they claim
                # anything) or do not exist yet (mpirun forwards a signal only to the ranks it has
                # started): so the signal is repeated every REPEAT s until mpirun ends, and no rank
                # goes on to run the job.
                mpirun.send_signal(signal.SIGUSR2)
                next_usr2 = now + REPEAT
            elif not stop.status and watch.outlived(now):
                print(f"{PROG}: job {job} has nothing left to run, yet mpirun still waits {grace:g} s later "
                      "for workers that are gone (a lost host?): ending mpirun", file=sys.stderr, flush=True)
                end(mpirun)
                return 0
            try:
                mpirun.wait(timeout=TICK)
            except subprocess.TimeoutExpired:
                pass
    finally:
        watch.close()
    return exit_status_of(mpirun.returncode)


def end(mpirun: subprocess.Popen, term: bool = True) -> None:
    """SIGTERM (unless term is false), then SIGKILL, END_PATIENCE s apart; returns once mpirun is
    gone (reaped)."""
    for send in (mpirun.terminate, mpirun.kill)[0 if term else 1:]:
        send()  # a no-op once Popen has reaped mpirun: never a signal to a reused pid
        try:
            mpirun.wait(timeout=END_PATIENCE)
            return
        except subprocess.TimeoutExpired:
            continue
    mpirun.wait()  # SIGKILL always ends it in the end; no zombie left behind


def stop_and_wait(mpirun: subprocess.Popen) -> None:
    """Stop the workers as a stop signal would and wait for mpirun: for when the launcher itself
    fails while mpirun runs, which must not leave mpirun and the ranks running unsupervised."""
    while mpirun.poll() is None:
        mpirun.send_signal(signal.SIGUSR2)
        try:
            mpirun.wait(timeout=REPEAT)
        except subprocess.TimeoutExpired:
            pass


def run_mpirun(command: List[str], watch: LostHostWatch, stop: Stop) -> int:
    """Start mpirun and supervise it to its end; mpirun's status as supervise() gives it."""
    stop.launching = True  # from here on a stop signal stops the workers: mpirun is (being) started
    try:
        mpirun = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, **_own_process_group())
    except OSError as e:  # as the shell had it: mpirun's status is 127 (not found) or 126 (not runnable)
        print(f"{PROG}: {command[0]}: {e.strerror}", file=sys.stderr, flush=True)
        return 127 if isinstance(e, FileNotFoundError) else 126
    # mpirun's stdout (the ranks' obsid and SUMMARY lines) goes straight to ours; its stderr through
    # a filter of Open MPI's noise (see mpirun_output).
    relay = None
    try:
        relay = mpirun_output.Relay(mpirun.stderr, sys.stderr.fileno(), lambda: bool(stop.status))   # a thread: may fail to start
        # A stop that came while mpirun was being started is passed on at supervise's first turn.
        return supervise(mpirun, watch, stop)
    except BaseException:
        stop_and_wait(mpirun)
        raise
    finally:
        if relay is not None:
            relay.close()


# --------------------------------------------------------------------------- the end
def finish(cfg, job: str, status: int, stop: Stop, quiet: bool = False) -> int:
    """The job-wide summary, then the launcher's exit status (see USAGE). Each database call is
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
    return done


def launch(argv: List[str]) -> int:
    stop = Stop()
    stop.install()
    options = parse_args(argv)
    if options.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    prepare_environment(options)
    mpirun = find_mpirun()
    grace = grace_seconds()
    cfg = config.load(None)  # --config reaches it (and every rank) as $HIPE_BATCH_CONFIG
    command = mpirun_command(mpirun, check(cfg, options.job, options.hostfile, options.quiet), options)
    if options.dry_run:
        print(shlex.join(command))
        return 0
    status = run_mpirun(command, LostHostWatch(cfg.sql, options.job, grace, cfg.run.call_timeout), stop)
    stop.uninstall()
    return finish(cfg, options.job, status, stop, options.quiet)


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
