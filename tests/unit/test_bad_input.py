"""The bad-input table (bad_input_cases.py) run in-process through `cli.main` on SQLite: one clear
error line, exit status 2, nothing changed. tests/integration runs it on MariaDB, tests/system a few of
its cases through the real `bin/BatchProcess.py`.
"""
import pytest

from bad_input_cases import cases_on, refused_in_process


@pytest.mark.parametrize("batch,case", cases_on("sqlite"), indirect=["batch"])
def test_bad_input(batch, case, main, monkeypatch):
    refused_in_process(batch, case, main, monkeypatch)
