"""Expected durations of a job made from a file: from earlier attempts of the same obsids in any job
of the database (the master table has no pipetime for them), so that long obsids are claimed first."""
import pytest

SLOW_13_FAIL_12 = ("import time\n"
                   "if obsid == 13:\n    time.sleep(2.2)\n"
                   "if obsid == 12:\n    raise RuntimeError('no')\n")


@pytest.mark.slow
def test_a_job_from_a_file_expects_what_earlier_attempts_took(batch):
    batch.write_cfg(run={"max_attempts": "1"})
    batch.template("first", SLOW_13_FAIL_12)
    assert batch.cli("first", "new", batch.obsid_file([11, 12, 13])).returncode == 0
    assert batch.cli("first", "run").returncode == 1          # obsid 12 failed
    assert batch.calls_list() == [11, 12, 13]                 # no expected durations: obsid order

    batch.template("second", "pass\n")
    r = batch.cli("second", "new", batch.obsid_file([11, 12, 13, 14], "second.txt"))
    assert r.returncode == 0, r.stderr
    expected = {row["obsid"]: row["expected"] for row in batch.table("second").rows()}
    # 13 took its 2.2 s (rounded to seconds, more on a loaded machine); 11 next to nothing; 12 only
    # failed and 14 never ran: nothing known.
    assert expected[13] >= 2 and expected[11] in (0, 1) and expected[12] is None and expected[14] is None, expected
    assert batch.cli("second", "run").returncode == 0
    assert batch.calls_list()[3:] == [13, 11, 12, 14]         # longest first, then the unknown by obsid


def test_a_job_from_a_file_with_no_earlier_attempts_expects_nothing(batch):
    assert batch.cli("other", "new", batch.obsid_file([5, 6])).returncode == 0
    batch.template("j", "pass\n")
    assert batch.cli("j", "new", batch.obsid_file([5, 6, 7], "j.txt")).returncode == 0
    assert [row["expected"] for row in batch.table("j").rows()] == [None, None, None]
