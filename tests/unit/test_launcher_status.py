"""The MPI launcher's exit status (mpi_launch.finish) from a stop, mpirun's own status, the worst
status its ranks told (rank_status) and the job's, in that order, as `run -j` leaves: in-process,
on a real SQLite job of two pending obsids (no mpirun)."""
import pytest

from batchUtility import config, mpi_launch, supervise


@pytest.fixture
def cfg(batch, main):
    batch.template("j", "pass\n")
    assert main("j", "new", batch.obsid_file([1, 2])).code == 0
    return config.load(None)   # batch.cfg of batch's root, where `main` put us


@pytest.mark.parametrize("stopped, mpirun, told, status", [
    (0, 0, 0, 1),       # nobody told anything: the job's (two obsids pending)
    (0, 0, 2, 2),       # a worker's bad setup
    (0, 0, 3, 3),       # a worker's database away
    (0, 0, 4, 4),       # a worker's heap that can never fit
    (0, 5, 3, 5),       # mpirun's own failure first
    (143, 0, 3, 143),   # a stop first
    (143, 5, 4, 143),
])
def test_the_launchers_status(cfg, capsys, stopped, mpirun, told, status):
    stop = supervise.Stop("BatchProcess_mpi.sh")
    stop.status = stopped
    assert mpi_launch.finish(cfg, "j", mpirun, stop, quiet=True, worker_status=told) == status
    said = capsys.readouterr().err
    assert ("mpirun ended with status 5" in said) == (status == 5), said


def test_the_launchers_own_database_trouble_and_a_workers(cfg, capsys):
    """The launcher's own summary failing (here: no such job, 2) and a worker's 3: the worse, 3;
    the launcher's own line is said either way."""
    stop = supervise.Stop("BatchProcess_mpi.sh")
    assert mpi_launch.finish(cfg, "gone", 0, stop, quiet=True, worker_status=3) == 3
    assert mpi_launch.finish(cfg, "gone", 0, stop, quiet=True, worker_status=0) == 2
    assert capsys.readouterr().err.count("BatchProcess_mpi.sh: error: no job 'gone'") == 2
