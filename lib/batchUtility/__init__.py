"""batchUtility: run one HIPE (Jython) script over many Herschel obsids, tracked in an SQL table.

Modules, one job each:
  config    reading batch.cfg
  obsids    reading obsid lists
  errors    the errors a user sees, with their exit statuses; domain errors carry data, cli words them
  model     what the others share: states, Claim, Outcome, LaunchEnd, Lease, job name rules
  storage   the job table (MySQL/MariaDB or SQLite): claim, heartbeat, finish, requeue, counts
  hipe      launching HIPE for one obsid (a LaunchRequest) and judging whether it succeeded
  guardian  one small process per worker that kills HIPE if the worker dies or its lease runs short
  lease     the heartbeat thread: renews a claim's lease, moves the guardian's deadline
  slot      who this worker is (MPI rank, size, host)
  worker    the claim-launch-record loop of `run`
  report    status and summary text
  hostfile  the Open MPI hostfile: where it is, its hosts and slots
  mpi_launch  the MPI launcher (bin/BatchProcess_mpi.sh): checks, mpirun, its supervision, the summary
  cli       the command line (bin/BatchProcess.py)
  startup   BatchProcess.py's first step: a stop signal during the imports is one line, not a traceback
"""
__version__ = "1.0.0"
