"""Launching HIPE for one obsid: the temporary script, the command line, the wait, and the verdict.
The worker's folder, the pool cache in it and the disk checks are workdir's.

HIPE can exit 0 after its script raised, so success needs two things: exit status 0, and a marker
file that a line appended to the script writes when the script has run to its last line. The
same file is made, empty, once the template has compiled, before its first line runs: a launch
that failed without it, on a SyntaxError or IndentationError, ran a template that cannot run
(`Outcome.template_broken`), and the launch's `on_compiled` hears of the compiling as it happens.
What the script records with batchResult (a block of the preamble, `results.py`) goes to a file
beside it, read only when the launch succeeded. Every launch that started HIPE says what it cost
(model.Cost: wait4's resource usage, /proc/PID/io, of HIPE and of every process it left for the
worker to reap: _kill_leftovers) and whether HIPE ran out of memory (Java's OutOfMemoryError in its
stderr, or the kernel's OOM killer: memory.oom_kills).
"""
import contextlib
import logging
import os
import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from . import memory, procfs, results, workdir
from .config import PASSWORD_ENV, HipeSettings
from .guardian import Guardian, GuardianLost
from .model import Cost, LaunchEnd, Lease, Outcome, printable

log = logging.getLogger(__name__)

KILL_GRACE = 5.0   # seconds between SIGTERM and SIGKILL to HIPE's process group
POLL = 0.2         # how often the wait loop looks at signals, the timeout and the lease
COMPILED_FIRST_LOOK = 0.02   # the first look for a probed template's compiling (then doubled up to POLL)


@dataclass(frozen=True)
class Launch:
    """What became of one launch: its outcome, how long it took, and how it ended."""
    outcome: Outcome
    seconds: float
    end: LaunchEnd = LaunchEnd.FINISHED
    stop_signal: int = 0     # with STOPPED: the signal that stopped this worker mid-launch
    results: Optional[dict] = None   # what the script recorded with batchResult, if it succeeded


@dataclass(frozen=True)
class LaunchRequest:
    """Everything one launch of HIPE needs to know: what to run on which obsid, and where its files go."""
    hipe: HipeSettings
    template: str        # the job's script, as read at claim time (the version recorded)
    job: str
    obsid: int
    out_dir: Path        # the job's output folder (the script's outDir)
    log_dir: Path        # where OBSID.stdout and OBSID.stderr go
    template_path: Optional[Path] = None   # jobs/JOB/JOB.py: the name tracebacks give to the template
    on_compiled: Optional[Callable[[], None]] = None   # called once when HIPE has compiled the template


def py2_string(text: str) -> str:
    """A Jython 2 string literal for text (paths may hold quotes, backslashes, spaces)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def script_text(template: Path, obsid: int, out_dir: Path, job: str, marker: Path,
                results_file: Optional[Path] = None, name: Optional[Path] = None) -> str:
    """The script HIPE runs: the original's preamble (obsid, outDir; plus jobName; plus batchResult),
    then the template run as a file of its own, then the line that marks the end reached.

    The template is compiled under its own name, so that a traceback names jobs/JOB/JOB.py and the
    template's own line numbers, and a `from __future__ import` at its top works. It is compiled
    from bytes, as execfile() would, except that a template with non-ASCII text and no coding line
    still works (as it did when the template was pasted after the preamble). `template` is the file
    to run (the text the worker read at claim time, saved beside the script, so that the version
    recorded is the one that ran), `name` the file tracebacks name (jobs/JOB/JOB.py).
    """
    path, shown = py2_string(str(template)), py2_string(str(name or template))
    return ("# -*- coding: utf-8 -*-\n"
            f"obsid={obsid}\n"
            f"outDir={py2_string(str(out_dir) + os.sep)}\n"
            f"jobName={py2_string(job)}\n"
            + (results.preamble(py2_string(str(results_file))) if results_file else "") +
            f"batchTemplate = compile(open({path}, \"rb\").read(), {shown}, \"exec\")\n"
            "# The template compiled: the marker, empty, says it can run.\n"
            f"open({py2_string(str(marker))}, \"w\").close()\n"
            "exec(batchTemplate)\n"
            "# Reached only if the template ran to its end.\n"
            f"batchEnd = open({py2_string(str(marker))}, \"w\"); batchEnd.write(\"end\"); batchEnd.close()\n")


def hipe_command(hipe: HipeSettings, cache_dir: Path, script: Path) -> List[str]:
    """HIPE's command line, as the original built it, plus any extra properties."""
    return [*hipe.command, "-properties", f"java.vm.memory.max={hipe.memory}",
            f"hcss.ia.pal.pool.cache.dir={cache_dir}", *hipe.properties, str(script)]


def _ended_on_a_failing_disk(request: LaunchRequest) -> Optional[str]:
    """Why HIPE's logs or products may be incomplete, if log_dir's or out_dir's disk is full (or
    read-only, or failing) now that HIPE has ended; else None. A JVM ignores failed writes to its
    output, and a failure may be the disk's doing: such a launch is neither done nor failed."""
    for folder, what in ((request.log_dir, "log"), (request.out_dir, "products")):
        failing = workdir.writes_failing(folder)
        if failing:
            return f"cannot write {folder}: {failing} when HIPE ended, so its {what} may be incomplete"
    return None


def run_obsid(request: LaunchRequest, should_stop: Callable[[], int], lease: Callable[[], Lease],
              guardian: Guardian, scratch: Path) -> Launch:
    """Run HIPE once for the request's obsid, streaming its output to log_dir/OBSID.stdout and .stderr.

    HIPE runs as a process group of its own, watched by the worker's guardian (which kills it if
    the worker dies or its lease is not renewed in time). The wait looks every POLL seconds at
    should_stop() (a signal number: stop HIPE and return), the timeout, and lease() (Lease.LOST:
    the claim was taken, stop HIPE so that the obsid never runs twice at once); lease() only reads
    what the heartbeat thread found, so no database call ever delays a stop or a timeout. It also
    looks at the guardian (Guardian.check): one gone (killed, or ended by a signal, which makes it
    kill HIPE first) or not answering its ping (stopped) leaves HIPE unwatched, so the worker kills
    HIPE's group itself and the launch ends as SETUP_FAULT, naming the guardian's pid and the signal.
    Anything that keeps HIPE from starting (no HIPE, no file descriptors, processes, memory or
    disk space) ends as SETUP_FAULT: a fault of this worker's setup, not of the obsid; so does a
    HIPE that ends with log_dir's or out_dir's disk full, whatever it did (_ended_on_a_failing_disk).
    scratch: the worker's temporary folder (workdir.make_scratch). The launch's pool cache folder is
    emptied whatever happens; its script, the template's copy, marker and results stay in the worker's
    folder until the next launch renames, overwrites or removes them (or the worker removes the folder).
    A launch creates and frees as little as it can: on a busy disk each file created costs an
    inode allocation, and on a disk mounted with `discard` each folder removed (and each file
    rewritten) waits for the device to discard the freed block (figures: tests/bench/RESULTS.md).
    So the pool cache folder is the worker's, emptied before and after each launch rather than made
    and removed (and renamed, see workdir.fresh_cache), and the template's copy is rewritten only
    when it changed.
    """
    started = time.monotonic()
    _become_subreaper()
    script = scratch / f"{request.job}_{request.obsid}.py"
    try:
        entries = workdir.scan(scratch)
        cache = workdir.fresh_cache(scratch, entries)
    except OSError as e:
        what = (f"cannot empty the pool cache folder in {scratch} ({e.filename})" if scratch.is_dir()
                else f"cannot create a temporary folder in {scratch}")
        return _setup_fault(f"{what}: {e.strerror}", started)
    try:
        workdir.reuse_last_script(entries, request.job, script)
        workdir.clear(entries, keep={TEMPLATE, script.name, cache.name})
    except OSError as e:
        return _setup_fault(f"cannot clear the worker's temporary folder {scratch} ({e.filename}): {e.strerror}",
                            started)
    try:
        return _launch(request, scratch, script, cache, started, should_stop, lease, guardian)
    finally:
        with contextlib.suppress(OSError):
            workdir.empty_folder(cache)


TEMPLATE = "template.py"   # the template's text as read at claim time, in the worker's folder


def warm_up(scratch: Path, template: str, out_dir: Path, log_dir: Path) -> None:
    """What a worker's first launch in scratch writes before it can start HIPE, and needs no obsid
    for, done ahead (Worker.warm_up): the room probes of workdir.check_room in the log and output
    folders, and the template's copy. The launch finds them made, and checks them again: what fails
    here is left undone, for the launch to meet and say."""
    for folder in (log_dir, out_dir):
        with contextlib.suppress(OSError):
            workdir.check_room(folder)
    with contextlib.suppress(OSError):
        if workdir.text_of(scratch / TEMPLATE) != template:
            workdir.write(scratch / TEMPLATE, template)


def _setup_fault(reason: str, started: float) -> Launch:
    return Launch(Outcome(False, reason), time.monotonic() - started, LaunchEnd.SETUP_FAULT)


def _launch(request: LaunchRequest, scratch: Path, script: Path, cache: Path, started: float,
            should_stop: Callable[[], int], lease: Callable[[], Lease], guardian: Guardian) -> Launch:
    """Write the launch's files in scratch (the worker's folder, already cleared by run_obsid), start
    HIPE and wait for its end. Nothing outside scratch is written but HIPE's two logs."""
    hipe, obsid = request.hipe, request.obsid
    marker, results_file = scratch / "completed", scratch / "results.jsonl"
    template = scratch / TEMPLATE   # the text read at claim time, run under the template's own name
    stdout_path, stderr_path = request.log_dir / f"{obsid}.stdout", request.log_dir / f"{obsid}.stderr"
    command = hipe_command(hipe, cache, script)
    out = err = None
    try:
        try:
            workdir.check_room(request.log_dir)
            workdir.check_room(request.out_dir)
            if workdir.text_of(template) != request.template:
                workdir.write(template, request.template)
            workdir.write(script, script_text(template, obsid, request.out_dir, request.job, marker, results_file,
                                       request.template_path))
            out = workdir.open_log(stdout_path)   # one at a time: a failed second open must not lose the first fd
            err = workdir.open_log(stderr_path)
        except OSError as e:
            return _setup_fault(f"cannot write {e.filename or scratch}: {e.strerror}", started)
        oom_before = memory.oom_kills()   # a rise while HIPE runs: the OOM killer may have taken it
        try:
            # HIPE writes straight into the log files (nothing held in memory), in a session of its own
            # so that a timeout, a stop or its guardian can kill its whole process group. The database
            # password is not passed on: HIPE and the job script never need it.
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, env=_hipe_environment())
        except OSError as e:
            return _setup_fault(f"cannot start HIPE ({command[0]}): {e.strerror}", started)
    finally:
        for fd in (out, err):
            if fd is not None:
                os.close(fd)
    exit_watch = _exit_watch(proc.pid)
    io: Dict[str, int] = {}
    usage = None
    left = Spent()
    try:
        try:
            guardian.launch(proc.pid)
        except GuardianLost as e:
            launch = _setup_fault(f"{guardian.ended(wait=1.0) or e}; HIPE stopped at once", started)
        else:
            launch = _wait(proc, exit_watch, hipe.timeout, started, marker, stderr_path, should_stop, lease, guardian,
                           oom_before, request.on_compiled)
            failing = _ended_on_a_failing_disk(request) if launch.end is LaunchEnd.FINISHED else None
            if failing:
                launch = _setup_fault(f"{failing} (it {'succeeded' if launch.outcome.ok else 'failed'})", started)
            else:
                launch = _with_results(launch, results_file)
    finally:
        # The guardian hears first, while HIPE is not yet reaped (its group id cannot be reused yet);
        # then whatever HIPE left behind in its group is killed, and HIPE reaped.
        try:
            guardian.finished(proc.pid)
        except GuardianLost:
            pass
        _signal_group(proc.pid, signal.SIGKILL)
        if exit_watch is not None:
            os.close(exit_watch)
        io = _io_of(proc.pid)
        usage = _reap(proc)
        left = _kill_leftovers(proc.pid, guardian.pid)
    return replace(launch, outcome=replace(launch.outcome, cost=_cost(usage, io, left), heap_mb=hipe.memory_mb))


def _io_of(pid: int) -> Dict[str, int]:
    """/proc/PID/io of HIPE before it is reaped (a zombie's still reads): its own and its reaped
    descendants' counts. Empty where it cannot be read."""
    try:
        with open(f"/proc/{pid}/io", encoding="ascii") as f:
            return {name: int(value) for name, _, value in (line.partition(": ") for line in f) if value.strip().isdigit()}
    except OSError:
        return {}


def _reap(proc: subprocess.Popen) -> Any:
    """Reap HIPE with wait4, whose resource usage covers HIPE and every descendant it waited for."""
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:   # reaped already
        proc.wait()
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage


@dataclass
class Spent:
    """What the processes a launch left behind used, added up as the worker reaps them (_kill_leftovers)."""
    cpu_s: float = 0.0
    maxrss_kb: int = 0
    rchar: int = 0
    wchar: int = 0

    def add(self, usage: Any, io: Dict[str, int]) -> None:
        self.cpu_s += usage.ru_utime + usage.ru_stime
        self.maxrss_kb = max(self.maxrss_kb, usage.ru_maxrss)
        self.rchar += io.get("rchar", 0)
        self.wchar += io.get("wchar", 0)


def _cost(usage: Any, io: Dict[str, int], escaped: Spent) -> Cost:
    """The launch's cost (model.Cost) from wait4's resource usage and /proc/PID/io of HIPE, and of
    the processes it left (escaped; each reaped once, so none is counted twice): CPU is user +
    system time; the peak is ru_maxrss (KiB on Linux: the largest process's, of HIPE, its
    waited-for descendants and those left); reads and writes are rchar and wchar, the bytes of
    read() and write() calls, whatever the page cache or a network file system did with them."""
    mib = float(1 << 20)
    return Cost(cpu_s=round(usage.ru_utime + usage.ru_stime + escaped.cpu_s, 3) if usage else None,
                peak_rss_mb=round(max(usage.ru_maxrss, escaped.maxrss_kb) / 1024, 1) if usage else None,
                read_mb=round((io["rchar"] + escaped.rchar) / mib, 3) if "rchar" in io else None,
                write_mb=round((io["wchar"] + escaped.wchar) / mib, 3) if "wchar" in io else None)


def _wait(proc: subprocess.Popen, exit_watch: Optional[int], timeout: float, started: float, marker: Path,
          stderr_path: Path, should_stop: Callable[[], int], lease: Callable[[], Lease], guardian: Guardian,
          oom_before: Optional[int] = None, on_compiled: Optional[Callable[[], None]] = None) -> Launch:
    # While a probe's compiling is awaited, the marker is looked at sooner (the other workers wait on it),
    # from COMPILED_FIRST_LOOK doubling up to POLL.
    look = POLL if on_compiled is None else COMPILED_FIRST_LOOK
    while not _exited(proc, exit_watch, look):
        now = time.monotonic()
        look = min(look * 2, POLL)
        if on_compiled is not None and marker.exists():
            on_compiled()
            on_compiled = None
        stop = should_stop()
        if stop:
            _stop(proc, exit_watch)
            return Launch(Outcome(False, f"stopped by {signal.Signals(stop).name}"), now - started,
                          LaunchEnd.STOPPED, stop)
        if timeout and now - started >= timeout:
            killed_by = _stop(proc, exit_watch)
            return Launch(Outcome(False, f"timeout: HIPE ran over {timeout:g} s and was killed", None, killed_by,
                                  script_error=True), now - started)
        if lease() is Lease.LOST:
            _stop(proc, exit_watch)
            return Launch(Outcome(False, "claim lost to another worker; HIPE stopped"), now - started,
                          LaunchEnd.CLAIM_LOST)
        lost = guardian.check()
        if lost:
            # Nothing else watches HIPE now: this worker fences it itself, at once (SIGKILL, as the
            # guardian would), before it could be frozen in turn. A stop that reached the guardian
            # too (Slurm signals every process of a job step) is still a stop.
            _signal_group(proc.pid, signal.SIGKILL)
            _exited(proc, exit_watch, 60.0)
            stop = _stopped_with(-signal.SIGKILL, should_stop)
            if stop:
                return Launch(Outcome(False, f"stopped by {signal.Signals(stop).name}"), time.monotonic() - started,
                              LaunchEnd.STOPPED, stop)
            return _setup_fault(f"{lost}; HIPE stopped", started)
    code = _exit_code(proc)
    seconds = time.monotonic() - started
    killed = guardian.why_killed(proc.pid, wait=1.0) if code == -signal.SIGKILL else ""
    if killed == "fenced":
        return Launch(Outcome(False, "HIPE killed by the guardian: the lease was not renewed in time", None,
                              signal.SIGKILL), seconds, LaunchEnd.FENCED)
    stop = _stopped_with(code, should_stop)
    if stop:
        return Launch(Outcome(False, f"stopped by {signal.Signals(stop).name}"), seconds, LaunchEnd.STOPPED, stop)
    if killed or (code < 0 and guardian.check()):
        # The guardian, being ended by a signal, killed HIPE as it went (or it went as HIPE died):
        # not the obsid's fault.
        lost = guardian.ended(wait=1.0) or guardian.check() or f"the guardian (pid {guardian.pid}) was ending"
        return _setup_fault(f"{lost}; HIPE stopped", started)
    if on_compiled is not None and marker.exists():
        on_compiled()
    oom_killed = (oom_before is not None and code in (-signal.SIGKILL, 128 + signal.SIGKILL)
                  and memory.oom_kills() > oom_before)
    return Launch(_verdict(code, _marked(marker), stderr_path, marker.exists(), oom_killed), seconds)


def _marked(marker: Path) -> bool:
    """Whether the script ran to its end: the marker holds its last line's word."""
    try:
        return marker.stat().st_size > 0
    except OSError:
        return False


def _stopped_with(code: int, should_stop: Callable[[], int]) -> int:
    """The stop signal, if HIPE was killed by a signal as this worker was being stopped.

    Slurm signals every process of a job step (srun passing a signal on, scancel, the time
    limit), HIPE included: it may die of the signal that stops its worker a moment before the
    worker's handler runs. That is a stop (the obsid goes back, uncounted), not a failure.
    """
    if code >= 0:
        return 0
    deadline = time.monotonic() + 2 * POLL
    while not should_stop() and time.monotonic() < deadline:
        time.sleep(0.02)
    return should_stop()


def _with_results(launch: Launch, results_file: Path) -> Launch:
    """A successful launch with the results its script recorded; a failed one keeps none."""
    if not launch.outcome.ok:
        return launch
    try:
        return replace(launch, results=results.read(results_file))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return replace(launch, outcome=Outcome(False, f"results of batchResult unreadable: {e}", 0))


def _exit_watch(pid: int) -> Optional[int]:
    """A file descriptor that becomes readable when process pid exits (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _exited(proc: subprocess.Popen, exit_watch: Optional[int], timeout: float) -> bool:
    """Whether HIPE has exited, waiting up to timeout seconds; it is not reaped."""
    if exit_watch is not None:
        readable, _, _ = select.select([exit_watch], [], [], timeout)
        return bool(readable)
    end = time.monotonic() + timeout
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= end:
            return False
        time.sleep(min(0.01, timeout))
    return True


def _exit_code(proc: subprocess.Popen) -> int:
    """HIPE's exit status as Popen.returncode would say it, without reaping it."""
    info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None:
        return proc.wait()
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


_CANNOT_RUN = re.compile(r"\b(SyntaxError|IndentationError|TabError)\b")


def _verdict(code: int, completed: bool, stderr_path: Path, compiled: bool = True, oom_killed: bool = False) -> Outcome:
    """The outcome of a HIPE that exited with `code` (Popen's: -N for signal N); `completed`: the marker
    holds the script's last word; `compiled`: the marker is there at all (the template compiled);
    `oom_killed`: an OOM-kill counter rose while it ran (memory.oom_kills)."""
    if code == 0 and completed:
        return Outcome(True, "", 0)
    if not compiled and code > 0:
        words = _last_words(stderr_path)
        if _CANNOT_RUN.search(words):
            return Outcome(False, f"template cannot run{words}", code, script_error=True, template_broken=True)
    java = _java_out_of_memory(stderr_path)
    # HIPE killed by SIGKILL (or its launcher reporting it, 128+9) while the kernel killed for memory.
    kernel = oom_killed and code in (-signal.SIGKILL, 128 + signal.SIGKILL)
    short = java or ("killed by the kernel's OOM killer" if kernel else "")
    if code < 0:
        words = ": the kernel's OOM killer (out of memory)" if kernel else _last_words(stderr_path)
        return Outcome(False, f"HIPE killed by {signal.Signals(-code).name}{words}", None, -code, out_of_memory=short)
    words = f": {java}" if java else _last_words(stderr_path)
    if code != 0:
        return Outcome(False, f"HIPE exited with status {code}{words}", code, script_error=True, out_of_memory=short)
    return Outcome(False, f"script stopped before its end though HIPE exited 0{words}", 0,
                   script_error=True, out_of_memory=short)


OUT_OF_MEMORY = b"java.lang.OutOfMemoryError"
_FRAME = re.compile(r"\s*(at |\.\.\. \d+ (more|common frames omitted)|File \".*\", line \d+)")
_THREAD = re.compile(r'(Exception in thread "[^"]*"|Caused by:)\s+')


def _java_out_of_memory(stderr_path: Path) -> str:
    """The line of HIPE's stderr that says Java ran out of memory (java.lang.OutOfMemoryError, any
    kind), from the error's name on, as printable(); '' if there is none. Read in chunks: the line
    may be anywhere, with a long trace after it."""
    chunk, tail = 1 << 20, b""
    try:
        with open(stderr_path, "rb") as f:
            while True:
                block = f.read(chunk)
                if not block:
                    return ""
                text = tail + block
                at = text.find(OUT_OF_MEMORY)
                if at >= 0:
                    line = (text[at:] + f.read(4096)).split(b"\n", 1)[0]
                    return printable(line.decode("utf-8", "replace")).strip()[:160]
                tail = text[-len(OUT_OF_MEMORY):]
    except OSError:
        return ""


def _last_words(stderr_path: Path) -> str:
    """': ' and the line that says why HIPE failed, if it wrote one to stderr: the last non-blank line
    that is not a stack frame (Java's `at ...`, `... 12 more`; Python's `File ...` and the source
    line below it), so a Java exception's own line (`herschel.ia...Exception: message`, without
    `Exception in thread "main"`), not its last frame. Without terminal escapes or control characters
    (model.printable): it becomes the reason that `status`, the report and the log lines show.
    Opened by workdir.open_to_read: a FIFO a script put there never blocks the worker, a link is not
    followed (nothing is said then)."""
    try:
        with open(workdir.open_to_read(stderr_path), "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = [printable(line).rstrip() for line in f.read().decode("utf-8", "replace").splitlines()]
            lines = [line for line in lines if line.strip()]
    except OSError:
        return ""
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if _FRAME.match(line) or (i > 0 and lines[i - 1].lstrip().startswith("File \"") and line[:1].isspace()):
            continue
        return f": {_THREAD.sub('', line.strip(), count=1)[:160]}"
    return f": {lines[-1].strip()[:160]}" if lines else ""


def _hipe_environment() -> Optional[Dict[str, str]]:
    """HIPE's environment: this process's without the database password; None (inherited as it is,
    no copy to make at each launch) when there is none."""
    if PASSWORD_ENV not in os.environ:
        return None
    return {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}


_subreaper: Optional[bool] = None   # whether this process is its descendants' subreaper (asked at its first launch)


def _become_subreaper() -> None:
    global _subreaper
    if _subreaper is None:
        _subreaper = procfs.become_subreaper()
        if not _subreaper:
            log.debug("not a subreaper: a process HIPE leaves running in a session of its own goes unseen")


def _kill_leftovers(hipe_pid: int, guardian_pid: Optional[int]) -> Spent:
    """Kill whatever HIPE's launch left running outside its process group (a daemon it started in a
    session of its own, setsid), and reap it: it must never write into the next launch's pool cache,
    by its path or through a folder it holds open (its working folder). The worker is its processes'
    subreaper (procfs.become_subreaper), so those orphans are its descendants (and so are HIPE's
    children killed with its group, and those that ended unwaited: reaped here, never left as
    zombies). Looked for again until none is left (one may fork as it is killed). What those reaped
    here used (their wait4 and /proc/PID/io: with their own waited-for children) is the launch's
    too; nothing when HIPE left nothing (one look at the processes newer than HIPE, as before)."""
    me = os.getpid()
    spent = Spent()
    for _ in range(5):
        found = procfs.leftovers({me, hipe_pid}, hipe_pid, spare={guardian_pid})
        if not found:
            return spent
        # The group's members were killed with it a moment ago (SIGKILL, maybe not yet delivered).
        escaped = [pid for pid, state, group in found if group != hipe_pid and state not in ("Z", "X")]
        if escaped:
            log.warning("HIPE left %d process(es) running after its end (pids %s): killed before the next launch",
                        len(escaped), " ".join(map(str, escaped[:10])))
        for pid, _state, _group in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid, _state, _group in found:
            _reap_leftover(pid, spent)
    return spent


def _reap_leftover(pid: int, spent: Spent, patience: float = 2.0) -> None:
    """Wait for a killed leftover to be gone, reaping it once it is this process's child (orphans of
    a killed leftover are reparented to this one a moment later), and add what it used to spent:
    its /proc/PID/io read while it is a zombie (WNOWAIT), then its resource usage from wait4."""
    end = time.monotonic() + patience
    while time.monotonic() < end:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                io = _io_of(pid)
                spent.add(os.wait4(pid, 0)[2], io)
                return
        except ChildProcessError:
            if procfs.process_state(pid)[0] in (None, "Z", "X"):
                return
        time.sleep(0.005)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(proc: subprocess.Popen, exit_watch: Optional[int]) -> Optional[int]:
    """SIGTERM HIPE's whole process group, SIGKILL it if it has not gone after KILL_GRACE; returns
    the signal that ended HIPE, if a signal did."""
    _signal_group(proc.pid, signal.SIGTERM)
    if not _exited(proc, exit_watch, KILL_GRACE):
        _signal_group(proc.pid, signal.SIGKILL)
        _exited(proc, exit_watch, 60.0)
    code = _exit_code(proc)
    return -code if code < 0 else None
