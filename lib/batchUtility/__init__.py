"""batchUtility: run one HIPE (Jython) script over many Herschel obsids, tracked in an SQL table.

Modules, one job each, from the entry point down (docs/development.md draws the data flow):
  startup       the entry point of BatchProcess.py: stops answered before the imports, then cli
  cli           the command line (bin/BatchProcess.py), thin over the modules below
  mpi_launch    the MPI launcher (bin/BatchProcess_mpi.sh): its options, checks, mpirun's command line
  mpi_host      under mpirun, one process per host: its hostfile slots forked as `run -j` forks them
  srun_launch   the Slurm launcher (bin/BatchProcess_sbatch.sh): srun's command line, the --mpi hostfile
  frontend      what the front ends share: error lines, the job-wide summary, exit statuses
  local         `run -j N`: N workers forked on this host, at most N per host and job
  first_claims  `run -j N`'s workers' first obsids, claimed by their parent in one transaction and handed over
  relay         `run -j N` on a terminal: the workers' lines and a progress line below them
  worker        the claim-launch-record loop of `run`, its collaborators passed in
  lease         the heartbeat thread: renews a claim's lease, moves the guardian's deadline
  guardian      one small process per worker that kills HIPE if the worker dies or its lease runs short
  hipe          launching HIPE for one obsid and judging whether it succeeded
  workdir       the worker's temporary folder, its pool cache, files opened without following links, disk checks
  storage/      the job table on MySQL/MariaDB or SQLite: statements, engine, table, reads, the two dialects,
                templates (the job-wide verdict on each version of the template: its first launch a probe),
                durations (what each obsid's latest success took, site-wide, kept at finish time, for `new`)
  report, eta, timeline   status text, the ETA, the HTML report and its SVG timeline
  results       what a script records with batchResult, kept in SQL
  config, hostfile, obsids   batch.cfg, the Open MPI hostfile, obsid lists
  model, errors  the words the modules share (states, Claim, Outcome, Lease) and the errors a user sees
  slot          who this worker is: its rank, size and host
  supervise     a launcher's child (mpirun or srun) supervised: stops passed on, lost hosts, hangs
  signals       the stop signals: which, caught how, held across an exec
  procfs        what /proc says of a process: start time, gone, state, children, a launch's leftovers
  memory        heap sizes, the memory a worker may use (MemAvailable, its memory cgroup), OOM-kill counters
  mpirun_output mpirun's standard error without Open MPI's noise
  rank_status   a rank's exit status of 2, 3 or 4 told to the MPI launcher in a line of its own
  testing       an in-memory job table and a fake launcher, for tests of the worker's decisions
"""
__version__ = "1.0.0"
