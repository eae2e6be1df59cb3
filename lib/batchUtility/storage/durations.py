"""The site's learned durations: what each obsid took, for `new` to order a job longest first.

An obsid a master table gives no pipetime for expects what its latest successful attempt in any job
of the database took. That is kept in one small table per database (`site__durations`: obsid,
seconds, when it ended, which job): the finish that records a success upserts its obsid's row in the
same transaction (on MySQL in the same round trip), and `new` reads it with one join by primary key,
however many jobs the database holds. The latest attempt wins whatever the order the upserts come
in, so reading a history twice, or while its workers finish, changes nothing.

The histories behind it are listed in `site__durations_from`: a history not listed yet (a job made
by an older version, or a database that never had the table) is read into it once, at the next
`new`, in one transaction with its listing, so a crash or two `new` at once lose nothing and count
nothing twice. A job's finishes made by a worker of an older version after that are not learned.

`wipe` keeps what a job's obsids took: the durations belong to the obsids, not to the job (the job's
rows, history and results go; a later job of the same obsids is still started longest first).

A mixin of `JobTable`, on the engine's `_transaction` and `_execute`.
"""
import logging
from typing import Any, Dict, List, Optional, Tuple

from ..model import HISTORY_SUFFIX
from .statements import (
    CREATE_DURATIONS_FROM_TABLE,
    CREATE_DURATIONS_TABLE,
    DURATIONS_FROM_TABLE,
    DURATIONS_TABLE,
    EXPECTED_FROM_DURATIONS,
    FORGET_LEARNED_FROM,
    LEARN_CLAIM,
    LEARN_HISTORY,
    LEARNED_FROM,
    MARK_LEARNED_FROM,
)

log = logging.getLogger(__name__)


class LearnedDurations:
    """The site's learned durations (see the module)."""

    _durations_made = False
    expected_from_durations = EXPECTED_FROM_DURATIONS   # the dialect's (SQLite: UPDATE ... FROM)
    # The dialect's upsert of LEARN_HISTORY and LEARN_CLAIM: the row of the later attempt (ended, then took) stays.
    newer_wins = ""

    def _forget_made_tables(self) -> None:
        self._durations_made = False
        super()._forget_made_tables()

    def _operator_names(self, text: str) -> Dict[str, str]:
        names = super()._operator_names(text)
        if "{durations" in text:
            durations = self.quote(DURATIONS_TABLE)
            names.update(durations=durations, durations_from=self.quote(DURATIONS_FROM_TABLE),
                         newer_wins=self.newer_wins.format(durations=durations))
        return names

    def _make_durations(self, what: str = "making the table of learned durations", **waits: Any) -> None:
        """Both tables, once per process and server (a promoted replica may lack them). what, waits:
        as the caller's own transaction's (a finish's outage is told as the finish's)."""
        if not self._durations_made:
            def make(cur):
                self._execute(cur, CREATE_DURATIONS_TABLE)
                self._execute(cur, CREATE_DURATIONS_FROM_TABLE)
            self._transaction(make, what, **waits)
            self._durations_made = True

    def _learn_claim(self, obsid: int, token: str) -> Tuple[str, Dict[str, Any]]:
        """The statement (for _execute_together) that learns the duration of a claim's success from its
        history row, written before it in the same transaction."""
        return LEARN_CLAIM, {"job": self.job, "token": token, "obsid": obsid}

    def _learn_histories(self, histories: Optional[List[str]] = None) -> None:
        """Read every job history of the database not listed yet (or of `histories`, table names
        JOB__attempts) into the durations, each in one transaction with its listing."""
        self._make_durations()

        def unlisted(cur):
            listed = {r[0] for r in self._execute(cur, LEARNED_FROM).fetchall()}
            if histories is not None:
                return [h for h in histories if h[:-len(HISTORY_SUFFIX)] not in listed]
            return self._history_tables(cur, known=listed)
        for history in sorted(self._transaction(unlisted, "listing the histories not learned yet", write=False)):
            job = history[:-len(HISTORY_SUFFIX)]

            def learn(cur, job=job, history=history):
                # Listed first: of two `new` at once, the second waits here for the first's commit
                # (MySQL: the row's lock), then reads the history again: the same rows, no harm.
                self._execute(cur, MARK_LEARNED_FROM, {"job": job})
                return self._execute(cur, LEARN_HISTORY, {"job": job}, learned_history=self.quote(history)).rowcount
            if self._transaction(learn, f"learning the durations of job '{job}'"):
                log.info("learned what the obsids of job '%s' took (a job made by an earlier version)", job)

    def _expect_learned(self, cur: Any) -> None:
        """Each pending obsid of the job without an expected duration gets the one learned, if any."""
        self._execute(cur, self.expected_from_durations)

    def _forget_learned_from(self, cur: Any) -> None:
        """At `wipe`: the job's history is no longer listed (a job of the same name made later by an
        older version is read in again); what its obsids took is kept."""
        self._execute(cur, FORGET_LEARNED_FROM, {"job": self.job})


# MySQL's upsert: each column assigned in order, each assignment seeing the ones before it, so the
# columns compared (took, ended) are assigned last, ended the very last.
_NEWER = "(VALUES(ended) > {durations}.ended OR (VALUES(ended) = {durations}.ended AND VALUES(took) > {durations}.took))"
NEWER_WINS_MYSQL = (f"\n  ON DUPLICATE KEY UPDATE job = IF({_NEWER}, VALUES(job), {{durations}}.job),"
                    f"\n  took = IF({_NEWER}, VALUES(took), {{durations}}.took),"
                    f"\n  ended = IF({_NEWER}, VALUES(ended), {{durations}}.ended)")
# SQLite's upsert: every assignment sees the row as it was.
NEWER_WINS_SQLITE = ("\n  ON CONFLICT (obsid) DO UPDATE SET took = excluded.took, ended = excluded.ended, job = excluded.job"
                     "\n  WHERE excluded.ended > {durations}.ended"
                     " OR (excluded.ended = {durations}.ended AND excluded.took > {durations}.took)")
