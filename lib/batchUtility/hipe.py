"""Launching HIPE for one obsid: the temporary script, the command line, the logs, and the verdict.

HIPE can exit 0 after its script raised, so success needs two things: exit status 0, and a marker
file that a line appended to the script writes when the script has run to its last line.
What the script records with batchResult (a block of the preamble, `results.py`) goes to a file
beside it, read only when the launch succeeded.
"""
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import results
from .config import PASSWORD_ENV, HipeSettings
from .model import LaunchEnd, Lease, Outcome

# Launch errors meaning HIPE is not there or not a program (as opposed to, say, EAGAIN or ENOMEM).
_NO_HIPE = {errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR, errno.ELOOP}
KILL_GRACE = 5.0   # seconds between SIGTERM and SIGKILL to HIPE's process group
POLL = 0.2         # how often the wait loop looks at signals, the timeout and the lease


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
    template: str        # the job's script, as read at claim time
    job: str
    obsid: int
    out_dir: Path        # the job's output folder (the script's outDir)
    log_dir: Path        # where OBSID.stdout and OBSID.stderr go


def py2_string(text: str) -> str:
    """A Jython 2 string literal for text (paths may hold quotes, backslashes, spaces)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def script_text(template: str, obsid: int, out_dir: Path, job: str, marker: Path,
                results_file: Optional[Path] = None) -> str:
    """The template with the original's preamble (obsid, outDir; plus jobName; plus batchResult)
    and the completion line."""
    return ("# -*- coding: utf-8 -*-\n"
            f"obsid={obsid}\n"
            f"outDir={py2_string(str(out_dir) + os.sep)}\n"
            f"jobName={py2_string(job)}\n"
            + (results.preamble(py2_string(str(results_file))) if results_file else "") +
            f"{template.rstrip()}\n"
            "\n# Appended by batchUtility: reached only if the script ran to its end.\n"
            f"open({py2_string(str(marker))}, \"w\").close()\n")


def hipe_command(hipe: HipeSettings, cache_dir: Path, script: Path) -> List[str]:
    """HIPE's command line, as the original built it, plus any extra properties."""
    return [*hipe.command, "-properties", f"java.vm.memory.max={hipe.memory}",
            f"hcss.ia.pal.pool.cache.dir={cache_dir}", *hipe.properties, str(script)]


def keep_previous(path: Path) -> None:
    """Move an earlier attempt's log aside (OBSID.stdout -> OBSID.stdout.1, .2, ...) so none is lost."""
    if path.exists() and path.stat().st_size > 0:
        n = 1
        while path.with_name(f"{path.name}.{n}").exists():
            n += 1
        path.rename(path.with_name(f"{path.name}.{n}"))


def run_obsid(request: LaunchRequest, should_stop: Callable[[], int], tick: Callable[[], Lease],
              tick_every: float) -> Launch:
    """Run HIPE once for the request's obsid, streaming its output to log_dir/OBSID.stdout and .stderr.

    Waits for HIPE while calling tick() every tick_every seconds (the lease heartbeat; Lease.LOST
    means our claim was taken, and HIPE is stopped so that the obsid never runs twice at once) and
    should_stop() every POLL seconds (a signal number: stop HIPE and return). Temporaries are
    removed whatever happens.
    """
    hipe, template, job, obsid = request.hipe, request.template, request.job, request.obsid
    out_dir, log_dir = request.out_dir, request.log_dir
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f"hipe-batch-{job}-{obsid}-"))
    try:
        script, marker, cache = tmp / f"{job}_{obsid}.py", tmp / "completed", tmp / "pool-cache"
        results_file = tmp / "results.jsonl"
        cache.mkdir()
        script.write_text(script_text(template, obsid, out_dir, job, marker, results_file), encoding="utf-8")
        stdout_path, stderr_path = log_dir / f"{obsid}.stdout", log_dir / f"{obsid}.stderr"
        keep_previous(stdout_path)
        keep_previous(stderr_path)
        command = hipe_command(hipe, cache, script)
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            try:
                # HIPE writes straight into the log files (nothing held in memory), in a session of
                # its own so that a timeout or a stop can kill its whole process group.
                # The database password is not passed on: HIPE and the job script never need it.
                proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True, env=_hipe_environment())
            except OSError as e:
                return Launch(Outcome(False, f"cannot start HIPE ({command[0]}): {e.strerror}"),
                              time.monotonic() - started,
                              LaunchEnd.NOT_STARTED if e.errno in _NO_HIPE else LaunchEnd.FINISHED)
        watchdog = None
        try:
            watchdog = _start_watchdog(proc.pid)
            return _with_results(_wait(proc, hipe.timeout, started, marker, stderr_path, should_stop, tick, tick_every),
                                 results_file)
        finally:
            _signal_group(proc.pid, signal.SIGKILL)  # whatever HIPE left behind in its group
            _release_watchdog(watchdog)  # before HIPE is reaped, so that its group id is still ours
            if proc.poll() is None:
                proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wait(proc: subprocess.Popen, timeout: float, started: float, marker: Path, stderr_path: Path,
          should_stop: Callable[[], int], tick: Callable[[], Lease], tick_every: float) -> Launch:
    next_tick = started + tick_every
    while True:
        try:
            code = proc.wait(timeout=POLL)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        stop = should_stop()
        if stop:
            _stop(proc)
            return Launch(Outcome(False, f"stopped by {signal.Signals(stop).name}"), now - started,
                          LaunchEnd.STOPPED, stop)
        if timeout and now - started >= timeout:
            _stop(proc)
            return Launch(Outcome(False, f"timeout: HIPE ran over {timeout:g} s and was killed", None,
                                  _killed_by(proc.returncode)), now - started)
        if now >= next_tick:
            next_tick = now + tick_every
            if tick() is Lease.LOST:
                _stop(proc)
                return Launch(Outcome(False, "claim lost to another worker; HIPE stopped"), now - started,
                              LaunchEnd.CLAIM_LOST)
    seconds = time.monotonic() - started
    stop = _stopped_with(code, should_stop)
    if stop:
        return Launch(Outcome(False, f"stopped by {signal.Signals(stop).name}"), seconds, LaunchEnd.STOPPED, stop)
    return Launch(_verdict(code, marker.exists(), stderr_path), seconds)


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


def _verdict(code: int, completed: bool, stderr_path: Path) -> Outcome:
    if code < 0:
        return Outcome(False, f"HIPE killed by {signal.Signals(-code).name}{_last_words(stderr_path)}", None, -code)
    if code != 0:
        return Outcome(False, f"HIPE exited with status {code}{_last_words(stderr_path)}", code)
    if not completed:
        return Outcome(False, f"script stopped before its end though HIPE exited 0{_last_words(stderr_path)}", 0)
    return Outcome(True, "", 0)


def _last_words(stderr_path: Path) -> str:
    """': ' and the last non-blank line HIPE wrote to stderr (usually the exception), if any."""
    try:
        with open(stderr_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:160]}" if lines else ""


def _hipe_environment() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}


# A worker killed outright (SIGKILL, OOM killer) cannot stop its HIPE, which runs in a session of its
# own; left alone it would run on while the obsid, reclaimed after the lease, runs again elsewhere.
# So each launch has a tiny watchdog holding the read end of a pipe that only this worker writes:
# a line means "HIPE is finished, just exit"; end of file without a line means the worker died, and
# the watchdog kills HIPE's whole process group.
_WATCHDOG = ("import os, sys\n"
             "if not sys.stdin.buffer.readline().endswith(b'\\n'):\n"
             "    try:\n        os.killpg(int(sys.argv[1]), 9)\n"
             "    except OSError:\n        pass\n")


def _start_watchdog(pgid: int):
    """Start the watchdog of HIPE's process group pgid; returns (process, pipe) or None."""
    if not sys.executable:
        return None
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return None
    try:
        proc = subprocess.Popen([sys.executable, "-S", "-I", "-c", _WATCHDOG, str(pgid)], stdin=read_end,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        os.close(write_end)
        return None
    finally:
        os.close(read_end)
    return proc, write_end


def _release_watchdog(watchdog):
    if watchdog is None:
        return
    proc, write_end = watchdog
    try:
        os.write(write_end, b"finished\n")
    except OSError:
        pass
    finally:
        os.close(write_end)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _killed_by(code: Optional[int]) -> Optional[int]:
    return -code if code is not None and code < 0 else None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM HIPE's whole process group, SIGKILL it if it has not gone after KILL_GRACE."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
