"""The job table: one row per obsid and what became of it, on MySQL/MariaDB or SQLite.

`JobTable` (table.py) states what each operation guarantees; `MySQLJobTable` (mysql.py) and
`SQLiteJobTable` (sqlite.py) are two dialects of the same idea. All the project's SQL is in this
package: each statement whole and named in statements.py, with named parameters (`:obsid`; MySQL's
driver gets `%(obsid)s`). Every difference between the dialects is in its class: its block of
attributes, and its hooks (connections, errors, and on MySQL a worker's claim and outcome sent as one
multi-statement each, its COMMIT included: one round trip each, or a success and the next claim
together in one: JobTable.finish's `then`). Identifiers are judged and quoted in
the engine and nowhere else (`model.check_identifier`, `Engine.quote`); every value is a parameter.

    statements.py   every statement, whole and named
    engine.py       the connection, the statement filled in, transactions retried whole
    reads.py        the reads of status, history and the report
    table.py        JobTable: the job table's life, what workers do, what users do
    durations.py    the site's learned durations (site__durations), kept by each success's transaction, read by `new`
    sqlite.py       SQLiteJobTable
    mysql.py        MySQLJobTable
"""
from typing import Any, Callable, Optional

from ..model import INTERACTIVE_PATIENCE, Claim, Lease, Outcome
from .engine import DEFAULT_CALL_TIMEOUT, STREAM_ROWS, ConnectionRoom, Engine
from .mysql import MySQLJobTable
from .reads import Reads
from .sqlite import SQLiteJobTable
from .statements import *  # noqa: F403 - every statement, by its name (storage.CLAIM), as before the split
from .statements import RESULTS_SUFFIX, in_list
from .table import DEFAULT_LEASE, JobTable, NextClaim

__all__ = ["DEFAULT_CALL_TIMEOUT", "DEFAULT_LEASE", "RESULTS_SUFFIX", "STREAM_ROWS", "Claim", "ConnectionRoom", "Engine",
           "JobTable", "Lease", "MySQLJobTable", "NextClaim", "Outcome", "Reads", "SQLiteJobTable", "in_list", "open_table"]


def open_table(settings: Any, job: str, patience: float = INTERACTIVE_PATIENCE, create: bool = False,
               interrupted: Optional[Callable[[], bool]] = None, call_timeout: float = DEFAULT_CALL_TIMEOUT) -> JobTable:
    """The job table of `job` on the backend `settings` names ([sql] of batch.cfg)."""
    cls = SQLiteJobTable if settings.backend == "sqlite" else MySQLJobTable
    return cls(job, settings, patience=patience, create=create, interrupted=interrupted, call_timeout=call_timeout)
