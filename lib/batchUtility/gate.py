"""A gate the forked workers of `run -j` wait at until their parent opens it.

Why not just a pipe whose write end the parent closes: each worker inherits that end at its fork
and closes its copy first thing, but a worker frozen (SIGSTOP, a paused VM) before it could do so
would hold the pipe open, and every sibling would wait on it as long as that worker stays frozen
(seen in CI: the others never started). So the parent writes one byte for each worker, each worker
reads one. Should the parent die before it opens the gate, its workers go through too: at the end
of the pipe, or (a frozen sibling holding it open) once they see their parent gone.
"""
import os
import select

PARENT_LOOK = 0.5   # seconds between a waiting worker's looks at whether its parent is still there


class Gate:
    """Made before the fork; each worker calls in_worker() right after it, then wait(); the parent
    calls open() once, for up to `waiters` workers."""

    def __init__(self, waiters: int):
        self.waiters = waiters
        self.parent = os.getpid()
        self.read_end, self.write_end = os.pipe()

    def in_worker(self) -> None:
        """Right after the fork: the worker keeps only its end."""
        os.close(self.write_end)
        self.write_end = -1

    def wait(self) -> None:
        """Block until the parent opens the gate or has died."""
        try:
            readable = select.poll()   # not select(): a worker of many slots may hold descriptors above 1023
            readable.register(self.read_end, select.POLLIN)
            while not readable.poll(PARENT_LOOK * 1000):
                if os.getppid() != self.parent:
                    return
            os.read(self.read_end, 1)
        finally:
            os.close(self.read_end)
            self.read_end = -1

    def open(self) -> None:
        """In the parent: let up to `waiters` workers through, now and later (a frozen one, once continued)."""
        try:
            left = b"\0" * self.waiters   # one each: 64 KiB of pipe hold 65,536 workers' without blocking
            while left:
                left = left[os.write(self.write_end, left):]
        except BrokenPipeError:   # every worker has ended
            pass
        finally:
            os.close(self.write_end)
            os.close(self.read_end)
            self.write_end = self.read_end = -1
