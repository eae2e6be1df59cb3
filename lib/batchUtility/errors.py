"""The errors a user sees: each carries its facts, a one-line message and the exit status to leave with.

The domain errors (JobMissing, JobExists, NotAJobTable, TemplateMissing) carry data; their message
names no command. The command line words them, adding what to type next (`frontend.error_line`).
"""
from pathlib import Path
from typing import Iterable, Optional, Sequence


class BatchError(Exception):
    """An error to report as one line and an exit status, without a traceback."""

    exit_status = 1


class BadInput(BatchError):
    """Bad configuration, arguments or input files. Nothing has been changed."""

    exit_status = 2


class DatabaseUnavailable(BatchError):
    """The database could not be reached for longer than we were willing to wait."""

    exit_status = 3


class JobMissing(BadInput):
    """The job's table is not there (or, with SQLite, not even the database file)."""

    def __init__(self, job: str, database: str, database_missing: bool = False):
        self.job, self.database, self.database_missing = job, database, database_missing
        super().__init__(f"no job '{job}': {database} does not exist yet" if database_missing
                         else f"no job '{job}' in {database}")


class JobExists(BadInput):
    """`new` without add found the job there already."""

    def __init__(self, job: str, total: int):
        self.job, self.total = job, total
        super().__init__(f"job '{job}' exists already ({total} obsids)")


class NotAJobTable(BadInput):
    """A table of the job's name exists but is not a job table of this tool; it is left untouched."""

    def __init__(self, table: str, database: str, columns: Sequence[str]):
        self.table, self.database, self.columns = table, database, tuple(columns)
        super().__init__(f"table '{table}' in {database} is not a job table of this tool "
                         f"(columns: {', '.join(self.columns)}); it was left untouched")


class TemplateMissing(BadInput):
    """The job's HIPE script template is not where the job's folder says."""

    def __init__(self, job: str, path: Path):
        self.job, self.path = job, path
        super().__init__(f"template {path} not found: write the job's HIPE script there")


class SetupBroken(BatchError):
    """HIPE or the job's template vanished mid-run: the obsid was put back (uncounted), the worker stops.

    Unlike BadInput, something did change: the obsid was claimed and put back to pending.
    """

    exit_status = 2

    def __init__(self, reason: str, obsid: int):
        self.reason, self.obsid = reason, obsid
        super().__init__(f"{reason}; obsid {obsid} put back to pending and worker stopped")


class BlackHole(BatchError):
    """This worker's attempts all fail at once while other workers succeed: its host, not the obsids,
    is broken (a full disk, a missing mount, a broken Java). It stops so as not to eat the job."""

    exit_status = 2

    def __init__(self, failures: int, within: float, elsewhere: int, last_reason: str):
        self.failures, self.within, self.elsewhere, self.last_reason = failures, within, elsewhere, last_reason
        super().__init__(f"this worker's last {failures} attempts all failed within {within:g} s each while other "
                         f"workers finished {elsewhere} obsids: this host looks broken (last: {last_reason[:160]}); "
                         "worker stopped, the job goes on elsewhere")


class NoRoom(BatchError):
    """The heap an obsid needs is more than this worker could ever have (its node's memory, or its
    cgroup's limit): waiting would be for good. The obsid was put back (uncounted), the worker stops."""

    exit_status = 4

    def __init__(self, obsid: int, heap: str, most: int, where: str):
        self.obsid, self.heap, self.most = obsid, heap, most
        super().__init__(f"obsid {obsid} needs a Java heap of {heap} but this worker can have at most {most} MiB "
                         f"({where}); obsid put back to pending for a worker with more memory, and worker stopped")


# The statuses a worker leaves with that every launcher passes on, the highest once all have ended:
# its setup broke (2), the database stayed away (3), an obsid's heap can never fit (4).
PASSED_ON = (SetupBroken.exit_status, DatabaseUnavailable.exit_status, NoRoom.exit_status)


def worst_passed_on(statuses: Iterable[int]) -> Optional[int]:
    """The highest of the workers' statuses a launcher passes on, or None if there is none."""
    return max((s for s in statuses if s in PASSED_ON), default=None)
