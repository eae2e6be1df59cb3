"""The errors a user sees: each carries the one line to print and the exit status to leave with."""


class BatchError(Exception):
    """An error to report as one line and an exit status, without a traceback."""

    exit_status = 1


class BadInput(BatchError):
    """Bad configuration, arguments or input files. Nothing has been changed."""

    exit_status = 2


class DatabaseUnavailable(BatchError):
    """The database could not be reached for longer than we were willing to wait."""

    exit_status = 3
