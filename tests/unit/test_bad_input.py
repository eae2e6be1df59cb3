"""The bad-input table (bad_input_cases.py) run in-process through `cli.main` on SQLite: one clear
error line, exit status 2, nothing changed. tests/integration runs it on MariaDB, tests/system a few of
its cases through the real `bin/BatchProcess.py`.
"""
import io
import sys

import pytest

from bad_input_cases import assert_refused, cases_on, filler, make_job, snapshot


@pytest.mark.parametrize("batch,case", cases_on("sqlite"), indirect=["batch"])
def test_bad_input(batch, case, main, monkeypatch):
    make_job(batch)
    file = case.setup(batch) if case.setup else None
    before = snapshot(batch)
    fill = filler(batch, file)
    if case.stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(case.stdin))
    r = main(*[fill(a) for a in case.args])
    assert_refused(case, fill, r.code, r.out, r.err)
    assert snapshot(batch) == before, "a bad input changed something"
