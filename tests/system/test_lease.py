"""The lease keeper (lib/batchUtility/lease.py): a real guardian and a real job table."""
import signal
import time

from batchUtility.errors import DatabaseUnavailable
from batchUtility.guardian import Guardian
from batchUtility.lease import LeaseKeeper
from batchUtility.model import Lease, Outcome
from support import new_job, wait_for


def test_the_lease_is_renewed_after_many_short_claims(batch):
    """The keeper's thread is not woken for each claim (only when it would sleep past the first
    renewal): after 40 claims held and released quickly, a claim held longer is still renewed
    about every `every` seconds, each renewal moving the row's lease on."""
    obsids = new_job(batch, range(1342000001, 1342000042))
    table = batch.table("j")
    guardian = Guardian()
    every = 0.5
    keeper = LeaseKeeper(table, guardian, every)   # one connection, as a worker shares it
    try:
        for _ in obsids[:-1]:
            claimed_at = time.monotonic()
            claim = table.claim("host", "1/1", 1, lease=30)
            keeper.hold(claim, claimed_at)
            assert table.finish(claim, Outcome(True), 3) == "done"
            keeper.release()
        claimed_at = time.monotonic()
        claim = table.claim("host", "1/1", 1, lease=30)
        keeper.hold(claim, claimed_at)
        first = table.row(claim.obsid)["heartbeat"]
        expiries = [table.row(claim.obsid)["lease_expires"]]
        for renewal in range(3):
            wait_for(lambda: table.row(claim.obsid)["lease_expires"] > expiries[-1], 10 * every,
                     f"renewal {renewal + 1} of the lease")
            expiries.append(table.row(claim.obsid)["lease_expires"])
        assert keeper.state() is Lease.HELD and table.row(claim.obsid)["heartbeat"] > first
        keeper.release()
    finally:
        keeper.close()
        guardian.close()
        table.close()


class _Unanswered:
    """The worker's table with a database that no longer answers renewals."""

    def __init__(self, table):
        self._table = table

    def heartbeat(self, claim):
        raise DatabaseUnavailable("no answer")

    def __getattr__(self, name):
        return getattr(self._table, name)


class _Said:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda msg, *args: self.lines.append((level, msg % args))


def test_a_renewal_failing_while_hipe_is_stopped_says_so(batch):
    """A renewal that fails while the worker is stopping HIPE (a SIGTERM came) says HIPE is being
    stopped, not that it keeps running until the fence; without a stop it says HIPE keeps running."""
    new_job(batch, [1342000001, 1342000002])
    table = batch.table("j")
    for stopping, expected in ((signal.SIGTERM, "HIPE is being stopped (SIGTERM)"), (0, "HIPE keeps running")):
        guardian, said = Guardian(), _Said()
        keeper = LeaseKeeper(_Unanswered(table), guardian, 0.2, say=said, stopping=lambda: stopping)
        try:
            claimed_at = time.monotonic()
            claim = table.claim("host", "1/1", 1, lease=30)
            keeper.hold(claim, claimed_at)
            wait_for(lambda: keeper.state() is Lease.UNKNOWN, 10, "the failed renewal")
            assert [level for level, _ in said.lines] == ["warning"], said.lines
            assert expected in said.lines[0][1] and "unreachable" in said.lines[0][1], said.lines
            keeper.release()
        finally:
            keeper.close()
            guardian.close()
    table.close()
