"""The integration layer: the session's MariaDB, one process. Here `batch` is MariaDB only; the same
tests' SQLite runs are in tests/unit."""
import pytest


@pytest.fixture(params=["mysql"])
def batch(request, mysql_batch):
    return mysql_batch
