"""Who this worker is: its MPI rank and size (1-based, as the original printed them) and its host."""
import os
import socket
from dataclasses import dataclass

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
    """This process's slot: from mpi4py when started by mpirun, else rank 1 of 1.

    MPI is used only to learn rank and size: ranks never talk to each other (the database is the
    only coordination), so no rank can hang waiting for a dead one.
    """
    host = socket.gethostname()
    if not any(v in os.environ for v in _MPI_MARKERS):
        return Slot(1, 1, host)
    try:
        import mpi4py
        if os.environ.get("MPI4PY_RC_FINALIZE", "").lower() in ("false", "no", "off", "0"):
            # Set by the MPI launcher (mpi_launch.py says why); mpi4py >= 4 reads it itself, older ones not.
            mpi4py.rc.finalize = False
        from mpi4py import MPI
    except ImportError:  # mpirun without mpi4py: Open MPI still says who we are
        rank = int(os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("PMIX_RANK") or os.environ.get("PMI_RANK") or 0)
        size = int(os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE") or 1)
        return Slot(rank + 1, size, host)
    comm = MPI.COMM_WORLD
    return Slot(comm.Get_rank() + 1, comm.Get_size(), host)
