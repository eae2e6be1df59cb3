"""The lease keeper (lib/batchUtility/lease.py): a real guardian and a real job table."""
import time

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
