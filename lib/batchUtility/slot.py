"""Who this worker is: its slot (rank and size, 1-based as the original printed them) and its host.

Where the slot comes from, first match wins:
1. MPI: started by mpirun (also mpirun inside an sbatch allocation): the MPI rank and size, as
   mpirun's environment gives them (OMPI_COMM_WORLD_RANK/_SIZE, PMI_RANK/_SIZE), else from mpi4py.
2. A Slurm job step started by srun: SLURM_PROCID + 1 of SLURM_NTASKS (SLURM_STEP_ID marks a step;
   the batch script itself has SLURM_PROCID=0 too, but is no step).
3. A Slurm job array task: its place in the array, (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) /
   SLURM_ARRAY_TASK_STEP + 1, of SLURM_ARRAY_TASK_COUNT (of the range MIN..MAX for a list).
   (A one-task srun step inside an array task is the array task's worker: it gets the array slot.)
4. Otherwise slot 1 of 1.
The host is SLURMD_NODENAME under Slurm (the node's name in the cluster, which is what squeue and
sinfo show), else the machine's host name.
"""
import os
import socket
from dataclasses import dataclass
from typing import Mapping, Optional

# Set by mpirun (Open MPI, MPICH/Hydra, PMIx) in every rank it starts.
_MPI_MARKERS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")


@dataclass(frozen=True)
class Slot:
    rank: int   # 1..size
    size: int
    host: str

    @property
    def name(self) -> str:
        return f"{self.rank}/{self.size}"


def current_slot() -> Slot:
    """This process's slot, from its environment (see the module's doc for the order).

    MPI is used only to learn rank and size: ranks never talk to each other (the database is the
    only coordination), so no rank can hang waiting for a dead one.
    """
    env = os.environ
    host = host_name(env)
    if any(v in env for v in _MPI_MARKERS):
        return _mpi_slot(env, host)
    return slurm_slot(env, host) or Slot(1, 1, host)


def host_name(env: Mapping[str, str]) -> str:
    return env.get("SLURMD_NODENAME") or socket.gethostname()


def slurm_slot(env: Mapping[str, str], host: str) -> Optional[Slot]:
    """The slot Slurm gives: of an srun step, else of a job array task; None outside Slurm."""
    step = _step_slot(env, host)
    array = _array_slot(env, host)
    if step is not None and (step.size > 1 or array is None):
        return step
    return array


def _int(env: Mapping[str, str], name: str) -> Optional[int]:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        return None


def _step_slot(env, host) -> Optional[Slot]:
    if "SLURM_STEP_ID" not in env and "SLURM_STEPID" not in env:
        return None
    rank = _int(env, "SLURM_PROCID")
    size = _int(env, "SLURM_STEP_NUM_TASKS") or _int(env, "SLURM_NTASKS")
    if rank is None or not size or not 0 <= rank < size:
        return None
    return Slot(rank + 1, size, host)


def _array_slot(env, host) -> Optional[Slot]:
    task, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
    if task is None or not count:
        return None
    first = _int(env, "SLURM_ARRAY_TASK_MIN")
    first = task if first is None or first > task else first
    step = _int(env, "SLURM_ARRAY_TASK_STEP") or 1
    last = max(_int(env, "SLURM_ARRAY_TASK_MAX") or task, task)
    rank = (task - first) // step + 1
    # An array given as a list (--array=3,17,40: Slurm says step 1) has gaps: the place in the range
    # MIN..MAX, of the range's length, still tells the workers apart.
    return Slot(rank, max(count, (last - first) // step + 1), host)


def _mpi_slot(env, host) -> Slot:
    # Rank and size as the MPI launcher put them in the environment (Open MPI; MPICH's Hydra): what
    # MPI.COMM_WORLD would say, without importing mpi4py and initialising MPI, which cost each rank
    # about 85 ms of CPU (64 ranks on 2 cores: seconds; tests/bench/RESULTS.md) and started Open MPI's
    # threads (the guardian is then exec'd rather than forked). MPI itself only when they are absent.
    for rank_name, size_name in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE")):
        rank, size = _int(env, rank_name), _int(env, size_name)
        if rank is not None and size and 0 <= rank < size:
            return Slot(rank + 1, size, host)
    try:
        import mpi4py
        if env.get("MPI4PY_RC_FINALIZE", "").lower() in ("false", "no", "off", "0"):
            # Set by the MPI launcher (mpi_launch.py says why); mpi4py >= 4 reads it itself, older ones not.
            mpi4py.rc.finalize = False
        from mpi4py import MPI
    except ImportError:  # mpirun without mpi4py: Open MPI still says who we are
        rank = int(env.get("OMPI_COMM_WORLD_RANK") or env.get("PMIX_RANK") or env.get("PMI_RANK") or 0)
        size = int(env.get("OMPI_COMM_WORLD_SIZE") or env.get("PMI_SIZE") or 1)
        return Slot(rank + 1, size, host)
    comm = MPI.COMM_WORLD
    return Slot(comm.Get_rank() + 1, comm.Get_size(), host)
