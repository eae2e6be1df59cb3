"""Keeping a claim's lease: a thread that renews it while HIPE runs and tells the guardian how long
HIPE may go on.

The heartbeat runs off the worker's main thread, so that the main thread's wait for HIPE (stop
signals, [hipe] timeout) never sits behind a database call: that wait reads only what the keeper
found (`state()`), never the database. With the database frozen, a heartbeat blocks for at most
one call's timeout while the main thread still acts within a fraction of a second.

One connection per worker: the heartbeat goes through the worker's own job table, whose engine
lets one thread at a time use the connection (a lock held for one try of a transaction, never
through the wait between tries). What bounds a heartbeat's wait for it: while HIPE runs, the main
thread makes no database call at all (it claims before `hold`, and records after `hipe_ended`),
so the heartbeat finds the connection free; while the outcome is recorded, the main thread's try
is a few short statements, each bounded by the call timeout. A heartbeat waits at most one call
timeout for the connection, then counts as unanswered (UNKNOWN), as a frozen server's would.

A server change (a connection after a loss reaching another server: the next node of a host list, a
promoted replica) makes the keeper renew at once: the renewal names the claim's token, so a claim
the new server does not hold (an asynchronous replica that never received it) is found LOST and
HIPE is stopped, rather than at the next heartbeat. A changed server that refuses the renewal (a
replica still read-only) is asked with a read whether it holds the claim at all: if not, LOST.

Self-fencing: each renewal that succeeded moves the guardian's deadline to (the moment the renewal
*began*) + FENCE_SHARE x lease. The database set the row's expiry to its own clock + lease at some
moment after that beginning, so the guardian kills HIPE at least (1 - FENCE_SHARE) x lease before
anyone may take the obsid back, however long the worker stays frozen or cut off.
"""
import logging
import math
import signal
import threading
import time
from typing import Callable, Optional

from .errors import BatchError
from .guardian import Guardian, GuardianLost
from .model import FENCE_SHARE, Claim, Lease
from .storage import JobTable

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the lease of the claim held (one at a time) every `every` seconds, in a thread."""

    def __init__(self, table: JobTable, guardian: Guardian, every: float, say=log,
                 stopping: Callable[[], int] = lambda: 0):
        """table: the worker's own job table, whose connection the heartbeats share (see above); the
        keeper never closes it. stopping(): the signal stopping the worker (0: none), for what a failed
        renewal says while HIPE is being stopped."""
        self._table = table
        self._stopping = stopping
        self.guardian = guardian
        self.every = every
        self.say = say
        self._cond = threading.Condition()
        self._claim: Optional[Claim] = None
        self._state = Lease.HELD
        self._hipe_running = False   # what a failed renewal says: HIPE runs on, or has ended already
        self._next = 0.0
        self._wakes_at = math.inf   # when the thread's wait ends by itself (inf: it waits for a claim)
        self._closing = False
        self._server_changes = 0   # the table's count of server changes when the claim was taken
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()
        table.on_server_change(self._server_changed)

    def _server_changed(self) -> None:
        """A connection reached another server (a fail-over): the claim is checked there at once, not at
        the next heartbeat. A heartbeat that reconnected checked it in the same transaction already."""
        with self._cond:
            if self._claim is not None:
                self._next = time.monotonic()
                self._cond.notify()

    def hold(self, claim: Claim, claimed_at: float) -> None:
        """Keep `claim`'s lease from now on; claimed_at is time.monotonic() taken before the claim
        began. The guardian hears the first deadline with HIPE's launch (which fails, and HIPE with
        it, if the guardian cannot be told)."""
        with self._cond:
            self._claim, self._state, self._hipe_running = claim, Lease.HELD, True
            self._server_changes = getattr(self._table, "server_changes", 0)
            self._next = claimed_at + self.every
            self.guardian.fence_at(claimed_at + FENCE_SHARE * claim.lease, with_launch=True)
            # Woken only if it would sleep past the first renewal: with obsids shorter than the
            # heartbeat, two wake-ups of this thread per obsid were a third of a worker's context switches.
            if self._next < self._wakes_at:
                self._cond.notify()

    def hipe_ended(self) -> None:
        """HIPE has ended (or never started): the lease is renewed on while the outcome is recorded
        (or the obsid put back), but a renewal that fails no longer says HIPE runs on."""
        with self._cond:
            self._hipe_running = False

    def release(self) -> None:
        """The claim's outcome is recorded (or it is lost): stop renewing it."""
        with self._cond:
            self._claim = None   # not woken: at its wait's end it finds nothing to renew

    def state(self) -> Lease:
        """What the last renewal found: HELD, LOST (taken back: stop HIPE) or UNKNOWN (no answer)."""
        with self._cond:
            return self._state

    def close(self) -> None:
        with self._cond:
            self._closing, self._claim = True, None
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and (self._claim is None or time.monotonic() < self._next):
                    self._wakes_at = math.inf if self._claim is None else self._next
                    self._cond.wait(None if self._claim is None else self._next - time.monotonic())
                self._wakes_at = -math.inf   # awake: it looks at the claim before it waits again
                if self._closing:
                    return
                claim = self._claim
            began = time.monotonic()
            found = self._renew(claim)
            with self._cond:
                if self._claim is not claim:
                    continue   # released meanwhile: this answer is about a claim that is over
                if found is Lease.HELD:
                    self._fence_at(began + FENCE_SHARE * claim.lease)
                self._report(claim, found)
                self._state = found if self._state is not Lease.LOST else Lease.LOST
                self._next = began + self.every

    def _fence_at(self, deadline: float) -> None:
        try:
            self.guardian.fence_at(deadline)
        except GuardianLost as e:   # the main thread sees the guardian gone and stops HIPE
            log.debug("%s", e)

    def _renew(self, claim: Claim) -> Lease:
        try:
            found = self._table.heartbeat(claim)
            if found is Lease.UNKNOWN and getattr(self._table, "server_changes", 0) != self._server_changes:
                return self._still_held(claim)
            return found
        except BatchError as e:
            # The table itself may be gone (`wipe --force`, or a new job of the same name): then so is the claim.
            # One try, as the heartbeat's: the keeper never sits in the worker's patience.
            try:
                if not self._table.exists(patience=0):
                    return Lease.LOST
            except BatchError:
                pass
            log.debug("heartbeat failed: %s", e)
            return Lease.UNKNOWN

    def _still_held(self, claim: Claim) -> Lease:
        """The server changed since the claim was taken and refuses the renewal (a read-only replica a
        fail-over reached before its promotion): a read says whether it holds the claim at all. If not,
        the claim was never replicated to it and is gone: LOST, HIPE is stopped at once."""
        try:
            held = self._table.holds(claim)
        except BatchError:
            return Lease.UNKNOWN
        if not held:
            self.say.error("the database server changed (now node %s) and does not hold this claim: it never "
                           "received it (asynchronous replication)", self._table.node)
        return Lease.UNKNOWN if held else Lease.LOST

    def _report(self, claim: Claim, found: Lease) -> None:
        if found is self._state:
            return
        if found is Lease.UNKNOWN and self._hipe_running and self._stopping():
            self.say.warning("database unreachable; HIPE is being stopped (%s), and what became of the obsid waits "
                             "for the database (other workers take it back after the lease of %g s)",
                             signal.Signals(self._stopping()).name, claim.lease)
        elif found is Lease.UNKNOWN and self._hipe_running:
            self.say.warning("database unreachable; HIPE keeps running until %.0f%% of the lease (%g s) has "
                             "passed without a renewal", 100 * FENCE_SHARE, claim.lease)
        elif found is Lease.UNKNOWN:
            self.say.warning("database unreachable; HIPE has ended already, and what became of the obsid waits "
                             "for the database (other workers take it back after the lease of %g s)", claim.lease)
        elif found is Lease.LOST and self._hipe_running:
            self.say.error("claim was taken back (its lease of %g s ran out, or the job was wiped); stopping HIPE", claim.lease)
        elif found is Lease.LOST:
            self.say.error("claim was taken back (its lease of %g s ran out, or the job was wiped) after HIPE had ended",
                           claim.lease)
        elif found is Lease.HELD and self._state is Lease.UNKNOWN:
            self.say.info("database back; lease renewed")
