"""The one way the tool opens a file in a shared folder (workdir.open_to_write, workdir.open_to_read) and
the Slurm launcher's hostfile written through it (issue 18, item 5): links, dangling links, FIFOs,
sockets and folders planted at the name, in-process. Each call runs under an alarm: a call that
blocked (a FIFO opened the old way) fails the test instead of hanging it."""
import contextlib
import errno
import os
import signal
import socket
import stat

import pytest

from batchUtility import hipe, results, srun_launch, workdir
from batchUtility.errors import BadInput

PLANTS = ["link", "dangling link", "fifo", "socket", "empty folder"]


class Blocked(Exception):
    pass


@contextlib.contextmanager
def within(seconds=5):
    """Fail with Blocked if the block takes longer (an open() blocked on a FIFO is interrupted)."""
    def ring(signum, frame):
        raise Blocked(f"blocked for {seconds} s")
    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def place(tmp_path):
    """place(kind) -> (path, victim, nowhere): kind planted at path; victim a file outside the folder
    with known text, nowhere a name that must never be created."""
    folder = tmp_path / "shared"
    folder.mkdir()
    victim, nowhere = tmp_path / "victim", tmp_path / "nowhere"
    victim.write_text("someone's\n")
    sockets = []

    def place(kind, name="file"):
        path = folder / name
        if kind == "link":
            path.symlink_to(victim)
        elif kind == "dangling link":
            path.symlink_to(nowhere)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "socket":
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(path))
            sockets.append(s)
        elif kind == "empty folder":
            path.mkdir()
        return path, victim, nowhere
    yield place
    for s in sockets:
        s.close()


def untouched(victim, nowhere):
    return victim.read_text() == "someone's\n" and not os.path.lexists(nowhere)


@pytest.mark.parametrize("kind", PLANTS)
def test_open_to_write_refuses_anything_but_a_regular_file(place, kind):
    path, victim, nowhere = place(kind)
    before = path.lstat()
    with within(), pytest.raises(workdir.NotAFile) as raised:
        workdir.open_to_write(path)
    assert raised.value.filename == str(path) and "not a regular file" in raised.value.strerror
    after = path.lstat()
    assert (after.st_ino, stat.S_IFMT(after.st_mode)) == (before.st_ino, stat.S_IFMT(before.st_mode))
    assert untouched(victim, nowhere)


@pytest.mark.parametrize("kind", PLANTS)
@pytest.mark.parametrize("how", ["replace", "fresh"])
def test_open_to_write_replaces_what_is_planted_at_a_name_the_tool_owns(place, kind, how):
    path, victim, nowhere = place(kind)
    with within():
        fd = workdir.open_to_write(path, **{how: True})
    with open(fd, "w") as f:
        f.write("the tool's\n")
    assert stat.S_ISREG(path.lstat().st_mode) and path.read_text() == "the tool's\n"
    assert untouched(victim, nowhere)


def test_open_to_write_refuses_to_replace_a_folder_that_holds_anything(place):
    path, _, _ = place("empty folder")
    (path / "inside").write_text("x")
    with pytest.raises(OSError) as raised:
        workdir.open_to_write(path, replace=True)
    assert raised.value.errno == errno.ENOTEMPTY and raised.value.filename == str(path)
    assert (path / "inside").read_text() == "x"


def test_open_to_write_of_a_regular_file(tmp_path):
    """Created when missing; truncated only once known to be a regular file (or left whole, for a lock);
    fresh makes a new file (another inode) even over a regular one."""
    path = tmp_path / "f"
    with open(workdir.open_to_write(path), "w") as f:
        f.write("first")
    assert path.read_text() == "first" and stat.S_IMODE(path.stat().st_mode) & 0o600 == 0o600
    os.close(workdir.open_to_write(path, truncate=False))
    assert path.read_text() == "first"
    inode = path.stat().st_ino
    os.close(workdir.open_to_write(path))
    assert path.read_text() == "" and path.stat().st_ino == inode
    path.write_text("again")
    os.close(workdir.open_to_write(path, fresh=True))
    assert path.read_text() == ""
    with pytest.raises(FileNotFoundError) as raised:
        workdir.open_to_write(tmp_path / "no-folder" / "f")
    assert raised.value.filename == str(tmp_path / "no-folder" / "f")


@pytest.mark.parametrize("kind", PLANTS)
def test_open_to_read_refuses_anything_but_a_regular_file(place, kind):
    path, victim, nowhere = place(kind)
    with within(), pytest.raises(workdir.NotAFile) as raised:
        workdir.open_to_read(path)
    assert raised.value.filename == str(path)
    assert untouched(victim, nowhere)


def test_open_to_read_of_a_regular_file_blocks_and_a_missing_one(tmp_path):
    path = tmp_path / "f"
    path.write_text("text")
    fd = workdir.open_to_read(path)
    try:
        assert os.get_blocking(fd) and os.read(fd, 10) == b"text"
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError) as raised:
        workdir.open_to_read(tmp_path / "missing")
    assert raised.value.filename == str(tmp_path / "missing")


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_a_results_file_a_script_replaced_is_not_followed_nor_waited_on(place, kind):
    path, victim, _ = place(kind, "results.jsonl")
    victim.write_text('["stolen", 1]\n')
    with within(), pytest.raises(OSError) as raised:
        results.read(path)
    assert raised.value.filename == str(path)


@pytest.mark.parametrize("kind", PLANTS)
def test_the_reason_read_from_a_planted_stderr_log_never_blocks(place, kind):
    """A failed launch's reason is HIPE's last line on stderr (hipe._last_words): a FIFO a script put at
    log/OBSID.stderr is not waited on (before: blocked for good), a link not followed (nothing said)."""
    path, victim, _nowhere = place(kind)
    with within():
        assert hipe._last_words(path) == ""
    assert victim.read_text() == "someone's\n"


@pytest.mark.parametrize("kind", PLANTS)
def test_the_slurm_hostfile_replaces_what_is_planted_at_its_name(place, kind):
    """$TMPDIR/hipe-batch-hostfile.JOBID (TMPDIR is often /tmp): a link there is not followed (its
    target untouched, a dangling one's never created), a FIFO does not block; a new file is written."""
    path, victim, nowhere = place(kind, "hipe-batch-hostfile.42")
    with within():
        srun_launch.save_hostfile(path, ["node1", "node2", "node3"], [8, 8])
    assert stat.S_ISREG(path.lstat().st_mode)
    assert path.read_text() == "node1 slots=8\nnode2 slots=8\nnode3 slots=1\n"
    assert untouched(victim, nowhere)


def test_a_hostfile_name_that_cannot_be_cleared_is_one_line(place):
    path, _, _ = place("empty folder", "hipe-batch-hostfile.42")
    (path / "inside").write_text("x")
    with pytest.raises(BadInput) as raised:
        srun_launch.save_hostfile(path, ["node1"], [1])
    assert str(raised.value).startswith(f"cannot write the hostfile {path}: ") and "\n" not in str(raised.value)
    assert (path / "inside").read_text() == "x"
