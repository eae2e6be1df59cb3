"""The Open MPI hostfile: where it is, the hosts it names, their slots. Pure: no database, no mpirun.

Format (Open MPI's): one host a line, `#` starts a comment, then `key=value` words:
    node01 slots=8            # eight workers on node01
    node02 slots=4 max_slots=4
    localhost slots=2
A host without `slots=` gets as many slots as it has cores (Open MPI's rule). A host listed on
several lines without `slots=` gets one slot per line.
"""
import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .errors import BadInput

_SLOTS = {"slots", "slot", "count", "cpu"}
_MAX_SLOTS = {"max_slots", "max-slots", "slots_max", "slots-max"}
# Further keys Open MPI's hostfile reader knows; accepted and passed on untouched.
_OTHER = {"username", "user", "user_name", "port", "boards", "sockets", "sockets_per_board",
          "cores", "cores_per_socket"}


@dataclass(frozen=True)
class Host:
    name: str            # as written, without any user@
    slots: Optional[int]  # None: not given (Open MPI then uses the host's cores, or one a line)
    line: int


def default_paths(root: Path) -> List[Path]:
    """Where the hostfile is looked for without --hostfile: $HIPE_BATCH_ROOT/hostfile, then bin/hostfile."""
    return [root / "hostfile", root / "bin" / "hostfile"]


def find(explicit: Optional[str], root: Path) -> Path:
    """The hostfile to use: --hostfile FILE if given, else the first default that exists."""
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise BadInput(f"hostfile {explicit} not found (from --hostfile)")
        return path.resolve()
    for path in default_paths(root):
        if path.exists():
            return path.resolve()
    raise BadInput(f"no hostfile: looked for {' and '.join(map(str, default_paths(root)))} "
                   "(write one, e.g. `localhost slots=2`, or give --hostfile FILE)")


def parse(path: Path) -> List[Host]:
    """The hosts a hostfile names, in order; BadInput naming file and line for anything wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise BadInput(f"hostfile {path} cannot be read: {why}") from None
    return [host for number, raw in enumerate(text.splitlines(), 1)
            if (host := _parse_line(path, number, raw)) is not None]


def _parse_line(path: Path, number: int, raw: str) -> Optional[Host]:
    line = re.sub(r"\s*=\s*", "=", raw.split("#", 1)[0]).strip()
    if not line:
        return None
    name, *words = line.split()
    if "=" in name:
        raise BadInput(f"{path}:{number}: a line must start with a host name, not {name!r}")
    slots = None
    for word in words:
        key, eq, value = word.partition("=")
        key = key.lower()
        if not eq or key not in _SLOTS | _MAX_SLOTS | _OTHER:
            raise BadInput(f"{path}:{number}: {word!r} is not understood "
                           "(expected e.g. `node01 slots=4 max_slots=4`)")
        if key in _SLOTS | _MAX_SLOTS:
            if not value.isdigit():
                raise BadInput(f"{path}:{number}: {word!r}: {key} must be a whole number")
            if key in _SLOTS:
                slots = int(value)
    return Host(name.rsplit("@", 1)[-1], slots, number)


def slot_count(hosts: List[Host]) -> Optional[int]:
    """Total slots, or None when some host leaves its count to Open MPI (its number of cores)."""
    if any(h.slots is None for h in hosts):
        return None
    return sum(h.slots for h in hosts)


def describe(hosts: List[Host]) -> str:
    """One line: how many hosts and slots, and each host's slots (`cores` when left to Open MPI)."""
    merged = {}
    for h in hosts:
        before = merged.get(h.name, 0)
        merged[h.name] = None if before is None or h.slots is None else before + h.slots
    total = slot_count(hosts)
    parts = [f"{name} {'cores' if n is None else n}" for name, n in merged.items()]
    return f"{len(merged)} host(s), {'?' if total is None else total} slot(s): " + ", ".join(parts)


def is_this_host(name: str) -> bool:
    """Whether `name` is this machine: localhost, its host name, or an address of its own."""
    name = name.strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        if ipaddress.ip_address(name).is_loopback:
            return True
    except ValueError:
        pass
    here = socket.gethostname()
    if name in (here, here.split(".")[0], socket.getfqdn()):
        return True
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        return False
    for family, _, _, _, address in infos:
        if ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
            return True
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((address[0], 0))  # succeeds only for an address of one of this machine's interfaces
            return True
        except OSError:
            continue
    return False
