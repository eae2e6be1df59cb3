"""Which versions of a job's template can run, job-wide: the gate of a template's first launch.

A template that cannot run (a SyntaxError or IndentationError, found before its first line runs)
would fail every obsid on every worker. So the first launch of each version (its content hash) in a
job is a probe, and one only: the worker whose row goes into the job's `__templates` table first
(a primary key: one insert wins, on any host and either backend) launches it; the others wait,
their claims held, until it is known. The prober marks the version `runs` as soon as HIPE has
compiled it (not when its obsid ends), or `broken`: the job halts, every worker puts its obsid back
uncounted. A prober gone without a verdict (its claim no longer running) leaves the probe to
the next one. A new version of the template is probed anew; `wipe` drops the table.

A mixin of `JobTable`, on the engine's `_transaction` and `_execute`.
"""
from typing import Any, Callable, Optional, Tuple

from ..errors import BatchError, DatabaseUnavailable
from ..model import Claim
from .statements import (
    ABANDON,
    CREATE_TEMPLATES_TABLE,
    DROP_TEMPLATES_TABLE,
    PROBE,
    PROBER_RUNNING,
    TEMPLATES_SUFFIX,
    VERDICT,
    VERSION_STATE,
)

PROBING, RUNS, BROKEN = "probing", "runs", "broken"

class TemplateGate:
    """The job-wide verdict on each version of the template (see the module)."""

    _templates_made = False

    def _templates(self) -> str:
        return self.quote(self.job + TEMPLATES_SUFFIX)

    def _forget_made_tables(self) -> None:
        self._templates_made = False
        super()._forget_made_tables()

    def _make_templates(self, interrupted: Optional[Callable[[], bool]] = None) -> None:
        if not self._templates_made:
            self._transaction(lambda cur: self._execute(cur, CREATE_TEMPLATES_TABLE, templates_table=self._templates()),
                              "making the table of template versions", interrupted=interrupted)
            self._templates_made = True

    def _on_templates(self, work: Callable[[Any], Any], what: str, interrupted: Optional[Callable[[], bool]] = None,
                      patience: Optional[float] = None) -> Any:
        """work in a transaction, the table made first (once per process). A table made once may have
        gone since (`wipe --force` then `new` while this worker ran): made again, and work tried once more."""
        self._make_templates(interrupted)
        try:
            return self._transaction(work, what, interrupted=interrupted, patience=patience)
        except DatabaseUnavailable:
            raise
        except BatchError:
            self._templates_made = False
            self._make_templates(interrupted)
            return self._transaction(work, what, interrupted=interrupted, patience=patience)

    def template_gate(self, version: str, claim: Claim, *,
                      interrupted: Optional[Callable[[], bool]] = None) -> Tuple[str, str]:
        """(what to do, reason): ('probe', '') this claim is the version's probe: launch it and give
        the verdict; ('runs', '') launch; ('broken', why) do not; ('wait', '') another worker's
        probe is under way: ask again shortly."""
        names = {"templates_table": self._templates()}

        def row_says(cur, row) -> Optional[Tuple[str, str]]:   # what a version's row says; None: its prober is gone
            state, obsid, token, reason = row
            if state == RUNS:
                return "runs", ""
            if state == BROKEN:
                return "broken", reason or ""
            if token == claim.token:
                return "probe", ""
            if self._execute(cur, PROBER_RUNNING, {"obsid": obsid, "token": token}).fetchone() is not None:
                return "wait", ""
            return None

        def look(cur):   # what a read can tell: all but a probe to begin or one to give up
            row = self._execute(cur, VERSION_STATE, {"version": version}, **names).fetchone()
            return None if row is None else row_says(cur, row)

        def gate(cur):
            row = self._execute(cur, VERSION_STATE, {"version": version}, **names).fetchone()
            if row is None:
                won = self._execute(cur, PROBE, {"version": version, "obsid": claim.obsid, "token": claim.token},
                                    **names).rowcount
                return ("probe", "") if won == 1 else ("wait", "")
            answer = row_says(cur, row)
            if answer is not None:
                return answer
            # The prober is gone without a verdict (stopped, killed, taken back): the next one probes.
            self._execute(cur, ABANDON, {"version": version, "token": row[2]}, **names)
            return "wait", ""
        # A read first: on SQLite a writer's transaction takes the one write lock, and the workers of
        # a `run -j` all look at their first launch (tests/bench/RESULTS.md). Then, or with no table
        # yet (a job made by an older version), the writer's way.
        try:
            said = self._transaction(look, "looking at the template's verdict", write=False, interrupted=interrupted)
        except DatabaseUnavailable:
            raise
        except BatchError:
            said = None
        if said is not None:
            return said
        return self._on_templates(gate, "looking at the template's verdict", interrupted)

    def template_known_to_run(self, version: str) -> bool:
        """Whether the version's verdict is `runs`, by one read and one try (patience 0): a worker
        looks before its first claim, so that its first launch need not (Worker.warm_up). False when
        it cannot tell (no table yet, a passing error): the launch's gate then asks as always."""
        try:
            row = self._transaction(lambda cur: self._execute(cur, VERSION_STATE, {"version": version},
                                                              templates_table=self._templates()).fetchone(),
                                    "looking at the template's verdict", write=False, patience=0)
        except BatchError:   # DatabaseUnavailable included
            return False
        return row is not None and row[0] == RUNS

    def make_templates(self, interrupted: Optional[Callable[[], bool]] = None) -> None:
        """Make the job's table of template versions if it is not there: before a worker's first claim
        (`run -j`'s parent, once for its workers), so that no DDL stands between a claim and its HIPE."""
        self._make_templates(interrupted)

    def template_verdict(self, version: str, state: str, reason: str = "", *, patience: Optional[float] = None,
                         interrupted: Optional[Callable[[], bool]] = None) -> None:
        """The probe's verdict: RUNS (HIPE compiled it) or BROKEN (it cannot run: the job halts).
        patience=0: one try (while HIPE runs, nothing may hold the worker's watch over it)."""
        self._on_templates(lambda cur: self._execute(cur, VERDICT, {"version": version, "state": state,
                                                                    "reason": reason[:255] or None},
                                                     templates_table=self._templates()),
                           "recording the template's verdict", interrupted, patience)

    def template_abandon(self, version: str, claim: Claim) -> None:
        """The probe ended without a verdict (stopped, the claim lost): the next claim probes."""
        self._on_templates(lambda cur: self._execute(cur, ABANDON, {"version": version, "token": claim.token},
                                                     templates_table=self._templates()),
                           "giving the template's probe up", patience=0)

    def drop_templates(self, cur: Any) -> None:
        self._execute(cur, DROP_TEMPLATES_TABLE, templates_table=self._templates())
