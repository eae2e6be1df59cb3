"""new / reset / status / wipe on both backends, through the command line as users run it."""
import json

import pytest

from batchUtility.model import Lease
from support import ROOT, SHARED_DATA, obsids_of, tables

SAMPLE = ROOT / "sql" / "sample_master.sql"


def test_new_from_file_skips_blanks_comments_duplicates_and_makes_the_job_folder(batch):
    f = batch.root / "list.txt"
    f.write_text("# my obsids\n1342191755\n\n1342191756  # second\n1342191755\n1342191757,HifiPointModeDBS\r\n")
    r = batch.cli("j1", "new", f)
    assert r.returncode == 0, r.stderr
    assert "3 obsids added" in r.stdout
    assert obsids_of(batch, "j1") == [1342191755, 1342191756, 1342191757]
    rows = batch.table("j1").rows()
    assert {row["state"] for row in rows} == {"pending"} and {row["pipelined"] for row in rows} == {0}
    job_dir = batch.root / "jobs" / "j1"
    assert (job_dir / "log").is_dir() and (job_dir / "output").is_dir()
    assert (job_dir / "j1.py").read_text() == (ROOT / "jobs" / "example" / "example.py").read_text()


def test_new_keeps_an_existing_template(batch):
    batch.template("j", "print(obsid)\n")
    assert batch.cli("j", "new", batch.obsid_file([1])).returncode == 0
    assert (batch.root / "jobs" / "j" / "j.py").read_text() == "print(obsid)\n"


def test_new_with_a_bad_line_names_it_and_creates_nothing(batch):
    f = batch.root / "bad.txt"
    f.write_text("1342191755\n1342191756\n13421917xx\n")
    r = batch.cli("j", "new", f)
    assert r.returncode == 2
    assert r.stderr.strip() == f"BatchProcess.py: error: {f}:3: '13421917xx' is not an obsid " \
                               "(a positive whole number of at most 10 digits)"
    assert "j" not in tables(batch) and not (batch.root / "jobs").exists()


def test_existing_job_is_an_error_unless_add(batch):
    assert batch.cli("j", "new", batch.obsid_file([1, 2])).returncode == 0
    r = batch.cli("j", "new", batch.obsid_file([2, 3]))
    assert r.returncode == 2 and "job 'j' exists already (2 obsids): use --add" in r.stderr
    assert obsids_of(batch, "j") == [1, 2]
    r = batch.cli("j", "new", batch.obsid_file([2, 3, 4]), "--add")
    assert r.returncode == 0 and "2 obsids added, 4 in all" in r.stdout
    assert obsids_of(batch, "j") == [1, 2, 3, 4]


def test_new_without_file_takes_the_master_table_and_starts_longest_first(batch):
    batch.load_master(SAMPLE)
    r = batch.cli("all", "new")
    assert r.returncode == 0, r.stderr
    assert "40 obsids added" in r.stdout
    table = batch.table("all")
    rows = table.rows()
    assert len(rows) == 40 and all(row["expected"] for row in rows)
    first = table.claim("h", "1/1", 1)
    assert first.obsid == max(rows, key=lambda row: row["expected"])["obsid"]


def test_new_from_file_takes_expected_durations_from_the_master(batch):
    batch.load_master(SAMPLE)
    r = batch.cli("some", "new", batch.obsid_file([1342181882, 1]))
    assert r.returncode == 0, r.stderr
    rows = {row["obsid"]: row for row in batch.table("some").rows()}
    assert rows[1342181882]["expected"] == 2412 and rows[1]["expected"] is None


def test_new_without_file_and_no_master_table_is_a_clear_error(batch):
    r = batch.cli("all", "new")
    assert r.returncode == 2
    assert "master table 'v11_1' not found" in r.stderr and "[sql] table" in r.stderr
    assert "all" not in tables(batch)


@pytest.mark.skipif(not (SHARED_DATA / "blkr_v11_1.sql.gz").exists(), reason="../shared/data/blkr_v11_1.sql.gz absent")
@pytest.mark.slow
def test_new_from_the_2014_dump(mysql_batch):
    """The published dump loads 1,701 rows before its cut-off INSERT; `new` takes exactly those."""
    batch = mysql_batch
    results = batch.load_master(SHARED_DATA / "blkr_v11_1.sql.gz")
    assert results[-1].returncode != 0   # the truncated second INSERT, as ORIGINAL.md says
    with batch.server.admin(batch.db) as c:
        cur = c.cursor()
        cur.execute("SELECT COUNT(*), MIN(pipetime), MAX(pipetime), SUM(pipetime) FROM v11_1")
        assert cur.fetchone() == (1701, 332, 3663, 1286374)
    r = batch.cli("v11_reproc", "new")
    assert r.returncode == 0, r.stderr
    assert "1701 obsids added" in r.stdout
    assert batch.cli("v11_reproc", "status").stdout.splitlines()[0] == "0 of 1701 processed. (0.0 %, 1701 remaining)"


def test_job_names_that_are_sql_keywords_work(batch):
    for job in ("select", "order", "table"):
        assert batch.cli(job, "new", batch.obsid_file([7, 8])).returncode == 0
        assert obsids_of(batch, job) == [7, 8]
        assert batch.cli(job, "wipe", "--yes").returncode == 0


@pytest.mark.parametrize("job", ["x; DROP TABLE v11_1", "x`y", 'x"y', "1abc", "a__b", "a" * 49, "naïve"])
def test_bad_job_names_are_refused(batch, job):
    batch.load_master(SAMPLE)
    before = tables(batch)
    r = batch.cli(job, "new")
    assert r.returncode == 2
    assert r.stderr.strip().startswith(f"BatchProcess.py: error: job name {job!r} is not valid")
    assert tables(batch) == before


def test_status_line_counts_and_failures(batch):
    batch.cli("s", "new", batch.obsid_file(range(1, 11)))
    table = batch.table("s")
    outcome = __import__("batchUtility.model", fromlist=["Outcome"]).Outcome
    for i in range(4):
        c = table.claim("h", "1/1", 1)
        table.finish(c, outcome(i < 3, "" if i < 3 else "HIPE exited with status 1: boom"), max_attempts=1)
    table.claim("h", "1/1", 1)
    r = batch.cli("s", "status")
    lines = r.stdout.splitlines()
    assert lines[0] == "3 of 10 processed. (30.0 %, 6 remaining)"
    assert lines[1] == "  pending 5, running 1, done 3, failed 1"
    assert "after 1 attempt: HIPE exited with status 1: boom" in r.stdout
    data = json.loads(batch.cli("s", "status", "--json").stdout)
    assert (data["total"], data["done"], data["failed"], data["pending"], data["running"]) == (10, 3, 1, 5, 1)
    assert data["failures"][0]["reason"] == "HIPE exited with status 1: boom"
    assert {h["host"]: (h["done"], h["failed"]) for h in data["hosts"]} == {"h": (3, 1)}


def test_status_of_an_empty_job_divides_by_nothing(batch):
    empty = batch.root / "empty.txt"
    empty.write_text("# nothing yet\n")
    r = batch.cli("e", "new", empty)   # an empty file is an error for a new job...
    assert r.returncode == 2 and "no obsid in it" in r.stderr, r.stderr
    assert batch.cli("e", "new", "--add", empty).returncode == 0   # ...but --add may add nothing
    assert batch.cli("e", "status").stdout.splitlines()[0] == "0 of 0 processed. (0.0 %, 0 remaining)"


def test_status_of_a_missing_job(batch):
    batch.cli("other", "new", batch.obsid_file([1]))
    r = batch.cli("nosuch", "status")
    assert r.returncode == 2 and "no job 'nosuch'" in r.stderr and "new" in r.stderr


def test_reset_all_failed_and_listed(batch):
    batch.cli("r", "new", batch.obsid_file([1, 2, 3, 4]))
    table = batch.table("r")
    from batchUtility.model import Outcome
    table.finish(table.claim("h", "1/1", 1), Outcome(True), 3)
    table.finish(table.claim("h", "1/1", 1), Outcome(False, "bad"), 1)
    running = table.claim("h", "1/1", 1)            # live lease: reset must leave it alone
    assert table.counts() == {"pending": 1, "running": 1, "done": 1, "failed": 1}

    r = batch.cli("r", "reset", "--failed")
    assert r.returncode == 0 and "1 obsid reset" in r.stdout
    assert table.counts() == {"pending": 2, "running": 1, "done": 1, "failed": 0}

    listed = batch.obsid_file([1], "one.txt")
    assert batch.cli("r", "reset", "--obsids", listed).returncode == 0
    assert table.counts() == {"pending": 3, "running": 1, "done": 0, "failed": 0}

    r = batch.cli("r", "reset", "--obsids", batch.obsid_file([1, 99], "unknown.txt"))
    assert r.returncode == 2 and "not in job 'r'" in r.stderr

    r = batch.cli("r", "reset", "--yes")
    assert r.returncode == 0 and "1 obsid is running under live workers and left alone" in r.stdout
    assert table.counts()["running"] == 1
    assert [row["attempts"] for row in table.rows() if row["state"] == "pending"] == [0, 0, 0]
    assert table.heartbeat(running) is Lease.HELD


def test_wipe_drops_only_the_job(batch):
    batch.load_master(SAMPLE)
    batch.cli("w", "new", batch.obsid_file([1]))
    batch.cli("keep", "new", batch.obsid_file([2]))
    r = batch.cli("w", "wipe", input="")
    assert r.returncode == 2 and "--yes" in r.stderr and "w" in tables(batch)
    r = batch.cli("w", "wipe", "--yes")
    assert r.returncode == 0, r.stderr
    # The site's learned durations are the database's, not the job's: kept (docs/commands.md).
    assert tables(batch) == {"v11_1", "keep", "keep__attempts", "keep__results", "site__durations", "site__durations_from"}
    assert (batch.root / "jobs" / "w" / "w.py").exists()


def test_wipe_refuses_a_table_that_is_not_a_job(batch):
    batch.load_master(SAMPLE)
    r = batch.cli("v11_1", "wipe", "--yes")
    assert r.returncode == 2 and "is not a job table" in r.stderr
    assert "v11_1" in tables(batch)


def test_config_lookup_order(batch, tmp_path):
    """--config, then $HIPE_BATCH_CONFIG, then $HIPE_BATCH_ROOT/batch.cfg, then $HIPE_BATCH_ROOT/bin/batch.cfg."""
    batch.cli("j", "new", batch.obsid_file([1]))
    cfg_text = batch.cfg_path.read_text()
    moved = batch.root / "bin" / "batch.cfg"
    moved.parent.mkdir()
    batch.cfg_path.rename(moved)
    if batch.backend == "sqlite":  # [sql] path is relative to the file's folder
        moved.write_text(cfg_text.replace("path = batch.sqlite", f"path = {batch.root / 'batch.sqlite'}"))
    assert batch.cli("j", "status").returncode == 0                       # the original's bin/batch.cfg
    elsewhere = tmp_path / "elsewhere.cfg"
    elsewhere.write_text(moved.read_text().replace("[sql]", "[sql]\nbogus = 1"))
    r = batch.cli("j", "status", env=batch.env(HIPE_BATCH_CONFIG=elsewhere))
    assert r.returncode == 2 and f"{elsewhere}: [sql] unknown key 'bogus'" in r.stderr
    r = batch.cli("--config", tmp_path / "missing.cfg", "j", "status")
    assert r.returncode == 2 and "missing.cfg: configuration file not found (from --config)" in r.stderr
    assert batch.cli("j", "status", "--config", moved).returncode == 0
    moved.unlink()
    r = batch.cli("j", "status")
    assert r.returncode == 2 and "no batch.cfg" in r.stderr


def test_an_original_2014_batch_cfg_works_unchanged(mysql_batch, tmp_path):
    """Only [sql] host user pswd db table, in bin/batch.cfg; the port comes from ~/.my.cnf as for mysql."""
    batch = mysql_batch
    server = batch.server
    (batch.root / "bin").mkdir()
    (batch.root / "bin" / "batch.cfg").write_text(
        f"[sql]\nhost  = 127.0.0.1\nuser  = hipeuser\npswd  = s3cret-pw\ndb    = {batch.db}\ntable = v11_1\n")
    batch.cfg_path.unlink()
    home = tmp_path / "home"
    home.mkdir()
    (home / ".my.cnf").write_text(f"[client]\nport = {server.port}\n")
    batch.load_master(SAMPLE)
    r = batch.cli("orig", "new", env=batch.env(HOME=home))
    assert r.returncode == 0, r.stderr
    assert "40 obsids added" in r.stdout and "MySQL database" in r.stdout
    assert "s3cret-pw" not in r.stdout + r.stderr
