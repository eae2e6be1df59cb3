"""The reads behind `status`, `history` and the report: each one read-only transaction.

A mixin of `JobTable` (it runs on the engine's `_transaction`, `_execute` and `_stream`): none of
these writes, and none waits for a writer.
"""
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ..model import DONE, PENDING, STATES, as_seconds
from .statements import (
    ALL_ROWS,
    ANY_RUNNING,
    BY_HOST,
    COUNT_ALL,
    COUNT_BY_STATE,
    FINISHES_SINCE,
    FIRST_DONE,
    FIRST_FAILURES,
    HISTORY_ALL,
    HISTORY_OF_OBSID,
    HISTORY_SINCE,
    ONE_ROW,
    RECENT_DONE,
    RESULT_NAMES,
    RESULTS_OF_DONE,
    RUNNING_NOW,
    STATE_BY_EXPECTED,
)


class Reads:
    """What the operator reads of a job: counts, failures, hosts, history, rows, the pace, results."""

    # ----------------------------------------------------------------- counts, failures, hosts, history, rows
    def _count(self, cur: Any) -> int:
        return int(self._execute(cur, COUNT_ALL).fetchone()[0])

    def total(self) -> int:
        """How many obsids the job holds."""
        return self._transaction(self._count, "counting obsids", write=False)

    def counts(self, *, interrupted: Optional[Callable[[], bool]] = None) -> Dict[str, int]:
        """How many obsids are in each state (every state present, zero or not)."""
        def count(cur):
            found = {state: int(n) for state, n in self._execute(cur, COUNT_BY_STATE).fetchall()}
            return {**dict.fromkeys(STATES, 0), **found}
        return self._transaction(count, "counting obsids", write=False, interrupted=interrupted)

    def any_running(self, *, interrupted: Optional[Callable[[], bool]] = None) -> bool:
        """Whether any obsid of the job is running (cheap at any size: one index probe)."""
        return self._transaction(lambda cur: self._execute(cur, ANY_RUNNING).fetchone() is not None,
                                 "looking for running obsids", write=False, interrupted=interrupted)

    def failures(self, limit: int = 10) -> List[Tuple[int, int, str]]:
        """The first failed obsids: (obsid, attempts, reason)."""
        def first(cur):
            rows = self._execute(cur, FIRST_FAILURES, {"limit": limit}).fetchall()
            return [(int(obsid), int(attempts), reason or "") for obsid, attempts, reason in rows]
        return self._transaction(first, "reading failures", write=False)

    def by_host(self) -> List[Tuple[str, int, int, float]]:
        """Per host that finished obsids: (host, done, failed, seconds its final attempts took)."""
        totals: Dict[str, List[Any]] = {}
        for host, state, n, busy in self._transaction(lambda cur: self._execute(cur, BY_HOST).fetchall(),
                                                      "summarising hosts", write=False):
            done_failed_busy = totals.setdefault(host or "?", [0, 0, 0.0])
            done_failed_busy[0 if state == DONE else 1] += int(n)
            done_failed_busy[2] += float(busy or 0)
        return [(host, done, failed, busy) for host, (done, failed, busy) in sorted(totals.items())]

    def history(self, obsid: Optional[int] = None) -> List[Dict[str, Any]]:
        """Every recorded attempt (of one obsid, or all), oldest first."""
        def read(cur):
            if obsid is None:
                return _dicts(self._execute(cur, HISTORY_ALL))
            return _dicts(self._execute(cur, HISTORY_OF_OBSID, {"obsid": obsid}))
        return self._transaction(read, "reading the history", write=False)

    def rows(self) -> List[Dict[str, Any]]:
        """Every row of the job table, by obsid (for reports and tests)."""
        return self._transaction(lambda cur: _dicts(self._execute(cur, ALL_ROWS)), "reading the job table", write=False)

    def row(self, obsid: int) -> Optional[Dict[str, Any]]:
        """The row of one obsid, or None if it is not in the job (for `status --obsid`)."""
        def read(cur):
            found = _dicts(self._execute(cur, ONE_ROW, {"obsid": obsid}))
            return found[0] if found else None
        return self._transaction(read, f"reading obsid {obsid}", write=False)


    # ----------------------------------------------------------------- the operator's view
    def pace_figures(self, rate_window: float, workers_window: float = 0.0, samples: int = 500,
                     census: bool = True) -> Dict[str, Any]:
        """What the status block rests on, read in one transaction (counts and ETA of one moment)
        from indexes only.

        now (the database's clock); counts (obsids in each state, as `counts()`); finishes (host,
        worker, pid, state, expected, started, ended of every obsid that ended done or failed since
        now - rate_window: who finished what, for the rate and speed of the workers alive now);
        pending ((expected, count) groups); running (rows as `running()` gives them, with their
        lease_expires: the live leases are the workers alive); recent and first ((expected,
        seconds) of the last and of the first `samples` done obsids). census=False leaves out
        counts and pending, which read every row (`status --running` needs neither). An expected
        duration that is not a number (a job made from a master table whose pipetime is text: '',
        'abc') is None, unknown, as NULL is. workers_window is not used any more (workers are the
        live leases), kept for callers.
        """
        def read(cur):
            now = self._db_now(cur)
            finishes = _dicts(self._execute(cur, FINISHES_SINCE, {"since": now - rate_window}))
            counts, pending = self._census(cur) if census else (dict.fromkeys(STATES, 0), [])
            running = _with_seconds(_dicts(self._execute(cur, RUNNING_NOW)))
            recent = [(as_seconds(e), s) for e, s in self._execute(cur, RECENT_DONE, {"limit": samples}).fetchall()]
            first = [(as_seconds(e), s) for e, s in self._execute(cur, FIRST_DONE, {"limit": samples}).fetchall()]
            for f in finishes:
                f["expected"] = as_seconds(f["expected"])
            return {"now": now, "counts": counts if census else None, "finishes": finishes, "pending": pending,
                    "running": running, "recent": recent, "first": first}
        return self._transaction(read, "measuring the pace", write=False)

    def _census(self, cur: Any) -> Tuple[Dict[str, int], List[Tuple[Optional[float], int]]]:
        """The count in each state (every state present), and the pending ones as (expected, count)
        groups, longest first: one read of the claim index in its own order (SQLite: _census of its own)."""
        counts: Dict[str, int] = dict.fromkeys(STATES, 0)
        pending = []
        for state, expected, n in self._execute(cur, STATE_BY_EXPECTED).fetchall():
            counts[state] = counts.get(state, 0) + int(n)
            if state == PENDING:
                pending.append((as_seconds(expected), int(n)))
        return counts, pending

    def running(self) -> Tuple[float, List[Dict[str, Any]]]:
        """The database's clock, and the running obsids: obsid, attempt, host, worker (slot), pid,
        started, heartbeat, expected, reason."""
        def read(cur):
            return self._db_now(cur), _with_seconds(_dicts(self._execute(cur, RUNNING_NOW)))
        return self._transaction(read, "listing running obsids", write=False)

    def iter_history(self, since: Optional[float] = None) -> Iterator[Dict[str, Any]]:
        """Every attempt (started at or after `since`), oldest first, streamed: a million rows are
        never held at once (MySQL: a server-side cursor)."""
        if since is None:
            return self._stream(HISTORY_ALL, None, "reading the history")
        return self._stream(HISTORY_SINCE, {"since": since}, "reading the history")

    def result_names(self) -> List[str]:
        """The names of the results of done obsids, sorted."""
        return self._transaction(lambda cur: [r[0] for r in self._execute(cur, RESULT_NAMES).fetchall()],
                                 "reading result names", write=False)

    def iter_results(self) -> Iterator[Dict[str, Any]]:
        """(obsid, name, value) of every done obsid's results by obsid, name None for a done obsid
        without results; streamed."""
        return self._stream(RESULTS_OF_DONE, None, "reading results")

    def clock(self) -> float:
        """The database's clock, epoch seconds."""
        return self._transaction(self._db_now, "reading the clock", write=False)


def _with_seconds(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The rows with their expected duration a number of seconds or None (never '' or 'abc')."""
    for row in rows:
        row["expected"] = as_seconds(row["expected"])
    return rows


def _dicts(cur: Any) -> List[Dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]

