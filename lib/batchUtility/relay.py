"""`run -j N` on a terminal: the workers' lines, with the job's progress on one line below them.

The workers are forked children. Writing to the terminal themselves, their lines would land in
the middle of the progress line. So on a terminal they write into pipes instead, and the parent
alone writes to the terminal: it erases the progress line, writes the workers' complete lines,
and draws the progress line again below them. The figures are read from the database by a
thread of the parent, so that a slow database never holds up the workers' lines (a worker whose
pipe is full would wait). Piped or with -q, none of this happens: the workers write as always.
"""
import fcntl
import logging
import os
import select
import shutil
import sys
import threading
import time
from typing import Any, Callable, List, Optional

from . import report
from .errors import BatchError

log = logging.getLogger(__name__)

ERASE = b"\r\x1b[K"    # to the start of the line, and clear it
EVERY = 1.0            # seconds between readings of the figures, at least
COST_SHARE = 10        # ... and at least this many times what the last reading took (a million-row job)


class TerminalRelay:
    """The pipes of the workers' standard output (and standard error, when it is this terminal
    too), and the progress line. `figures()` returns (counts, Pace), or raises BatchError."""

    def __init__(self, figures: Callable[[], Any]):
        self.figures = figures
        self.streams = [sys.stdout] + ([sys.stderr] if sys.stderr.isatty() else [])
        self.pipes = [os.pipe() for _ in self.streams]
        self.pending = [b"" for _ in self.streams]   # the start of a line not yet ended
        self.latest: Optional[Any] = None             # what the last reading found
        self.shown: Optional[Any] = None
        self.drawn = False
        self.stop = threading.Event()
        self.reader: Optional[threading.Thread] = None

    # ----------------------------------------------------------------- in the worker
    def in_worker(self) -> None:
        """Called first in each forked worker: its output goes into the pipes."""
        for stream, (read_end, write_end) in zip(self.streams, self.pipes):
            stream.flush()
            os.dup2(write_end, stream.fileno())
            os.close(read_end)
            os.close(write_end)

    # ----------------------------------------------------------------- in the parent
    def start(self) -> None:
        """Called in the parent once every worker is forked."""
        for read_end, write_end in self.pipes:
            os.close(write_end)   # the workers' copies alone: a pipe without them reads empty
            fcntl.fcntl(read_end, fcntl.F_SETFL, fcntl.fcntl(read_end, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.reader = threading.Thread(target=self._read_figures, name="progress", daemon=True)
        self.reader.start()

    def pump(self, timeout: float) -> None:
        """Relay what the workers wrote within `timeout` seconds, and redraw if anything changed."""
        ends = [read_end for read_end, _ in self.pipes]
        try:
            ready, _, _ = select.select(ends, [], [], timeout)
        except InterruptedError:
            ready = []
        lines = [self._complete_lines(i) if end in ready else b"" for i, end in enumerate(ends)]
        if any(lines) or self.latest is not self.shown:
            self._draw(lines)

    def finish(self, final_figures: bool = True) -> None:
        """After the last worker ended: relay what is left, draw the final figures, end the line."""
        self.stop.set()
        if self.reader is not None:
            # After a stop there are no final figures to wait for: a reading under way (a slow
            # database) is left to the daemon thread rather than holding up the exit.
            self.reader.join(timeout=30 if final_figures else 0)
        lines = [self._complete_lines(i) for i in range(len(self.pipes))]
        lines = [chunk + (self.pending[i] + b"\n" if self.pending[i] else b"") for i, chunk in enumerate(lines)]
        if final_figures and not (self.reader and self.reader.is_alive()):
            self._read_once()
        self._draw(lines)
        self._write(sys.stdout, b"\n")
        for read_end, _ in self.pipes:
            os.close(read_end)

    def _complete_lines(self, i: int) -> bytes:
        """What pipe i holds now, up to its last complete line (the rest waits for its end)."""
        data = self.pending[i]
        while True:
            try:
                chunk = os.read(self.pipes[i][0], 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        cut = data.rfind(b"\n") + 1
        self.pending[i] = data[cut:]
        return data[:cut]

    def _draw(self, lines: List[bytes]) -> None:
        if self.drawn:
            self._write(sys.stdout, ERASE)
        for stream, chunk in zip(self.streams, lines):
            if chunk:
                self._write(stream, chunk)
        self.shown = self.latest
        if self.shown is not None:
            counts, pace = self.shown
            width = shutil.get_terminal_size().columns - 1   # a line that wrapped could not be erased
            self._write(sys.stdout, report.status_one_line(counts, pace, width).encode())
            self.drawn = True

    @staticmethod
    def _write(stream, data: bytes) -> None:
        try:
            stream.flush()
            stream.buffer.write(data)
            stream.buffer.flush()
        except OSError:
            # The terminal is gone (EIO). The workers go on (their record is the job table) and the
            # pipes are still drained, so none of them blocks; what would be shown goes nowhere, as
            # does the summary at the end, instead of an error that would lose the workers' statuses.
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())

    def _read_figures(self) -> None:
        while not self.stop.is_set():
            took = self._read_once()
            self.stop.wait(max(EVERY, COST_SHARE * took))

    def _read_once(self) -> float:
        began = time.monotonic()
        try:
            self.latest = self.figures()
        except BatchError as e:   # the progress line waits; the workers have their own patience
            log.debug("progress line: %s", e)
        return time.monotonic() - began
