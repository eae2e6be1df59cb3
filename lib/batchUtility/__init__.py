"""batchUtility: run one HIPE (Jython) script over many Herschel obsids, tracked in an SQL table.

Modules, one job each:
  config    reading batch.cfg
  obsids    reading obsid lists
  storage   the job table (MySQL/MariaDB or SQLite): claim, heartbeat, finish, requeue, counts
  hipe      launching HIPE for one obsid and judging whether it succeeded
  slot      who this worker is (MPI rank, size, host)
  worker    the claim-launch-record loop of `run`
  report    status and summary text
  mpi_launch  the MPI launcher's hostfile checks, lost-host watcher and job-wide summary
  cli       the command line (bin/BatchProcess.py)
"""
__version__ = "1.0.0"
