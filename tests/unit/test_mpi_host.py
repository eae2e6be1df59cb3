"""One process per host under BatchProcess_mpi.sh (issue 21): which hostfiles and mpirun options the
launcher starts that way (mpi_launch.host_slot_counts, and mpirun's command line), and which slots
each host's process forks (mpi_host.host_share): the numbers Open MPI gave one rank per slot,
host by host in the hostfile's order. In-process: no mpirun, no database."""
import os

import pytest

from batchUtility import mpi_launch, rank_status
from batchUtility.errors import BadInput
from batchUtility.hostfile import Host
from batchUtility.mpi_host import HOSTS_VARIABLE, host_share


def hosts(*pairs):
    return [Host(name, slots, line) for line, (name, slots) in enumerate(pairs, 1)]


@pytest.mark.parametrize("pairs, extra, counts", [
    ([("localhost", 64)], [], [64]),
    ([("h1", 8), ("h2", 8), ("h3", 4)], ["-x", "FOO", "--mca", "btl", "self,tcp"], [8, 8, 4]),
    ([("h1", 2), ("h2", 3), ("h1", 2)], [], [4, 3]),           # Open MPI merges a host named twice
    ([("h1", 2), ("h2", None)], [], None),                     # h2's cores: only h2 knows them
    ([("h1", 2), ("h2", 0)], [], None),                        # a host without slots
    ([("h1", 4)], ["-np", "2"], None),                         # options placing the ranks themselves
    ([("h1", 4)], ["--map-by", "node"], None),
    ([("h1", 4)], ["--map-by=node"], None),
    ([("h1", 4)], ["-npernode", "2"], None),
    ([("h1", 4)], ["--host", "h1:2"], None),
    ([("h1", 4)], ["--oversubscribe"], [4]),
], ids=["one-host", "three-hosts", "merged", "cores", "no-slots", "np", "map-by", "map-by=", "npernode",
        "host", "oversubscribe"])
def test_which_hostfiles_get_one_process_per_host(pairs, extra, counts):
    assert mpi_launch.host_slot_counts(hosts(*pairs), extra) == counts


@pytest.mark.parametrize("per_host, has_map_by", [([8, 4], True), (None, False)])
def test_mpiruns_command_line(tmp_path, monkeypatch, per_host, has_map_by):
    monkeypatch.setenv(HOSTS_VARIABLE, "99")   # left over from elsewhere: replaced, or gone
    monkeypatch.setenv(rank_status.VARIABLE, "old")   # (and put back after the test)
    words = mpi_launch.mpirun_command("mpirun", tmp_path / "hostfile", mpi_launch.Options("j"), per_host)
    assert words[words.index("--hostfile") + 1] == str(tmp_path / "hostfile")
    assert (words[words.index("--map-by") + 1] == "ppr:1:node") if has_map_by else "--map-by" not in words
    assert (HOSTS_VARIABLE in words) == has_map_by   # sent to every host with -x
    assert words[-2:] == ["j", "run"]
    assert rank_status.VARIABLE in words and os.environ[rank_status.VARIABLE] not in ("old", "")


@pytest.mark.parametrize("options", [mpi_launch.Options("j", dry_run=True),
                                     mpi_launch.Options("j", extra=["--output-filename", "o"]),
                                     mpi_launch.Options("j", extra=["--merge-stderr-to-stdout"])])
def test_no_status_token_where_it_would_show(tmp_path, monkeypatch, options):
    """No token for the ranks' status lines (rank_status) in a command line printed to be copied, nor
    where mpirun sends their stderr elsewhere than through the launcher (the line would be seen)."""
    monkeypatch.setenv(rank_status.VARIABLE, "old")
    words = mpi_launch.mpirun_command("mpirun", tmp_path / "hostfile", options, [2])
    assert rank_status.VARIABLE not in words and rank_status.VARIABLE not in os.environ


def env(counts, rank, size):
    return {HOSTS_VARIABLE: counts, "OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(size)}


@pytest.mark.parametrize("counts, rank, share", [
    ("64", 0, (1, 64, 64)),
    ("8,8,4", 0, (1, 8, 20)),
    ("8,8,4", 1, (9, 8, 20)),
    ("8,8,4", 2, (17, 4, 20)),
])
def test_each_host_forks_the_slots_open_mpi_gave_it(counts, rank, share):
    """(first slot, count, total): host i's slots follow those of the hosts before it."""
    assert host_share(env(counts, rank, len(counts.split(",")))) == share


def test_not_started_per_host_is_one_slot_as_before():
    assert host_share({}) is None
    assert host_share({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8"}) is None
    assert host_share({HOSTS_VARIABLE: "4"}) is None   # not under mpirun (a user's shell kept it)


@pytest.mark.parametrize("counts, rank, size, words", [
    ("8,8,4", 0, 20, "mpirun started 20 process(es) for the 3 host(s)"),   # one per slot after all
    ("8,x", 0, 2, "is not a list of slot counts"),
    ("8,0", 1, 2, "one per host was expected"),
])
def test_a_mismatch_starts_nothing_with_one_line(counts, rank, size, words):
    with pytest.raises(BadInput) as e:
        host_share(env(counts, rank, size))
    assert words in str(e.value) and HOSTS_VARIABLE in str(e.value)
