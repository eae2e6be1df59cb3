"""The guardian: one small process per worker that kills HIPE when the worker cannot answer for it.

HIPE runs in a process group of its own, so that a timeout or a stop kills all of it. But a worker
that is killed outright (SIGKILL, the OOM killer), or frozen (SIGSTOP, Ctrl-Z, a paused VM), or
cut off from the database longer than its lease, cannot stop that group: HIPE would run on while
the obsid, taken back after the lease, runs again elsewhere. The guardian prevents that. It is
started once per worker (not once per launch), in a session of its own so that nothing aimed at the
worker's terminal or process group stops it, and reads lines from a pipe only the worker writes:

    fence-at DEADLINE   HIPE may run until DEADLINE (CLOCK_BOOTTIME seconds, shared by every
                        process of the host); the worker sends a later one after each heartbeat
                        that renewed its lease in the database
    launch PGID         HIPE runs as process group PGID (sent right after it started)
    finished PGID       that group is the worker's business again (sent before HIPE is reaped)
    ping N              answered at once with `pong N`: the guardian is there and not stopped

It kills each launched group with SIGKILL when the pipe ends (the worker died) or when the fence
deadline passes without a newer one (the worker is frozen, or could not renew its lease): it fences
the worker off from its claim before the lease, which another worker may then take, runs out. It
answers `fenced PGID` on its other pipe for a group it killed at the deadline, so that the worker
learns why HIPE died.

The guardian itself may be hit. A signal meant to end it (an operator's SIGTERM, SIGINT, SIGHUP,
...) ends it, but it kills its groups first (answering `orphaned PGID` for each) and exits 128+N,
so that the worker can tell why HIPE died: not the obsid's fault. SIGKILL (the OOM killer's choice)
ends it without a word, and SIGSTOP (or anything that keeps it from running) leaves HIPE unwatched;
the worker notices either within seconds (Guardian.check: the guardian's exit, or a ping unanswered
for PING_PATIENCE seconds), kills HIPE's group itself and stops.

The guardian is forked from the worker: a fresh interpreter per worker costs far more CPU, which
delays the last worker's first claim when many start at once (figures: tests/bench/RESULTS.md).
The forked guardian keeps nothing of the worker but its two pipe ends; it then sleeps in select()
until a line or a deadline comes. Forking is only safe while the worker has a single thread, native
ones counted (an MPI rank has Open MPI's, which Python does not see: one could hold a lock the
forked guardian then waits on for good); otherwise (or when an interpreter is named) this file is
run as the guardian's program instead (`python -S -I guardian.py`), which imports nothing but the
standard library's smallest modules.
"""
import fcntl
import gc
import os
import select
import signal
import sys
import time

try:
    from .procfs import one_thread, process_start, process_state
except ImportError:   # run as the guardian's own program (python -S -I guardian.py): no package, and
    # -I leaves this folder off sys.path; procfs imports nothing but os.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from procfs import one_thread, process_start, process_state

READY = b"ready\n"
# The signals that end the guardian (their default action ends a process; SIGKILL cannot be caught):
# caught so that HIPE is killed first, never left running unwatched.
ENDING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM)
# A worker's health check of its guardian while HIPE runs (Guardian.check): a ping PING_EVERY seconds
# after the last answer; unanswered for PING_PATIENCE seconds, the guardian is taken for lost.
PING_EVERY = 1.0
PING_PATIENCE = 3.0


def _boot_clock():
    """The deadline's clock: CLOCK_BOOTTIME, which goes on while the machine is suspended (a VM paused
    and resumed, a laptop's lid), where CLOCK_MONOTONIC stops; so a deadline that passed during a
    suspend has passed when the machine resumes, and HIPE is fenced at once (other machines' clocks
    went on, and another worker may have taken the obsid back). CLOCK_MONOTONIC where there is none."""
    for clock in (getattr(time, "CLOCK_BOOTTIME", None), time.CLOCK_MONOTONIC):
        if clock is not None:
            try:
                time.clock_gettime(clock)
                return clock
            except OSError:
                pass
    return time.CLOCK_MONOTONIC


DEADLINE_CLOCK = _boot_clock()


def deadline_now():
    """Now on the deadline's clock (DEADLINE_CLOCK), in seconds."""
    return time.clock_gettime(DEADLINE_CLOCK)


# ----------------------------------------------------------------------------- the guardian's side
class _Watch:
    """The guardian's state: the launched groups and the deadline they may run until."""

    def __init__(self, replies):
        self.replies = replies
        self.groups = {}       # pgid -> start time of its leader when launched
        self.deadline = None   # None: no fence yet (only the worker's death kills)

    def handle(self, line):
        word, _, arg = line.strip().partition(" ")
        if word == "fence-at":
            self.deadline = float(arg)
        elif word == "launch":
            pgid = int(arg)
            self.groups[pgid] = process_start(pgid)
            if self.deadline is not None and deadline_now() >= self.deadline:
                self.kill_all("fenced")   # launched after its lease's safety margin had passed
        elif word == "finished":
            self.groups.pop(int(arg), None)
        elif word == "ping":
            self._reply(f"pong {int(arg)}\n")

    def kill_all(self, why):
        for pgid, started in list(self.groups.items()):
            # Killed only while its leader is the process launched, or gone (a zombie too): a leader's
            # pid is not reused while its group has members, so a leader with another start time
            # means the whole group ended and the number now belongs to someone else.
            leader = process_start(pgid)
            if leader is None or leader == started:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except OSError:
                    pass
            del self.groups[pgid]
            self._reply(f"{why} {pgid}\n")

    def _reply(self, text):
        try:
            os.write(self.replies, text.encode())
        except OSError:   # the worker is gone or not reading: the kill is what matters
            pass

    def timeout(self):
        if self.deadline is None or not self.groups:
            return None
        return max(0.0, self.deadline - deadline_now())


def _noted(signum, frame):
    pass   # the signal's number reaches _serve through the wakeup pipe (signal.set_wakeup_fd)


def main(commands=0, replies=1):
    """Serve the worker; returns the exit status: 0 when the worker's pipe ended, 128+N when
    signal N (one of ENDING) ended the guardian. Either way every launched group is killed first."""
    # Terminal stops cannot reach the guardian (a session of its own, no terminal), nor stop it:
    # ignored. A signal of ENDING is someone ending the guardian itself: it is caught only through
    # the wakeup pipe (no exception raised at a random point of the loop), HIPE is killed, and the
    # exit status says which signal it was.
    for sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for sig in ENDING:
        signal.signal(sig, _noted)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ENDING)   # a worker may hold stops blocked (signals.hold_stops)
    watch = _Watch(replies)
    try:
        os.write(replies, READY)
    except OSError:
        return 1
    ended_by = _serve(commands, watch, wake_r)
    for sig in ENDING:
        signal.signal(sig, signal.SIG_IGN)   # one ending is enough: nothing cuts the kills short
    watch.kill_all("orphaned")
    return 128 + ended_by if ended_by else 0


def _serve(commands, watch, wake):
    """Follow the worker's lines until its pipe ends (returns 0) or a signal of ENDING comes (returns
    its number); kill at each deadline that passes."""
    pending = b""
    while True:
        readable, _, _ = select.select([commands, wake], [], [], watch.timeout())
        if wake in readable:
            ended_by = _caught(wake)
            if ended_by:
                return ended_by
        if commands not in readable:
            if watch.deadline is not None and deadline_now() >= watch.deadline:
                watch.kill_all("fenced")
            continue
        chunk = os.read(commands, 4096)
        if not chunk:
            return 0   # the worker is gone: whatever it launched must not outlive it
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            try:
                watch.handle(line.decode("ascii", "replace"))
            except ValueError:
                pass   # only the worker writes here; a garbled line must not end the watch


def _caught(wake):
    """The first signal of ENDING in the wakeup pipe (each caught signal writes its number), or 0."""
    try:
        numbers = os.read(wake, 512)
    except OSError:
        return 0
    return next((n for n in numbers if n in ENDING), 0)


# ----------------------------------------------------------------------------- the worker's side
class GuardianLost(Exception):
    """The guardian could not be started or is gone: HIPE must not be launched unguarded."""


class Guardian:
    """The worker's handle on its guardian process. Thread-safe: the heartbeat thread sends
    deadlines while the main thread sends launches."""

    def __init__(self, python=None, start_timeout=20.0):
        """python: run the guardian in that interpreter (a fresh process) rather than fork it."""
        import threading
        self._lock = threading.Lock()
        self._deferred = ""   # a fence-at line to send with the next launch
        self.killed = {}      # group -> why the guardian killed it, as it told us: "fenced" or "orphaned"
        self.lost = ""        # why the guardian no longer watches HIPE, once check() found it
        self._pings = 0       # the number of the last ping sent
        self._ping_sent = None   # when the unanswered ping was sent (time.monotonic()), or None
        self._next_ping = 0.0    # when the next ping is due
        commands_r, self._commands = os.pipe()
        self._replies, replies_w = os.pipe()
        try:
            if python is None and one_thread():
                self.proc = _fork_guardian(commands_r, replies_w)
            else:
                self.proc = _exec_guardian(python or sys.executable, commands_r, replies_w)
        except GuardianLost:
            os.close(self._commands)
            os.close(self._replies)
            raise
        finally:
            os.close(commands_r)
            os.close(replies_w)
        os.set_blocking(self._commands, False)   # a frozen guardian must never block the worker
        self._await_ready(start_timeout)
        os.set_blocking(self._replies, False)

    @property
    def pid(self):
        return self.proc.pid

    def _await_ready(self, timeout):
        ready, _, _ = select.select([self._replies], [], [], timeout)
        answer = os.read(self._replies, len(READY)) if ready else b""
        if answer != READY:
            self.close()
            raise GuardianLost("the guardian did not start" + ("" if ready else f" within {timeout:g} s"))

    def _send(self, line):
        """Write line, after the deferred fence-at if any (older: it goes first). Under the lock, so
        that lines of the two threads never pass each other."""
        with self._lock:
            line, self._deferred = self._deferred + line, ""
            if self._commands is None:
                raise GuardianLost("the guardian was closed")
            try:
                written = os.write(self._commands, line.encode())
            except (BlockingIOError, BrokenPipeError) as e:
                raise GuardianLost(f"the guardian (pid {self.proc.pid}) does not listen: {e}") from None
            if written != len(line):
                raise GuardianLost(f"the guardian (pid {self.proc.pid}) does not keep up")

    def fence_at(self, deadline: float, with_launch: bool = False):
        """HIPE may run until `deadline` (time.monotonic() seconds), unless a later one is sent.
        with_launch: sent with the next launch (one write, one wake-up of the guardian, instead of
        two), unless another deadline is sent first; the guardian reads it before the launch. Sent on
        the guardian's clock (DEADLINE_CLOCK), which a suspend of the machine does not stop."""
        line = f"fence-at {deadline - time.monotonic() + deadline_now():.6f}\n"
        if not with_launch:
            self._send(line)
            return
        with self._lock:
            self._deferred = line

    def launch(self, pgid: int):
        self._send(f"launch {pgid}\n")

    def finished(self, pgid: int):
        """Send before HIPE is reaped: while it is a zombie its group id cannot be reused."""
        self._send(f"finished {pgid}\n")

    def was_fenced(self, pgid: int, wait: float = 0.0) -> bool:
        """Whether the guardian killed group pgid because its deadline passed; waits up to `wait`
        seconds for it to say so (HIPE's death may be seen before the guardian's answer)."""
        return self.why_killed(pgid, wait) == "fenced"

    def why_killed(self, pgid: int, wait: float = 0.0) -> str:
        """Why the guardian killed group pgid, as it said: "fenced" (its deadline passed), "orphaned"
        (a signal was ending the guardian), or "" (it has not said so within `wait` seconds)."""
        end = time.monotonic() + wait
        while True:
            self._read_replies()
            left = end - time.monotonic()
            if pgid in self.killed or left <= 0 or self._replies is None:
                return self.killed.get(pgid, "")
            select.select([self._replies], [], [], left)

    def _read_replies(self):
        while self._replies is not None:
            try:
                chunk = os.read(self._replies, 4096)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                return
            for line in chunk.decode("ascii", "replace").splitlines():
                word, _, arg = line.partition(" ")
                if word in ("fenced", "orphaned") and arg.isdigit():
                    self.killed[int(arg)] = word
                elif word == "pong" and arg.isdigit() and int(arg) == self._pings:
                    self._ping_sent, self._next_ping = None, time.monotonic() + PING_EVERY

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> str:
        """Whether the guardian still watches HIPE: "" if so, as far as can be told, else why not
        (one line naming its pid and what became of it). Called at each look of HIPE's wait; never
        blocks. The guardian is lost once it has exited (killed, or ended by a signal), or once a
        ping has gone unanswered for PING_PATIENCE seconds (it cannot run); a stop (SIGSTOP), which
        the kernel reports to this parent at once, is seen at the next call. A ping is sent
        PING_EVERY seconds after the last answer. Once lost, it stays lost."""
        if self.lost:
            return self.lost
        self._read_replies()   # first: an answer waiting is not a ping unanswered
        reason = self.ended() or self._stopped()
        now = time.monotonic()
        if not reason and self._ping_sent is not None and now - self._ping_sent >= PING_PATIENCE:
            reason = self._not_answering(now - self._ping_sent)
        elif not reason and self._ping_sent is None and now >= self._next_ping:
            try:
                self._send(f"ping {self._pings + 1}\n")
                self._pings += 1
                self._ping_sent = now
            except GuardianLost as e:
                reason = self.ended(wait=1.0) or str(e)
        self.lost = reason
        return reason

    def ended(self, wait: float = 0.0) -> str:
        """Why the guardian has exited ("the guardian (pid N) was ended by SIGTERM"), waiting up to
        `wait` seconds for it to; "" while it runs."""
        end = time.monotonic() + wait
        while self.proc.poll() is None:
            if time.monotonic() >= end:
                return ""
            time.sleep(0.01)
        code = self.proc.returncode
        if code < 0:
            how = f"was killed by {_signal_name(-code)}"
        elif code > 128:
            how = f"was ended by {_signal_name(code - 128)}"
        else:
            how = f"exited with status {code}"
        return f"the guardian (pid {self.pid}) {how}"

    def _stopped(self) -> str:
        """Why the guardian is stopped now, as the kernel reports a child's stop at once (SIGSTOP): so
        the worker fences HIPE at its next look (POLL), not a ping's patience later, and a worker frozen
        right after its guardian has a far smaller window to leave HIPE unwatched. "" if not stopped."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
        except OSError:
            return ""
        if info is not None and info.si_code == os.CLD_STOPPED:
            return f"the guardian (pid {self.pid}) was stopped by {_signal_name(info.si_status)}"
        return ""

    def _not_answering(self, seconds: float) -> str:
        try:   # it is this process's child: a stop is reported to it, with its signal (not consumed)
            info = os.waitid(os.P_PID, self.pid, os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
        except OSError:
            info = None
        if info is not None and info.si_code == os.CLD_STOPPED:
            how = f"was stopped by {_signal_name(info.si_status)}"
        else:
            state, _ = process_state(self.pid)
            how = "was stopped" if state in ("T", "t") else f"cannot run (state {state})" if state else "is gone"
        return f"the guardian (pid {self.pid}) {how} and has not answered for {seconds:.0f} s"

    def close(self, timeout=10.0):
        """End the guardian: with nothing launched it just exits. A guardian found lost (check) is
        killed at once: stopped, it would not exit by itself."""
        if self.lost:
            timeout = 0.0
        with self._lock:
            commands, self._commands = self._commands, None
        if commands is not None:
            os.close(commands)
        try:
            self.proc.wait(timeout=timeout)
        except Exception:   # subprocess.TimeoutExpired or TimeoutError (_Forked): a frozen guardian
            self.proc.kill()
            self.proc.wait()
        self._read_replies()
        if self._replies is not None:
            os.close(self._replies)
            self._replies = None


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _exec_guardian(python, commands_r, replies_w):
    """The guardian as a fresh interpreter running this file (its pipes as stdin and stdout)."""
    import subprocess

    from .config import PASSWORD_ENV  # here: this file also runs on its own, as the guardian
    if not python:
        raise GuardianLost("no Python interpreter to run the guardian")
    try:
        return subprocess.Popen([python, "-S", "-I", os.path.abspath(__file__)], stdin=commands_r,
                                stdout=replies_w, stderr=subprocess.DEVNULL, start_new_session=True,
                                close_fds=True, env={k: v for k, v in os.environ.items() if k != PASSWORD_ENV})
    except OSError as e:
        raise GuardianLost(f"cannot start the guardian ({python}): {e.strerror}") from None


def _fork_guardian(commands_r, replies_w):
    """The guardian forked from this (single-threaded) process: it keeps only its two pipe ends.

    Every other descriptor is closed in it, above all the write end of its command pipe (else the
    pipe would never end when the worker dies) and the worker's slot lock and database files."""
    try:
        pid = os.fork()
    except OSError as e:
        raise GuardianLost(f"cannot start the guardian (fork): {e.strerror}") from None
    if pid:
        return _Forked(pid)
    try:   # the guardian; it never returns into the worker's code
        # The worker's objects are never collected here: a file object of the worker's, finalised
        # by a collection, would close whatever descriptor now has its number (below, they are reused).
        gc.freeze()
        os.setsid()
        commands, replies = (fcntl.fcntl(fd, fcntl.F_DUPFD, 3) for fd in (commands_r, replies_w))
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)   # as the exec'd guardian has them: no terminal, no mpirun output pipe kept open
        try:
            fds = [int(name) for name in os.listdir("/proc/self/fd")]
        except OSError:
            fds = list(range(3, os.sysconf("SC_OPEN_MAX")))
        for fd in fds:
            if fd > 2 and fd not in (commands, replies):
                try:
                    os.close(fd)
                except OSError:
                    pass
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)   # as in a fresh interpreter: not the worker's handlers
        try:
            with open("/proc/self/comm", "w") as f:
                f.write("hipe-guardian")   # what ps and top show (its command line stays the worker's)
        except OSError:
            pass
        os._exit(main(commands, replies))
    except BaseException:
        os._exit(1)


class _Forked:
    """A forked guardian, with the little of subprocess.Popen's interface that Guardian uses."""

    def __init__(self, pid):
        self.pid, self.returncode = pid, None

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        end = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if end is not None and time.monotonic() >= end:
                raise TimeoutError(f"guardian {self.pid} still running after {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self.returncode

    def kill(self):
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    sys.exit(main())
