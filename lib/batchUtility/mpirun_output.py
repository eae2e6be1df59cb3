"""mpirun's standard error, relayed to the launcher's by a thread, without the lines Open MPI 4.1
prints on every stop however clean it is (the ranks' own lines pass unchanged):

- `mpirun: Forwarding signal 12 to job`, once for every SIGUSR2 the launcher sends mpirun to stop
  the workers (mpirun's -q would silence it, but also every real error: an unreachable host, too
  few slots);
- `[host:pid] PMIX ERROR: BAD-PARAM in file .../pmix_event_notification.c at line N`, once for each
  rank but the last that ends with a status other than 0 or by a signal: with --enable-recovery
  mpirun fails to tell the other ranks about it, and goes on. A worker stopped by the launcher
  ends with 128+N, one with failed obsids with 1; which worker ended how is in the job table;
- `[warn] Epoll MOD(1) on fd 23 failed. Old events were 6; ...: Bad file descriptor`, from the
  event library inside mpirun, when a stop ends a rank that is still starting;
- once stopping only: `[host:pid] PMIX ERROR: UNREACHABLE in file .../ptl_base_connection_hdlr.c at
  line N`, when a stop ends a rank while it connects to mpirun. mpirun may then hang, and the
  launcher says so in its own words when it ends it (mpi_launch.HangWatch).

The relay also notes the worst exit status (2, 3 or 4) a rank told the launcher in a line of its
own, which mpirun, run with --enable-recovery, does not pass on: that line is the launcher's alone
and dropped (rank_status).

The relay always reads on, whatever becomes of its own writes, so mpirun never blocks on a full
pipe. Should the launcher itself be killed (SIGKILL), mpirun (which ignores SIGPIPE) runs on and
only its later stderr lines are lost.
"""
import os
import re
import signal
import threading
from typing import Callable, Optional

from .rank_status import Listener

NOISE = re.compile(rb"\S+: Forwarding signal %d to job|\[[^\]\s]*\] PMIX ERROR: BAD-PARAM in file "
                   rb"\S*pmix_event_notification\.c at line \d+|\[warn\] Epoll [A-Z]+\(\d+\) on fd \d+ failed\. "
                   rb"[^\n]*: Bad file descriptor" % int(signal.SIGUSR2))
STOP_NOISE = re.compile(rb"\[[^\]\s]*\] PMIX ERROR: UNREACHABLE in file \S*ptl_base_connection_hdlr\.c at line \d+")
DRAIN_PATIENCE = 5.0  # seconds to wait, once mpirun is gone, for the pipe's end (a rank it orphaned may hold it)


class Relay:
    """Copies whole lines from `pipe` (mpirun's stderr) to file descriptor `to`, dropping NOISE,
    STOP_NOISE once stopping() is true, and the ranks' status lines (`listener`, noted there)."""

    def __init__(self, pipe, to: int, stopping: Callable[[], bool] = lambda: False,
                 listener: Optional[Listener] = None):
        self.pipe, self.to, self.stopping = pipe, to, stopping
        self.listener = listener or Listener(None)   # its worst: read once closed
        self.thread: Optional[threading.Thread] = threading.Thread(target=self._run, name="mpirun-stderr",
                                                                   daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rest = b""
        fd = self.pipe.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            *lines, rest = (rest + chunk).split(b"\n")
            self._write(b"".join(line + b"\n" for line in lines if not self._dropped(line)))
        if rest and not self._dropped(rest):
            self._write(rest)

    def _dropped(self, line: bytes) -> bool:
        return bool(NOISE.fullmatch(line) or (STOP_NOISE.fullmatch(line) and self.stopping())
                    or self.listener.heard(line))

    def _write(self, data: bytes) -> None:
        while data and self.to >= 0:
            try:
                data = data[os.write(self.to, data):]
            except InterruptedError:
                continue
            except OSError:   # stderr closed or gone: read on regardless, so that mpirun never blocks
                self.to = -1

    def close(self) -> None:
        """Wait (a little) for what mpirun wrote last to be passed on; called once mpirun is gone."""
        if self.thread is not None:
            self.thread.join(DRAIN_PATIENCE)
            if not self.thread.is_alive():
                self.pipe.close()
            self.thread = None
