"""Every SQL statement of the job table, whole and named; the dialects' fragments are attributes of
their classes (sqlite.py, mysql.py). Every value is a parameter; identifiers are quoted by
`Engine.quote` and nowhere else.
"""
from typing import Dict, Iterator, Sequence, Tuple

_CHUNK = 500                    # obsids per IN (...) list
RESULTS_SUFFIX = "__results"    # the job's results table (job names may not contain "__")

# ----------------------------------------------------------------------------- the statements
# Braces name identifiers and dialect fragments, filled by Engine.statement(); colons name values.
# {job_table} is the job's table, {history_table} its attempts, {now} the database's clock.

# Plain CREATE TABLE: of two `new` of one job at the same moment, one fails (JobExists).
CREATE_JOB_TABLE = """CREATE TABLE {job_table} (
  obsid {obsid_type} NOT NULL PRIMARY KEY,
  pipelined TINYINT NOT NULL DEFAULT 0,
  state VARCHAR(7) NOT NULL DEFAULT 'pending',
  expected INT NULL,
  attempts INT NOT NULL DEFAULT 0,
  token CHAR(32) NULL,
  host VARCHAR(255) NULL,
  worker VARCHAR(32) NULL,
  pid INT NULL,
  pid_start BIGINT NULL,
  started DOUBLE NULL,
  heartbeat DOUBLE NULL,
  lease_expires DOUBLE NULL,
  ended DOUBLE NULL,
  exit_code INT NULL,
  signal_no INT NULL,
  reason VARCHAR(255) NULL,
  template VARCHAR(16) NULL,
  machine VARCHAR(80) NULL,
  beats BIGINT NULL,
  heap_mb INT NULL
){table_options}"""

CREATE_HISTORY_TABLE = """CREATE TABLE {history_table} (
  token CHAR(32) NOT NULL PRIMARY KEY,
  obsid BIGINT NOT NULL,
  attempt INT NOT NULL,
  host VARCHAR(255) NULL,
  worker VARCHAR(32) NULL,
  pid INT NULL,
  started DOUBLE NULL,
  ended DOUBLE NULL,
  exit_code INT NULL,
  signal_no INT NULL,
  outcome VARCHAR(8) NOT NULL,
  reason VARCHAR(255) NULL,
  template VARCHAR(16) NULL,
  machine VARCHAR(80) NULL,
  heap_mb INT NULL,
  cpu_s DOUBLE NULL,
  peak_rss_mb DOUBLE NULL,
  read_mb DOUBLE NULL,
  write_mb DOUBLE NULL
){table_options}"""

CREATE_CLAIM_INDEX = "{create_index} {index} ON {job_table} (state, expected DESC, obsid)"
CREATE_HISTORY_INDEX = "{create_index} {index} ON {history_table} (obsid)"
# Columns added since the first release: `require()` adds each one a table lacks (ALTER TABLE ADD
# COLUMN), so jobs created by an older version keep working. A later column is one more line here.
ADDED_COLUMNS = {
    "job_table": (("lease_expires", "DOUBLE NULL"), ("template", "VARCHAR(16) NULL"),
                  # the claiming worker's process start time (ticks since boot): see procfs.process_start
                  ("pid_start", "BIGINT NULL"),
                  # the claiming worker's machine (boot id and PID namespace: procfs.machine_identity)
                  ("machine", "VARCHAR(80) NULL"),
                  # the claim's renewal counter: 0 at the claim, one more at each heartbeat (see STALE)
                  ("beats", "BIGINT NULL"),
                  # the Java heap (MiB) the obsid is known to need, learned when it ran out of memory
                  ("heap_mb", "INT NULL")),
    "history_table": (("template", "VARCHAR(16) NULL"), ("machine", "VARCHAR(80) NULL"),
                      # what each attempt was given and cost (model.Cost)
                      ("heap_mb", "INT NULL"), ("cpu_s", "DOUBLE NULL"), ("peak_rss_mb", "DOUBLE NULL"),
                      ("read_mb", "DOUBLE NULL"), ("write_mb", "DOUBLE NULL")),
}
ADD_COLUMN = "ALTER TABLE {table} ADD COLUMN {column} {definition}"
DROP_HISTORY_TABLE = "DROP TABLE IF EXISTS {history_table}"
DROP_JOB_TABLE = "DROP TABLE IF EXISTS {job_table}"

INSERT_FROM_MASTER = """{insert_ignore} INTO {job_table} (obsid, expected)
  SELECT m.obsid, {expected} FROM {master_table} m WHERE m.obsid IS NOT NULL"""
INSERT_OBSID = "{insert_ignore} INTO {job_table} (obsid) VALUES (:obsid)"
MASTER_OBSIDS = "SELECT obsid FROM {master_table} WHERE obsid IS NOT NULL"
EXPECTED_FROM_MASTER = """UPDATE {job_table}
  SET expected = (SELECT {expected} FROM {master_table} m WHERE m.obsid = {job_table}.obsid)
  WHERE expected IS NULL"""
# The obsids of the job whose master pipetime is there but not a number ('', 'abc'): {expected} is the
# dialect's `number_or_null` of m.pipetime, NULL for those; they expect what others took (eta.py).
PIPETIME_NOT_A_NUMBER = """SELECT COUNT(*) FROM {job_table} j JOIN {master_table} m ON m.obsid = j.obsid
  WHERE m.pipetime IS NOT NULL AND {expected} IS NULL"""
# Whether a pending obsid still has no expected duration: one probe of the claim index.
UNKNOWN_PENDING = "SELECT 1 FROM {job_table} WHERE state = 'pending' AND expected IS NULL LIMIT 1"

DB_NOW = "SELECT {now}"
COUNT_ALL = "SELECT COUNT(*) FROM {job_table}"

# Lock (MySQL: skipping rows other claimers hold) the next pending row, longest expected first.
# MySQL claims in one round trip: FORGET_PICKED; PICK_PENDING; CLAIM; PICKED, the picked row passed
# from one statement to the next in session variables ({picked_into}, {picked_obsid}).
PICK_PENDING = """SELECT obsid, attempts, heap_mb{picked_into} FROM {job_table} WHERE state = 'pending'
  ORDER BY expected DESC, obsid LIMIT 1{skip_locked}"""
CLAIM = """UPDATE {job_table}
  SET state = 'running', pipelined = 0, token = :token, host = :host, worker = :worker, pid = :pid,
      pid_start = :pid_start, machine = :machine, started = {now}, heartbeat = {now}, lease_expires = {now} + :lease,
      beats = 0, ended = NULL, exit_code = NULL, signal_no = NULL, template = NULL
  WHERE obsid = {picked_obsid} AND state = 'pending'"""
COMMIT = "COMMIT"   # the last of the statements of a transaction sent in one round trip (MySQL)
# A SELECT ... INTO finding no row sets nothing:
FORGET_PICKED = "SET @picked_obsid = NULL, @picked_attempts = NULL, @picked_heap = NULL"
PICKED = "SELECT @picked_obsid, @picked_attempts, @picked_heap"
# A claim retried after a lost reply to its COMMIT may have been taken after all: found by its token.
CLAIMED_BY = """SELECT obsid, attempts, heap_mb FROM {job_table} WHERE token = :token AND state = 'running'"""
# The claims made in a process's name by another (`run -j`'s parent claims its workers' first obsids):
# the pid with its start time and machine names one process, so only that process adopts them.
CLAIMED_FOR = """SELECT obsid, token, attempts, heap_mb FROM {job_table}
  WHERE state = 'running' AND host = :host AND pid = :pid AND pid_start = :pid_start AND machine = :machine
  ORDER BY obsid"""
HEARTBEAT = """UPDATE {job_table} SET heartbeat = {now}, lease_expires = {now} + :lease, beats = COALESCE(beats, 0) + 1
  WHERE obsid = :obsid AND token = :token AND state = 'running'"""
# Finish and requeue change their claim's row only while it runs, or repeat what they did (a repeat
# after a lost COMMIT reply finds the state it gave): a claim recorded done or failed stays so (a
# put-back after a finish that did commit). Only `reset` makes a done row pending again, and it deletes
# its results: so only done rows have results. The attempt counted is the row's own (one more than
# the row says, not the claim's number: a charge undone meanwhile stays undone), and only once: a
# repeat, which finds the heartbeat gone, leaves it. (Read before heartbeat is assigned: MariaDB
# assigns in order, each assignment seeing the ones before it.)
FINISH = """UPDATE {job_table}
  SET state = :state, pipelined = :pipelined,
      attempts = CASE WHEN heartbeat IS NOT NULL THEN attempts + 1 ELSE attempts END, ended = {now}, heartbeat = NULL,
      lease_expires = NULL, exit_code = :exit_code, signal_no = :signal_no, reason = :reason, template = :template,
      heap_mb = COALESCE(:heap_next, heap_mb)
  WHERE obsid = :obsid AND token = :token AND state IN ('running', :state)"""
REQUEUE = """UPDATE {job_table}
  SET state = 'pending', ended = {now}, heartbeat = NULL, lease_expires = NULL, reason = :reason, template = :template,
      heap_mb = COALESCE(:heap_next, heap_mb)
  WHERE obsid = :obsid AND token = :token AND state IN ('running', 'pending')"""
# An outcome of this claim that committed (its history row, written in the same transaction): a retry
# after a lost COMMIT reply finds it, though the obsid may have been claimed again since (a new token).
ATTEMPT_RECORDED = "SELECT 1 FROM {history_table} WHERE token = :token AND obsid = :obsid AND outcome = :outcome"
# Copies the job row of a claim into the history, as attempt :attempt that ended as :outcome, with the
# heap it was given and what it cost (model.Cost; NULL: not known).
HISTORY_FROM_ROW = """{insert_ignore} INTO {history_table}
  (token, obsid, attempt, host, worker, pid, started, ended, exit_code, signal_no, outcome, reason, template, machine,
   heap_mb, cpu_s, peak_rss_mb, read_mb, write_mb)
  SELECT token, obsid, :attempt, host, worker, pid, started, ended, exit_code, signal_no, :outcome, reason, template,
         machine, :heap_mb, :cpu_s, :peak_rss_mb, :read_mb, :write_mb
  FROM {job_table} WHERE obsid = :obsid AND token = :token"""

# A running row's lease is its own (lease_expires); rows claimed by an older version have none, and
# go by the reader's :lease. EXPIRY is in the database's clock: it only tells (status, reset) what
# looks over; a claim is taken back by the rule of RENEWALS, which no clock step can shorten.
EXPIRY = "COALESCE(lease_expires, heartbeat + :lease)"
# What a taker watches of every running claim: whether its renewal (token, beats, heartbeat) changes,
# and the lease it was given (lease_expires - heartbeat: two values one statement wrote from one
# reading of the clock, so no clock step changes it). A claim whose renewal stood still for its whole
# lease, as the taker's own monotonic clock measures it, is taken back (JobTable.reclaim_stale):
# STALE locks those rows and reads them once more, to take back only those still unchanged.
RENEWALS = """SELECT obsid, token, beats, heartbeat, COALESCE(lease_expires - heartbeat, :lease) FROM {job_table}
  WHERE state = 'running' ORDER BY obsid"""
STALE = """SELECT obsid, token, beats, heartbeat, COALESCE(lease_expires - heartbeat, :lease) FROM {job_table}
  WHERE state = 'running' AND obsid IN ({obsids}) ORDER BY obsid{lock_rows}"""
LAPSED = """SELECT COUNT(*), MAX(COALESCE(lease_expires - heartbeat, :lease)) FROM {job_table}
  WHERE state = 'running' AND {expiry} < :db_now"""
# The running rows of one host, whose workers' processes can be looked at directly (if the machine
# and its PID namespace are the same: `machine`).
RUNNING_ON_HOST = """SELECT obsid, pid, pid_start, machine FROM {job_table} WHERE state = 'running' AND host = :host
  ORDER BY obsid{lock_rows}"""
LOST_MARK = "UPDATE {job_table} SET ended = {now}, reason = :reason WHERE obsid IN ({obsids})"
LOST_TO_HISTORY = """{insert_ignore} INTO {history_table}
  (token, obsid, attempt, host, worker, pid, started, ended, outcome, reason, machine)
  SELECT token, obsid, attempts + 1, host, worker, pid, started, ended, 'lost', reason, machine
  FROM {job_table} WHERE obsid IN ({obsids})"""
LOST_RELEASE = """UPDATE {job_table}
  SET state = CASE WHEN attempts + 1 >= :max_attempts THEN 'failed' ELSE 'pending' END,
      attempts = attempts + 1, token = NULL, heartbeat = NULL, lease_expires = NULL
  WHERE obsid IN ({obsids})"""

# A late outcome of a claim taken back as `lost` meanwhile (its worker frozen or cut off from the
# database for longer than its lease): JobTable.amend_taken_back. LATE_CLAIM reads what became of the
# claim (its history row) and of the obsid since.
LATE_CLAIM = """SELECT h.outcome, j.state, j.token, j.attempts FROM {history_table} h
  JOIN {job_table} j ON j.obsid = h.obsid WHERE h.token = :token AND h.obsid = :obsid"""
# A success recorded late: only while nobody claimed the obsid since it was taken back (no token, the
# attempts it was given by the take-back), as if FINISH had come in time.
LATE_DONE = """UPDATE {job_table}
  SET state = 'done', pipelined = 1, attempts = :attempt, token = :token, ended = {now}, heartbeat = NULL,
      lease_expires = NULL, exit_code = :exit_code, signal_no = :signal_no, reason = NULL, template = :template
  WHERE obsid = :obsid AND token IS NULL AND attempts = :attempt AND state IN ('pending', 'failed')"""
# The take-back's charge undone: one attempt fewer; failed by that very take-back (nobody claimed it
# since), pending again.
UNCHARGE = """UPDATE {job_table}
  SET state = CASE WHEN state = 'failed' AND token IS NULL AND attempts = :attempt THEN 'pending' ELSE state END,
      attempts = attempts - 1
  WHERE obsid = :obsid AND attempts > 0"""
# The claim's history row, `lost` until now, says what really became of the attempt.
HISTORY_AMEND = """UPDATE {history_table} SET outcome = :outcome, reason = :reason, exit_code = :exit_code,
  signal_no = :signal_no, template = :template WHERE token = :token AND obsid = :obsid AND outcome = 'lost'"""

# Running rows are never reset: they may run under a live worker (a lease judged by the database's
# clock says nothing sure: clocks step), and would run twice at once. reset --stale takes back those
# of lost workers (JobTable.reclaim_dead_here, reclaim_stale), which a reset then finds pending.
RESET_ALL = """UPDATE {job_table}
  SET state = 'pending', pipelined = 0, attempts = 0, token = NULL, host = NULL, worker = NULL, pid = NULL,
      started = NULL, heartbeat = NULL, lease_expires = NULL, ended = NULL, exit_code = NULL, signal_no = NULL,
      reason = NULL
  WHERE (state <> 'running' OR heartbeat IS NULL)
    AND (:only_failed = 0 OR state = 'failed')"""
RESET_LISTED = """UPDATE {job_table}
  SET state = 'pending', pipelined = 0, attempts = 0, token = NULL, host = NULL, worker = NULL, pid = NULL,
      started = NULL, heartbeat = NULL, lease_expires = NULL, ended = NULL, exit_code = NULL, signal_no = NULL,
      reason = NULL
  WHERE (state <> 'running' OR heartbeat IS NULL)
    AND (:only_failed = 0 OR state = 'failed') AND obsid IN ({obsids})"""
COUNT_LIVE_RUNNING = "SELECT COUNT(*) FROM {job_table} WHERE state = 'running' AND {expiry} >= :db_now"
# Obsids other workers finished lately (is this worker the only one whose attempts all fail?).
DONE_ELSEWHERE = """SELECT COUNT(*) FROM {job_table} WHERE state = 'done' AND ended >= {now} - :seconds
  AND NOT (host = :host AND pid = :pid)"""
PRESENT = "SELECT obsid FROM {job_table} WHERE obsid IN ({obsids})"

COUNT_BY_STATE = "SELECT state, COUNT(*) FROM {job_table} GROUP BY state"
# One probe of the claim index (COUNT_BY_STATE reads every row): asked by waiting workers once a second.
ANY_RUNNING = "SELECT 1 FROM {job_table} WHERE state = 'running' LIMIT 1"
FIRST_FAILURES = """SELECT obsid, attempts, reason FROM {job_table}{by_state} WHERE state = 'failed'
  ORDER BY obsid LIMIT :limit"""
# Grouped in the order of the hosts index (state, host), which holds every column read: no
# temporary table, no sort, no row read (JobTable.by_host adds each host's two states up).
BY_HOST = """SELECT host, state, COUNT(*), SUM(ended - started)
  FROM {job_table} WHERE state IN ('done', 'failed') GROUP BY state, host"""
HISTORY_ALL = """SELECT obsid, attempt, host, worker, pid, started, ended, exit_code, signal_no, outcome, reason,
       template, heap_mb, cpu_s, peak_rss_mb, read_mb, write_mb FROM {history_table}{in_start_order} ORDER BY started, obsid"""
HISTORY_OF_OBSID = """SELECT obsid, attempt, host, worker, pid, started, ended, exit_code, signal_no, outcome, reason,
       template, heap_mb, cpu_s, peak_rss_mb, read_mb, write_mb FROM {history_table} WHERE obsid = :obsid
  ORDER BY started, obsid"""
ALL_ROWS = "SELECT * FROM {job_table} ORDER BY obsid"
ONE_ROW = "SELECT * FROM {job_table} WHERE obsid = :obsid"

# ----------------------------------------------------------------------------- the operator's view
# Results of done obsids (`batchResult` in job scripts): value as text, number for SQL's sums.
CREATE_RESULTS_TABLE = """CREATE TABLE IF NOT EXISTS {results_table} (
  obsid BIGINT NOT NULL,
  name VARCHAR(64) NOT NULL,
  value TEXT NOT NULL,
  number DOUBLE NULL,
  PRIMARY KEY (obsid, name)
){table_options}"""
DROP_RESULTS_TABLE = "DROP TABLE IF EXISTS {results_table}"
# Recent finishes (the rate, the speed, the workers seen) and the history in time order, fast on
# a million rows: each reads a range of one of these indexes.
CREATE_ENDED_INDEX = "{create_index} {index} ON {job_table} (ended)"
CREATE_HISTORY_STARTED_INDEX = "{create_index} {index} ON {history_table} (started, obsid)"
# BY_HOST (`status --json`, `--hosts`) from this index alone, not from whole rows. MariaDB: claims
# and finishes change `state`, so they move their row's entry in it, as in the claim index; it also
# finds a host's running rows (RUNNING_ON_HOST). SQLite: a partial index of the finished rows
# ({finished_only}), which claims never touch (whole, it slowed claims: tests/bench/RESULTS.md).
CREATE_HOSTS_INDEX = "{create_index} {index} ON {job_table} (state, host, started, ended){finished_only}"
HOSTS_INDEX = "__hosts"   # the newest index: a job without it is given the operator's tables and indexes

RESULTS_DELETE = "DELETE FROM {results_table} WHERE obsid = :obsid"
RESULTS_DELETE_LISTED = "DELETE FROM {results_table} WHERE obsid IN ({obsids})"
RESULTS_DELETE_ALL = "DELETE FROM {results_table}"
RESULTS_INSERT = """INSERT INTO {results_table} (obsid, name, value, number)
  VALUES (:obsid, :name, :value, :number)"""
RESULT_NAMES = """SELECT DISTINCT r.name FROM {results_table} r JOIN {job_table} j ON j.obsid = r.obsid
  WHERE j.state = 'done' ORDER BY r.name"""
# One row per done obsid and result (name NULL: a done obsid without results), by obsid.
RESULTS_OF_DONE = """SELECT j.obsid, r.name, r.value FROM {job_table} j
  LEFT JOIN {results_table} r ON r.obsid = j.obsid WHERE j.state = 'done' ORDER BY j.obsid, r.name"""

# The count in each state and the pending ones by expected duration, in one read of the claim index
# in its own order (state, expected DESC): each entry is read once, not once by state and again by
# expected (tests/bench/RESULTS.md).
STATE_BY_EXPECTED = """SELECT state, expected, COUNT(*) FROM {job_table}
  GROUP BY state, expected ORDER BY state, expected DESC"""
# SQLite's census (SQLiteJobTable._census): the pending ones alone grouped by expected, the other
# states only counted, each a range of the claim index; grouping the done rows by expected too
# cost more than all the rest of `status` on a million rows (tests/bench/RESULTS.md).
PENDING_BY_EXPECTED = """SELECT expected, COUNT(*) FROM {job_table} WHERE state = 'pending'
  GROUP BY expected ORDER BY expected DESC"""
COUNT_IN_STATE = "SELECT COUNT(*) FROM {job_table} WHERE state = :state"
RUNNING_NOW = """SELECT obsid, attempts + 1 AS attempt, host, worker, pid, started, heartbeat, expected, reason,
       lease_expires FROM {job_table} WHERE state = 'running' ORDER BY host, worker, pid, obsid"""
# {by_ended}: without the planner's statistics (no ANALYZE: as users' databases are) SQLite read
# every done row by the claim index and sorted them (0.37 s on a million rows; tests/bench/RESULTS.md).
RECENT_DONE = """SELECT expected, ended - started FROM {job_table}{by_ended}
  WHERE ended IS NOT NULL AND state = 'done' ORDER BY ended DESC LIMIT :limit"""
# The first finishes of the job (the ended index read from its start): with longest first, the
# longest obsids; beside the recent ones they give the speed's fit a span of expected durations.
FIRST_DONE = """SELECT expected, ended - started FROM {job_table}{by_ended}
  WHERE ended IS NOT NULL AND state = 'done' ORDER BY ended LIMIT :limit"""
# Every finish of the last rate window, by whom: the rate and the speed of the workers alive now;
# and the obsids put back pending in it (a stopped worker's last word).
FINISHES_SINCE = """SELECT host, worker, pid, state, expected, started, ended FROM {job_table}{by_ended}
  WHERE ended >= :since AND state IN ('done', 'failed', 'pending')"""
HISTORY_SINCE = """SELECT obsid, attempt, host, worker, pid, started, ended, exit_code, signal_no, outcome, reason,
       heap_mb, cpu_s, peak_rss_mb, read_mb, write_mb
  FROM {history_table}{in_start_order} WHERE started >= :since ORDER BY started, obsid"""


# ----------------------------------------------------------------------------- the template's first launch
# Each version of a job's template, job-wide: probing (one worker's first launch of it), runs (HIPE
# compiled it), broken (it cannot run: the job halts). See templates.py.
TEMPLATES_SUFFIX = "__templates"
CREATE_TEMPLATES_TABLE = """CREATE TABLE IF NOT EXISTS {templates_table} (
  version VARCHAR(16) NOT NULL PRIMARY KEY,
  state VARCHAR(8) NOT NULL,
  obsid BIGINT NULL,
  token CHAR(32) NULL,
  reason VARCHAR(255) NULL,
  since DOUBLE NULL
){table_options}"""
DROP_TEMPLATES_TABLE = "DROP TABLE IF EXISTS {templates_table}"
PROBE = """{insert_ignore} INTO {templates_table} (version, state, obsid, token, since)
  VALUES (:version, 'probing', :obsid, :token, {now})"""
VERSION_STATE = "SELECT state, obsid, token, reason FROM {templates_table} WHERE version = :version"
PROBER_RUNNING = "SELECT 1 FROM {job_table} WHERE obsid = :obsid AND token = :token AND state = 'running'"
ABANDON = "DELETE FROM {templates_table} WHERE version = :version AND state = 'probing' AND token = :token"
VERDICT = """UPDATE {templates_table} SET state = :state, reason = :reason, since = {now}
  WHERE version = :version AND (state = 'probing' OR :state = 'broken')"""


# ----------------------------------------------------------------------------- the site's learned durations
# One row per obsid of the database (durations.py): what its latest successful attempt in any job took,
# kept up to date by the finish that records a success (in its own transaction), so that `new` reads
# them with one join whatever the number of earlier jobs. {durations_from} lists the jobs whose
# histories it holds: a history not listed (a job of an older version) is read into it once.
DURATIONS_TABLE = "site__durations"          # job names may not contain "__": never a job's table
DURATIONS_FROM_TABLE = "site__durations_from"
CREATE_DURATIONS_TABLE = """CREATE TABLE IF NOT EXISTS {durations} (
  obsid {obsid_type} NOT NULL PRIMARY KEY,
  took DOUBLE NOT NULL,
  ended DOUBLE NOT NULL,
  job VARCHAR(64) NOT NULL
){table_options}"""
CREATE_DURATIONS_FROM_TABLE = """CREATE TABLE IF NOT EXISTS {durations_from} (
  job VARCHAR(64) NOT NULL PRIMARY KEY,
  since DOUBLE NULL
){table_options}"""
# The successful attempts of a history into the durations: the latest one (by its end, then the
# longest) wins, whatever the order they come in, so reading a history again, or a finish and a
# history read at once, change nothing ({newer_wins}: the dialect's upsert). Only done attempts with
# both times, as before (the mean of the histories read one by one: NULL times gave no duration).
LEARN_HISTORY = """INSERT INTO {durations} (obsid, took, ended, job)
  SELECT obsid, ended - started, ended, :job FROM {learned_history}
  WHERE outcome = 'done' AND started IS NOT NULL AND ended IS NOT NULL ORDER BY obsid{newer_wins}"""
# The same of one claim's success, by the history's key: the row its finish wrote just before, in the
# same transaction (nothing when the finish changed nothing: the claim was no longer ours).
LEARN_CLAIM = """INSERT INTO {durations} (obsid, took, ended, job)
  SELECT obsid, ended - started, ended, :job FROM {history_table}
  WHERE token = :token AND obsid = :obsid AND outcome = 'done' AND started IS NOT NULL AND ended IS NOT NULL{newer_wins}"""
LEARNED_FROM = "SELECT job FROM {durations_from}"
MARK_LEARNED_FROM = "{insert_ignore} INTO {durations_from} (job, since) VALUES (:job, {now})"
FORGET_LEARNED_FROM = "DELETE FROM {durations_from} WHERE job = :job"
# `new`: each pending obsid without a duration expects what the site learned of it, by its primary key.
# Only pending rows: a finished row is left as its run left it. The aliases begin with an underscore,
# which no job name does (model.check_identifier): a job named j would clash with a one-letter alias.
EXPECTED_FROM_DURATIONS = """UPDATE {job_table} _job JOIN {durations} _learned ON _learned.obsid = _job.obsid
  SET _job.expected = ROUND(_learned.took)
  WHERE _job.expected IS NULL AND _job.state = 'pending'"""
EXPECTED_FROM_DURATIONS_SQLITE = """UPDATE {job_table} SET expected = ROUND(_learned.took) FROM {durations} AS _learned
  WHERE _learned.obsid = {job_table}.obsid AND {job_table}.expected IS NULL AND {job_table}.state = 'pending'"""


def in_list(obsids: Sequence[int], size: int = _CHUNK) -> Iterator[Tuple[str, Dict[str, int]]]:
    """The one way an `IN ({obsids})` list is written: per chunk of `size` obsids, the list of named
    parameters (':obsid_0, :obsid_1, ...') and their values."""
    obsids = list(obsids)
    for start in range(0, len(obsids), size):
        names = [f"obsid_{i}" for i in range(len(obsids[start:start + size]))]
        yield ", ".join(":" + name for name in names), dict(zip(names, obsids[start:start + size]))
