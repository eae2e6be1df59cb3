"""The unit layer: pure functions and the command line in-process, no server. Here `batch` is SQLite
only; the same tests' MariaDB runs are in tests/integration."""
import pytest


@pytest.fixture(params=["sqlite"])
def batch(request, sqlite_batch):
    return sqlite_batch
