"""Unit tests of lib/batchUtility/hostfile.py: finding, parsing and describing an Open MPI hostfile.
In-process and fast: no mpirun, no database, no subprocess."""
import socket

import pytest

from batchUtility import hostfile
from batchUtility.errors import BadInput
from batchUtility.hostfile import Host


def write(tmp_path, text):
    path = tmp_path / "hostfile"
    path.write_text(text)
    return path


def test_parse_hosts_slots_comments_and_users(tmp_path):
    path = write(tmp_path, "# a comment line\n\nnode01 slots=8   # eight\nroot@node02 slots = 4 max_slots=4\n"
                           "node03\n  localhost cpu=2 port=22\n")
    assert hostfile.parse(path) == [Host("node01", 8, 3), Host("node02", 4, 4), Host("node03", None, 5),
                                    Host("localhost", 2, 6)]


@pytest.mark.parametrize("line, expected", [
    ("node01 slots=two\n", "hostfile:1: 'slots=two': slots must be a whole number"),
    ("node01 max_slots=-1\n", "'max_slots=-1': max_slots must be a whole number"),
    ("node01 colour=red\n", "hostfile:1: 'colour=red' is not understood"),
    ("node01 8\n", "'8' is not understood"),
    ("slots=8\n", "hostfile:1: a line must start with a host name, not 'slots=8'"),
    ("ok slots=1\n\nnode01 slots=x\n", "hostfile:3: "),
])
def test_parse_names_file_line_and_word(tmp_path, line, expected):
    path = write(tmp_path, line)
    with pytest.raises(BadInput) as e:
        hostfile.parse(path)
    assert str(path) in str(e.value) and expected in str(e.value)


def test_parse_unreadable(tmp_path):
    (tmp_path / "hostfile").mkdir()
    with pytest.raises(BadInput, match="cannot be read"):
        hostfile.parse(tmp_path / "hostfile")
    binary = tmp_path / "binary"
    binary.write_bytes(b"node\xff slots=1\n")
    with pytest.raises(BadInput, match="cannot be read"):
        hostfile.parse(binary)


def test_empty_hostfile_names_no_host(tmp_path):
    assert hostfile.parse(write(tmp_path, "# nothing\n\n   \n")) == []


def test_slot_count_and_describe():
    hosts = [Host("a", 2, 1), Host("b", 3, 2), Host("a", 1, 3)]
    assert hostfile.slot_count(hosts) == 6
    assert hostfile.describe(hosts) == "2 host(s), 6 slot(s): a 3, b 3"
    cores = [Host("a", 2, 1), Host("c", None, 2)]
    assert hostfile.slot_count(cores) is None
    assert hostfile.describe(cores) == "2 host(s), ? slot(s): a 2, c cores"
    assert hostfile.slot_count([Host("a", 0, 1)]) == 0


def test_find_explicit_then_defaults(tmp_path):
    with pytest.raises(BadInput, match=r"no hostfile: looked for .*/hostfile and .*/bin/hostfile"):
        hostfile.find(None, tmp_path)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "hostfile").write_text("localhost\n")
    assert hostfile.find(None, tmp_path) == (tmp_path / "bin" / "hostfile").resolve()
    (tmp_path / "hostfile").write_text("localhost\n")
    assert hostfile.find(None, tmp_path) == (tmp_path / "hostfile").resolve()
    other = tmp_path / "other"
    other.write_text("localhost\n")
    assert hostfile.find(str(other), tmp_path) == other.resolve()
    with pytest.raises(BadInput, match="nowhere not found \\(from --hostfile\\)"):
        hostfile.find(str(tmp_path / "nowhere"), tmp_path)


@pytest.mark.parametrize("name", ["localhost", "LOCALHOST", "127.0.0.1", "127.0.1.1", "::1", "[::1]",
                                  socket.gethostname()])
def test_is_this_host(name):
    assert hostfile.is_this_host(name)


@pytest.mark.parametrize("name", ["203.0.113.9", "2001:db8::1", "no-such-host.invalid"])
def test_is_not_this_host(name):
    assert not hostfile.is_this_host(name)
