"""`run --max-time` values (tests/system/test_everyday.py runs the commands)."""
import pytest


@pytest.mark.parametrize("text,seconds", [("90m", 5400), ("8h", 28800), ("45s", 45), ("2d", 172800), ("30", 30),
                                          ("1.5h", 5400)])
def test_max_time_values(text, seconds):
    from batchUtility.cli import duration
    assert duration(text) == seconds
