"""The taker's rule for lost claims (storage.table.LeaseWatch): a claim is due only when the same
renewal (token, beats, heartbeat) was seen at two looks at least its lease apart, on the taker's
monotonic clock; any change of the renewal starts the watch again. Times are given to it, so
these are pure checks of the rule (the clocks themselves are stepped in system/test_identity_clocks.py)."""
from batchUtility.storage.table import LeaseWatch


def test_a_claim_is_due_only_after_a_whole_lease_without_a_renewal():
    watch = LeaseWatch()
    row = (5, "t" * 32, 3, 1000.0, 30.0)                    # obsid, token, beats, heartbeat, lease
    assert watch.look([row], began=100.0, ended=100.5) == {}
    assert watch.look([row], began=130.0, ended=130.2) == {}    # 29.5 s after the first look ended
    assert watch.look([row], began=130.5, ended=130.7) == {5: (("t" * 32, 3, 1000.0), 30.0)}


def test_any_change_of_the_renewal_starts_the_watch_again():
    watch = LeaseWatch()
    watch.look([(5, "a", 3, 1000.0, 30.0)], 100.0, 100.0)
    # a heartbeat (the counter moved) whose time the database's clock set 1000 s back: still a renewal
    assert watch.look([(5, "a", 4, 0.0, 30.0)], 140.0, 140.0) == {}
    assert watch.look([(5, "a", 4, 0.0, 30.0)], 169.0, 169.0) == {}
    assert set(watch.look([(5, "a", 4, 0.0, 30.0)], 170.0, 170.0)) == {5}
    # a new claim of the same obsid (another token, its counter at 0 again)
    assert watch.look([(5, "b", 0, 0.0, 30.0)], 171.0, 171.0) == {}
    # an older version's heartbeat moves the heartbeat, not the counter
    assert watch.look([(5, "b", 0, 1.0, 30.0)], 205.0, 205.0) == {}


def test_each_claim_goes_by_its_own_lease_and_ended_claims_are_forgotten():
    watch = LeaseWatch()
    rows = [(5, "a", 1, 1.0, 10.0), (6, "b", 1, 1.0, 300.0)]
    watch.look(rows, 0.0, 0.0)
    assert set(watch.look(rows, 10.0, 10.0)) == {5}
    watch.look(rows[1:], 20.0, 20.0)                        # obsid 5 no longer running: forgotten
    assert set(watch.seen) == {6}
    watch.forget([6])
    assert watch.seen == {}
