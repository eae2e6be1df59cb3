"""An MPI rank's slot from mpirun's environment (issue 21): the rank and size Open MPI (or MPICH's
Hydra) put there, without importing mpi4py or initialising MPI, which cost each of 64 ranks about
85 ms of CPU and started Open MPI's threads. In a fresh interpreter, as a rank is."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import batchUtility

CODE = ("import json, sys; from batchUtility.slot import current_slot; s = current_slot(); "
        "print(json.dumps([s.rank, s.size, 'mpi4py' in sys.modules, 'mpi4py.MPI' in sys.modules]))")


def slot_in(**mpi_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "SLURM_"))}
    env.update(mpi_env, PYTHONPATH=str(Path(batchUtility.__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True).stdout
    return tuple(json.loads(out))


@pytest.mark.parametrize("mpi_env, slot", [
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "64", "PMIX_RANK": "0"}, (1, 64)),
    ({"OMPI_COMM_WORLD_RANK": "63", "OMPI_COMM_WORLD_SIZE": "64", "PMIX_RANK": "63"}, (64, 64)),
    ({"PMI_RANK": "2", "PMI_SIZE": "8"}, (3, 8)),   # MPICH's Hydra
], ids=["open-mpi-first", "open-mpi-last", "hydra"])
def test_the_slot_comes_from_mpiruns_environment_without_mpi(mpi_env, slot):
    assert slot_in(**mpi_env) == (*slot, False, False)
