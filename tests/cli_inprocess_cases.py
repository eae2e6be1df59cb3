"""The command line called in-process: `batchUtility.cli.main(argv)` with the output taken by capsys,
as sqlite-utils tests its CLI. The same paths as tests/system/test_commands.py (which runs the real
script in a subprocess, as users do) in a fraction of the time: new, reset, status, wipe and their
errors. `run` stays in tests/system/test_run.py: it launches HIPE and owns signals.

Not a test module: the tests are written once here and collected by tests/unit/test_cli_inprocess.py
(where `batch` is SQLite) and tests/integration/test_cli_inprocess.py (where it is the session's MariaDB).
"""
import json

import pytest

from batchUtility.model import Outcome
from support import ROOT, obsids_of, tables

SAMPLE = ROOT / "sql" / "sample_master.sql"
PREFIX = "BatchProcess.py: error: "
WHAT_AN_OBSID_IS = "a positive whole number of at most 10 digits"
NOT_OBSID = f"is not an obsid ({WHAT_AN_OBSID_IS})"


# ----------------------------------------------------------------------------- new
def test_new_from_a_file(batch, main):
    f = batch.root / "list.txt"
    f.write_text("obsid,name\n1342191755,a\n\n1342191756  # second\n1342191755,again\n")
    r = main("j", "new", f)
    assert r.code == 0, r.err
    assert r.out.splitlines()[0].startswith("job j: 2 obsids added, 2 in all, in ")
    assert r.out.splitlines()[1] == f"template: {batch.root / 'jobs' / 'j' / 'j.py'}"
    assert obsids_of(batch, "j") == [1342191755, 1342191756]
    assert (batch.root / "jobs" / "j" / "log").is_dir() and (batch.root / "jobs" / "j" / "output").is_dir()


def test_new_of_an_existing_job_needs_add(batch, main):
    assert main("j", "new", batch.obsid_file([1, 2])).code == 0
    assert "job 'j' exists already (2 obsids): use --add" in main("j", "new", batch.obsid_file([2, 3])).error()
    assert obsids_of(batch, "j") == [1, 2]
    r = main("j", "new", batch.obsid_file([2, 3, 4]), "--add")
    assert r.code == 0 and "2 obsids added, 4 in all" in r.out
    assert obsids_of(batch, "j") == [1, 2, 3, 4]


def test_new_with_a_bad_line_creates_nothing(batch, main):
    f = batch.root / "bad.txt"
    f.write_text("1342191755\n0x4f\n")
    assert main("j", "new", f).error() == f"{f}:2: '0x4f' {NOT_OBSID}"
    assert "j" not in tables(batch) and not (batch.root / "jobs").exists()


def test_new_without_a_file_takes_the_master_table(batch, main):
    batch.load_master(SAMPLE)
    r = main("all", "new")
    assert r.code == 0 and r.out.startswith("job all: 40 obsids added, 40 in all, in "), r.err
    rows = batch.table("all").rows()
    assert len(rows) == 40 and all(row["expected"] for row in rows)
    r = main("all", "new", "--add")
    assert r.code == 0 and r.out.startswith("job all: 0 obsids added, 40 in all, in ")


def test_new_with_add_creates_a_missing_job(batch, main):
    r = main("j", "new", batch.obsid_file([5]), "--add")
    assert r.code == 0 and "1 obsid added, 1 in all" in r.out
    assert obsids_of(batch, "j") == [5]


def test_new_without_a_file_needs_a_master_table(batch, main):
    assert "master table 'v11_1' not found" in main("all", "new").error()
    assert "all" not in tables(batch)


# ----------------------------------------------------------------------------- status
def job_with_every_state(batch, main):
    """Job s: 6 obsids: 2 done, 1 failed (reason 'boom'), 1 running on host h, 2 pending."""
    assert main("s", "new", batch.obsid_file(range(1, 7))).code == 0
    table = batch.table("s")
    for ok in (True, True, False):
        table.finish(table.claim("h", "1/1", 1), Outcome(ok, "" if ok else "boom", 0 if ok else 1), max_attempts=1)
    running = table.claim("h", "1/1", 1)
    return table, running


def test_status_text(batch, main):
    job_with_every_state(batch, main)
    r = main("s", "status")
    assert r.code == 0 and r.err == ""
    lines = r.out.splitlines()
    assert lines[:2] == ["2 of 6 processed. (33.3 %, 3 remaining)", "  pending 2, running 1, done 2, failed 1"]
    assert "    3  after 1 attempt: boom" in lines
    assert "  retry them with: BatchProcess.py s reset --failed" in lines
    assert "host" not in r.out   # the per-host table only with --hosts
    assert "  h " in main("s", "status", "--hosts").out


def test_status_json(batch, main):
    job_with_every_state(batch, main)
    data = json.loads(main("s", "status", "--json").out)
    assert (data["total"], data["done"], data["failed"], data["pending"], data["running"]) == (6, 2, 1, 2, 1)
    assert (data["remaining"], data["percent_done"]) == (3, 33.333)
    assert data["failures"] == [{"obsid": 3, "attempts": 1, "reason": "boom"}]
    assert [(h["host"], h["done"], h["failed"]) for h in data["hosts"]] == [("h", 2, 1)]


def test_status_failures_limit(batch, main):
    job_with_every_state(batch, main)
    assert "failed obsids" not in main("s", "status", "--failures", "0").out
    assert "failed obsids" not in main("s", "status", "--failures", "-3").out


def test_status_of_one_obsid(batch, main):
    job_with_every_state(batch, main)
    r = main("s", "status", "--obsid", 3)
    assert r.code == 0
    assert r.out.splitlines()[0] == "obsid 3: failed, 1 attempt counted: boom"
    assert "attempt 1  failed" in r.out and "exit 1  boom" in r.out
    data = json.loads(main("s", "status", "--obsid", 1, "--json").out)
    assert (data["obsid"], data["state"], data["attempts"]) == (1, "done", 1)
    assert [h["outcome"] for h in data["history"]] == ["done"]
    assert main("s", "status", "--obsid", 5).out.splitlines()[-1] == "  no attempt recorded yet"


@pytest.mark.parametrize("obsid,message", [(99, "obsid 99 is not in job 's'"),
                                           (0, f"--obsid 0: not an obsid ({WHAT_AN_OBSID_IS})"),
                                           (-5, "--obsid -5: not an obsid"),
                                           (10**30, f"--obsid {10**30}: not an obsid")])
def test_status_of_a_bad_obsid(batch, main, obsid, message):
    assert main("s", "new", batch.obsid_file([1])).code == 0
    assert main("s", "status", "--obsid", obsid).error().startswith(message)


def test_status_of_a_missing_job(batch, main):
    line = main("nosuch", "status").error()
    assert "no job 'nosuch'" in line and "BatchProcess.py nosuch new" in line


def test_status_of_an_empty_job(batch, main):
    empty = batch.root / "empty.txt"
    empty.write_text("# nothing yet\n")
    r = main("e", "new", empty)   # an empty file is an error for a new job (issue 8)...
    assert r.code == 2 and "no obsid in it" in r.err
    assert main("e", "new", "--add", empty).code == 0   # ...but --add may add nothing
    assert main("e", "status").out.splitlines()[0] == "0 of 0 processed. (0.0 %, 0 remaining)"


# ----------------------------------------------------------------------------- reset
def test_reset(batch, main):
    table, running = job_with_every_state(batch, main)
    r = main("s", "reset", "--failed")
    assert (r.code, r.out.splitlines()[0]) == (0, "1 obsid reset to pending")
    assert table.counts() == {"pending": 3, "running": 1, "done": 2, "failed": 0}
    assert main("s", "reset", "--obsids", batch.obsid_file([1], "one.txt")).out.startswith("1 obsid reset to pending\n")
    assert table.counts() == {"pending": 4, "running": 1, "done": 1, "failed": 0}
    assert "not in job 's'" in main("s", "reset", "--obsids", batch.obsid_file([2, 99], "two.txt")).error()
    assert table.counts() == {"pending": 4, "running": 1, "done": 1, "failed": 0}
    r = main("s", "reset", "--yes")   # a plain reset asks first when done obsids would go back
    assert r.out == "5 obsids reset to pending\n1 obsid is running under live workers and left alone\n"
    assert table.counts() == {"pending": 5, "running": 1, "done": 0, "failed": 0}
    r = main("s", "reset", "--stale")
    assert r.out.startswith("0 obsids of lost workers taken back: 0 at once")
    assert table.row(running.obsid)["state"] == "running"


def test_reset_with_a_bad_obsid_file(batch, main):
    assert main("s", "new", batch.obsid_file([1])).code == 0
    f = batch.obsid_file(["1", "DROP TABLE s"], "bad.txt")
    assert main("s", "reset", "--obsids", f).error() == f"{f}:2: 'DROP TABLE s' {NOT_OBSID}"


def test_reset_options_exclude_each_other(batch, main):
    r = main("s", "reset", "--failed", "--stale")
    assert r.code == 2 and "not allowed with argument" in r.err


# ----------------------------------------------------------------------------- wipe
def test_wipe(batch, main):
    assert main("w", "new", batch.obsid_file([1, 2])).code == 0
    assert main("keep", "new", batch.obsid_file([3])).code == 0
    assert "wipe drops job 'w' (2 obsids): confirm with --yes" in main("w", "wipe").error()
    assert "w" in tables(batch)
    r = main("w", "wipe", "--yes")
    assert r.code == 0 and r.out.startswith("job w dropped (2 obsids)")
    assert "w" not in tables(batch) and obsids_of(batch, "keep") == [3]
    assert (batch.root / "jobs" / "w" / "w.py").exists()
    assert "no job 'w'" in main("w", "wipe", "--yes").error()


def test_wipe_refuses_a_table_that_is_not_a_job(batch, main):
    batch.load_master()   # the master table v11_1, empty
    assert "is not a job table" in main("v11_1", "wipe", "--yes").error()


# ----------------------------------------------------------------------------- arguments and batch.cfg
@pytest.mark.parametrize("job", ["x; DROP TABLE v11_1", "a__b", "1abc", "a" * 49])
def test_bad_job_names(batch, main, job):
    assert main(job, "status").error().startswith(f"job name {job!r} is not valid")


def test_usage_errors_exit_2(batch, main):
    for argv in (["j"], ["j", "explode"], ["j", "status", "--obsid", "x"]):
        r = main(*argv)
        assert r.code == 2 and r.err.startswith("usage: BatchProcess.py"), argv


def test_missing_batch_cfg(batch, main):
    batch.cfg_path.unlink()
    assert main("j", "status").error().startswith(f"no batch.cfg: looked in {batch.root}/batch.cfg")
    missing = batch.root / "missing.cfg"
    assert main("j", "status", "--config", missing).error() == \
        f"{missing}: configuration file not found (from --config)"


def test_bad_batch_cfg(batch, main):
    batch.write_cfg(run={"lease": "0"})
    assert main("j", "status").error() == f"{batch.cfg_path}: [run] lease = '0': must be at least 1"


# ----------------------------------------------------------------------------- issue 22: -q, answers, one obsid
def test_quiet_commands_print_nothing_but_the_data_asked_for(batch, main):
    """-q: nothing that does not need a person, for every command; data asked for on stdout only."""
    job_with_every_state(batch, main)
    quiet = {("new", batch.obsid_file([7], "q.txt"), "--add"): "", ("reset", "--failed"): "",
             ("report", batch.root / "r.html", "--svg", batch.root / "r.svg"): "",
             ("results", "--csv", batch.root / "r.csv"): ""}
    for argv, out in quiet.items():
        r = main("-q", "s", *argv)
        assert (r.code, r.out, r.err) == (0, out, ""), argv
    for argv in (("status", "--json"), ("history", "--csv"), ("history",), ("results",)):
        r = main("-q", "s", *argv)
        assert r.code == 0 and r.out and r.err == "", argv
    assert main("-q", "empty", "new", batch.obsid_file([9], "e.txt")).out == ""
    r = main("-q", "empty", "history")
    assert (r.code, r.out, r.err) == (0, "", "")         # "no attempt recorded" is not data
    r = main("-q", "empty", "wipe", "--yes")
    assert (r.code, r.out, r.err) == (0, "", "")


class _Terminal:
    """A standard input on a terminal whose person answers `answer`."""

    def __init__(self, answer):
        self.answer = answer

    def isatty(self):
        return True

    def readline(self):
        return self.answer + "\n"


def test_answering_no_to_reset_or_wipe_is_not_an_error(batch, main, monkeypatch):
    table, _ = job_with_every_state(batch, main)
    before = table.counts()
    monkeypatch.setattr("sys.stdin", _Terminal("n"))
    r = main("s", "reset")
    assert (r.code, r.out.endswith("[y/N] nothing reset\n"), "error" in r.err) == (0, True, False), r
    assert table.counts() == before
    r = main("s", "wipe", "--force")
    assert (r.code, r.out.endswith("[y/N] nothing dropped\n")) == (0, True), r
    assert table.counts() == before
