"""One process per host under mpirun: this host's hostfile slots forked as `run -j` forks them.

bin/BatchProcess_mpi.sh (mpi_launch) starts `BatchProcess.py JOB run` once per host of the hostfile
(`--map-by ppr:1:node`) rather than once per slot, and tells each the hostfile's slot counts,
host by host in the hostfile's order, in $HIPE_BATCH_MPI_HOSTS (e.g. `8,8,4`). The process of MPI
rank i (= the i-th host) forks one worker per slot of its host, numbered as Open MPI numbered one
rank per slot: host i's slots are offset+1 .. offset+count of the total, offset being the slots
of the hosts before it. So every worker's lines, SUMMARY and `worker` column read as before
(`Slot 9/20`), while the host pays for one interpreter, one set of imports, one job check and one
reclaim pass instead of one per slot (tests/bench/RESULTS.md: 64 interpreters on 2 cores took
seconds). A worker that dies is its host's loss alone: its siblings run on and take its obsid back.

No slot locks (the cap of `run -j`): mpirun's ranks never had one, and the slot numbers are the
job's, not this host's. No job-wide summary either: the launcher prints it once.

This host's process killed (SIGKILL, the OOM killer) while its workers run: they are orphans, and
run on as they were. Nothing is lost or run twice: each still holds its own connection, lease and
guardian, runs its HIPE to the end and records it, then claims on to the job's end; mpirun (or its
daemon) still holds their output pipes, so it waits for them, and still passes the launcher's stops
on to their process group (the dead process's), so a stop puts their obsids back. What dies with
the process is the one thing it did: collect their exit statuses. So each orphan says so at once,
on one line (_tell_when_orphaned), the launcher's exit status then being the job table's.
"""
import logging
import os
import signal
from typing import Dict, List, Mapping, Optional, Tuple

from . import procfs
from .errors import BadInput, worst_passed_on
from .local import LocalRun

HOSTS_VARIABLE = "HIPE_BATCH_MPI_HOSTS"
# Sent by the kernel to a forked worker when this host's process dies (PR_SET_PDEATHSIG): a signal
# ignored by default, which nothing else here uses, and which HIPE (exec'd: default dispositions) ignores.
ORPHANED = signal.SIGWINCH
_PR_SET_PDEATHSIG = 1
log = logging.getLogger(__name__)


def host_share(env: Mapping[str, str]) -> Optional[Tuple[int, int, int]]:
    """(first rank, slot count, total slots) of this host's process, or None when not started that
    way (no $HIPE_BATCH_MPI_HOSTS, or not under mpirun): then this process is one slot, as before."""
    counts = env.get(HOSTS_VARIABLE)
    if not counts or "OMPI_COMM_WORLD_RANK" not in env:
        return None
    try:
        slots = [int(c) for c in counts.split(",")]
        index, size = int(env["OMPI_COMM_WORLD_RANK"]), int(env.get("OMPI_COMM_WORLD_SIZE", ""))
    except ValueError:
        raise BadInput(f"{HOSTS_VARIABLE}={counts} (or Open MPI's rank) is not a list of slot counts") from None
    # One process per host, in the hostfile's order: anything else (mpirun options placing the ranks
    # otherwise) would number the slots wrongly, so nothing is started rather than that.
    if size != len(slots) or not 0 <= index < size or min(slots) < 1:
        raise BadInput(f"mpirun started {size} process(es) for the {len(slots)} host(s) of "
                       f"{HOSTS_VARIABLE}={counts}: one per host was expected (this is rank {index})")
    return sum(slots[:index]) + 1, slots[index], sum(slots)


class HostRun(LocalRun):
    """This host's slots first .. first+count-1 of size, forked from this one process."""

    def __init__(self, cfg, job: str, share: Tuple[int, int, int], quiet: bool = False, worker_options=None):
        first, self.count, size = share
        super().__init__(cfg, job, size, quiet=quiet, worker_options=worker_options)
        self.first_rank = first
        self.host_pid = os.getpid()   # the workers' parent, which they outlive if it is killed

    def _worker(self, rank: int, lock_fd: Optional[int]) -> int:
        self._tell_when_orphaned(rank)
        return super()._worker(rank, lock_fd)

    def _tell_when_orphaned(self, rank: int) -> None:
        """In a forked worker: one line when this host's process dies (the worker runs on). Only a
        line: a parent-death signal that stopped the worker would leave its HIPE to the guardian,
        which kills it without putting the obsid back."""
        host_process, told = self.host_pid, []

        def said(signum, frame):
            # Not a SIGWINCH from elsewhere; once. (The handler stays: HIPE, exec'd, gets the default.)
            if os.getppid() != host_process and not told:
                told.append(signum)
                log.warning("[%s slot %d/%d pid %d] this host's process (pid %d) died: the worker runs on "
                            "to the job's end (its exit status goes nowhere: the job table says what it did)",
                            self.host, rank, self.size, os.getpid(), host_process)
        signal.signal(ORPHANED, said)
        if not procfs.prctl(_PR_SET_PDEATHSIG, int(ORPHANED)):   # not Linux: no line, the worker runs on all the same
            return
        if os.getppid() != host_process:   # it died before the prctl
            os.kill(os.getpid(), ORPHANED)

    def _take_slots(self, room) -> Dict[int, Optional[int]]:
        # The launcher warned about the server's connections for the whole job, once.
        return dict.fromkeys(range(self.first_rank, self.first_rank + self.count))

    def _shows_progress(self) -> bool:
        # Open MPI gives each rank a terminal (a pty) for its output, but no person watches that one:
        # the workers' lines go to the launcher's output as they are, no progress line among them.
        return False

    def _finish(self, statuses: List[int]) -> int:
        """As a single worker's status: 128+N after a stop, else the worst of the workers'."""
        if self.stop_signal:
            return 128 + self.stop_signal
        worst = worst_passed_on(statuses)
        return max((s for s in statuses if s in (0, 1)), default=0) if worst is None else worst

