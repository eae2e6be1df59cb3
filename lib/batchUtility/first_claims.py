"""The first obsid of each worker `run -j` forks, claimed by the parent in one transaction.

Why: 64 workers each claiming their first obsid queue on SQLite's one write lock (each waiting in
its busy handler), so the last slot started a third of a second after the first
(tests/bench/RESULTS.md). Instead, each worker gets ready (guardian forked, lease keeper running),
says so, and waits; the parent claims one obsid for every worker ready, in the workers' names
(host, slot, pid and the pid's start time: the claims are theirs as if each had made its own), and
hands them over through memory shared across the fork; then all start at once.

Nothing is lost on the way: a worker not ready within READY_PATIENCE, or left out, claims its own
as before. When the parent cannot say what became of its claims (the database failed it, the
parent died, the news did not fit), each worker looks for claims made in its name
(JobTable.claimed_for): only that process matches pid, start time, host and machine. A claim
handed to a worker that stops before running it goes back to pending uncounted, as any claim taken
ahead (Worker._put_back_next). A worker killed holding one is a dead worker of this host.
"""
import logging
import mmap
import os
import pickle
import select
import struct
import time
from typing import Callable, Dict, Optional, Set

from .errors import BatchError
from .gate import Gate
from .procfs import machine_identity, process_start
from .slot import Slot
from .storage import NextClaim, open_table

log = logging.getLogger(__name__)

READY_PATIENCE = 10.0   # seconds the parent waits for its workers to be ready; the late ones claim their own
CLAIM_PATIENCE = 5.0    # seconds the parent tries to claim; then each worker claims its own
LOOK_EVERY = 0.05       # seconds between the parent's looks for a stop or a worker that ended unready

# What the shared page says, in its first byte (0: nothing written, the parent is gone).
NOT_TRIED, CLAIMED, UNCERTAIN = 1, 2, 3
_HEADER = struct.Struct("=BI")   # what it says, and the length of the claims' pickle after it
_PID = struct.Struct("=i")


class FirstClaims:
    """Made before the fork; the parent calls claim() once every worker is forked, each worker
    take() once it is ready to run HIPE."""

    def __init__(self, workers: int):
        self.ready_r, self.ready_w = os.pipe()   # each worker writes its pid when ready
        self.gate = Gate(workers)                # the parent opens it once the claims are written
        self.page = mmap.mmap(-1, 4096 + 512 * workers)   # anonymous and shared: written by the parent

    # ---------------------------------------------------------------- in the worker

    def in_worker(self) -> None:
        """Right after the fork: the worker keeps only its ends."""
        os.close(self.ready_r)
        self.gate.in_worker()

    def take(self, table, slot: Slot, lease: float) -> Optional[NextClaim]:
        """Say this worker is ready, wait for the parent's claims, and return this worker's: a
        NextClaim whose claim is set (run it), or which says nothing is pending; None to claim as usual."""
        pid = os.getpid()
        ready_at = time.monotonic()   # before the parent's claim began: a lease counted from here is not too long
        try:
            os.write(self.ready_w, _PID.pack(pid))
        except BrokenPipeError:   # the parent listens no more (a stop came): it claims nothing for this worker
            pass
        finally:
            os.close(self.ready_w)
        self.gate.wait()
        try:
            said, length = _HEADER.unpack_from(self.page, 0)
            if said == CLAIMED:   # an index {pid: (offset, length)}, then each worker's claim alone
                index = pickle.loads(self.page[_HEADER.size:_HEADER.size + length])
                if pid not in index:
                    return None
                offset, size = index[pid]
                base = _HEADER.size + length
                return pickle.loads(self.page[base + offset:base + offset + size])
        finally:
            self.page.close()
        if said == NOT_TRIED:
            return None
        found = table.claimed_for(slot.host, pid, process_start(pid), machine_identity(), lease)
        if not found:
            return None
        log.info("took up the claim of obsid %d made for this worker by its parent", found[0].obsid)
        for extra in found[1:]:   # never made: one claim per worker
            table.requeue(extra, "claimed twice for one worker")
        return NextClaim(slot.host, slot.name, pid, lease, claim=found[0], asked_at=ready_at)

    # ---------------------------------------------------------------- in the parent

    def forked(self) -> None:
        """Every worker is forked: the parent keeps only its ends."""
        os.close(self.ready_w)

    def claim(self, cfg, job: str, children: Dict[int, int], size: int, host: str,
              stopping: Callable[[], bool], claim_until: Optional[float] = None) -> None:
        """Wait for the workers (pid -> rank) to be ready, claim one obsid for each ready one, hand the
        claims over and let them start. Never raises for the database: the workers then claim their own."""
        said, claims = NOT_TRIED, {}
        try:
            ready = self.wait_ready(children, stopping)
            if ready and not stopping() and (claim_until is None or time.monotonic() < claim_until):
                said = UNCERTAIN
                claims = self.claim_ready(cfg, job, {pid: children[pid] for pid in ready}, size, host, stopping)
                said = CLAIMED
        except BatchError as e:
            log.warning("could not claim the workers' first obsids (%s): each claims its own", e)
        except Exception:   # a defect here must not end the run: the workers claim as they always could
            log.exception("could not claim the workers' first obsids: each claims its own")
        finally:
            self.hand_over(said, claims)

    def wait_ready(self, children: Dict[int, int], stopping: Callable[[], bool]) -> Set[int]:
        """The workers ready, once all are, or some ended meanwhile, or READY_PATIENCE passed, or a stop came."""
        ready: Set[int] = set()
        left = b""
        deadline = time.monotonic() + READY_PATIENCE
        try:
            while not stopping() and time.monotonic() < deadline:
                waiting = [pid for pid in children if pid not in ready]
                if not waiting or all(_ended(pid) for pid in waiting):
                    break
                if select.select([self.ready_r], [], [], LOOK_EVERY)[0]:
                    data = left + os.read(self.ready_r, _PID.size * len(children))
                    whole = len(data) - len(data) % _PID.size
                    ready.update(p for (p,) in _PID.iter_unpack(data[:whole]))
                    left = data[whole:]
        finally:
            os.close(self.ready_r)
        return {pid for pid in ready if pid in children}

    def claim_ready(self, cfg, job: str, ready: Dict[int, int], size: int, host: str,
                    stopping: Callable[[], bool]) -> Dict[int, NextClaim]:
        """One obsid for each ready worker (pid -> rank) still alive, in one transaction: {pid: its NextClaim}."""
        machine = machine_identity()
        workers = {}
        for pid, rank in sorted(ready.items(), key=lambda item: item[1]):
            started = process_start(pid)
            if started is not None:   # not one that died meanwhile
                workers[pid] = NextClaim(host, Slot(rank, size, host).name, pid, cfg.run.lease, started, machine)
        if not workers:
            return {}
        table = open_table(cfg.sql, job, CLAIM_PATIENCE, call_timeout=cfg.run.call_timeout)
        try:
            asked_at = time.monotonic()   # the leases run from before the transaction began
            table.claim_for(list(workers.values()), interrupted=stopping)
        finally:
            table.close()
        for w in workers.values():
            w.asked_at = asked_at
        return workers

    def hand_over(self, said: int, claims: Dict[int, NextClaim]) -> None:
        """Write what became of the claims where the workers read it, and open their gate."""
        try:
            if said == CLAIMED:
                # Each worker unpickles its own claim only: 64 workers each reading all 64 took 64 ms of CPU.
                blobs = {pid: pickle.dumps(claim) for pid, claim in claims.items()}
                index, at = {}, 0   # where each worker's claim is, after the index
                for pid, blob in blobs.items():
                    index[pid] = (at, len(blob))
                    at += len(blob)
                data = pickle.dumps(index)
                base = _HEADER.size + len(data)
                if base + at > len(self.page):   # cannot happen with 512 bytes a worker
                    said, data = UNCERTAIN, b""
                else:
                    self.page[base:base + at] = b"".join(blobs.values())
                self.page[_HEADER.size:_HEADER.size + len(data)] = data
                self.page[:_HEADER.size] = _HEADER.pack(said, len(data))
            else:
                self.page[:_HEADER.size] = _HEADER.pack(said, 0)
        finally:
            self.gate.open()
            self.page.close()


def _ended(pid: int) -> bool:
    """Whether the worker has ended (left for the parent's wait to collect)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
