"""Memory: heap sizes as batch.cfg and Java write them, what memory this worker has, and whether the
kernel's OOM killer struck.

What a worker may still use is the smaller of /proc/meminfo's MemAvailable and, where its memory
cgroup (or an ancestor of it) sets a limit, that limit minus the group's usage: what Slurm or a
container gives it. cgroup v2 (memory.max, memory.current, memory.events) and v1 (memory.limit_in_bytes,
memory.usage_in_bytes, memory.oom_control) are both read; the group is found from /proc/self/cgroup
and /proc/self/mountinfo. An OOM kill is seen in counters the kernel only ever raises: /proc/vmstat's
oom_kill (every OOM kill of the machine, the cgroups' own included) and the group's own oom_kill
counter; a kill during a launch raises them. Imports only os and re.
"""
import functools
import os
import re
from typing import List, NamedTuple, Optional, Tuple

MIB = 1 << 20
_SIZE = re.compile(r"([1-9][0-9]*)([kKmMgGtT]?)\Z")
_UNIT = {"": 1, "k": 1 << 10, "m": MIB, "g": 1 << 30, "t": 1 << 40}


def megabytes(text: str) -> int:
    """A Java heap size (-Xmx's syntax: 2048m, 4g, 1048576k, or bytes) in MiB, rounded up;
    ValueError if it is not one."""
    found = _SIZE.match(text.strip())
    if not found:
        raise ValueError(text)
    size = int(found.group(1)) * _UNIT[found.group(2).lower()]
    return -(-size // MIB)


def setting(mb: int) -> str:
    """MiB as java.vm.memory.max takes it: 4096 -> '4096m'."""
    return f"{mb}m"


class Room(NamedTuple):
    """What memory this worker has: `free` MiB it may use now and `most` MiB it could ever have
    (MemTotal, or its cgroup's limit), each with where the figure comes from."""
    free: int
    free_from: str
    most: int
    most_from: str


def room(proc: str = "/proc", cgroup_fs: Optional[str] = None) -> Room:
    """This worker's memory now (see Room). proc and cgroup_fs: where /proc and the cgroup mounts
    are (the real ones by default)."""
    info = _meminfo(proc)
    free, free_from = info.get("MemAvailable", info.get("MemFree", 0)) // 1024, "MemAvailable in /proc/meminfo"
    most, most_from = info.get("MemTotal", 0) // 1024, "MemTotal in /proc/meminfo"
    for group, limit, usage in _limits(proc, cgroup_fs):
        if limit // MIB < most:
            most, most_from = limit // MIB, f"the limit of memory cgroup {group}"
        if (limit - usage) // MIB < free:
            free, free_from = max(0, limit - usage) // MIB, f"the limit of memory cgroup {group} minus its usage"
    return Room(free, free_from, most, most_from)


def oom_kills(proc: str = "/proc", cgroup_fs: Optional[str] = None) -> int:
    """A count the kernel raises at each OOM kill that may have hit this worker's HIPE: /proc/vmstat's
    oom_kill (every OOM kill of the machine, the cgroups' own included: Linux 4.13 and later), or
    where it has none, this worker's memory cgroup's own oom_kill counter (v2 memory.events, v1
    memory.oom_control). Only its rises mean anything. One small read, at every launch."""
    text = _read(os.path.join(proc, "vmstat"))
    if b"\noom_kill " in text:
        return _field_of(text, "oom_kill")
    return sum(_field(os.path.join(group, "memory.events" if kind == 2 else "memory.oom_control"), "oom_kill")
               for group, kind in _groups(proc, cgroup_fs)[:1])


def _read(path: str) -> bytes:
    """A small /proc or cgroup file's bytes (b'' if it cannot be read): raw reads, no text layer, as
    these are read at every launch."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _meminfo(proc: str) -> dict:
    found = {}
    for line in _read(os.path.join(proc, "meminfo")).splitlines():
        name, _, value = line.partition(b":")
        words = value.split()
        if words and words[0].isdigit():
            found[name.decode("ascii", "replace")] = int(words[0])
    return found


def _field(path: str, name: str) -> int:
    """The number after `name` on its line of a 'name value' file, 0 if there is none."""
    return _field_of(_read(path), name)


def _field_of(text: bytes, name: str) -> int:
    text = b"\n" + text
    at = text.find(b"\n" + name.encode() + b" ")
    if at < 0:
        return 0
    value = text[at + len(name) + 2:].split(b"\n", 1)[0].strip()
    return int(value) if value.isdigit() else 0


def _number(path: str) -> Optional[int]:
    """A file holding one number of bytes; None for 'max', an absent file or a limit that is none
    (v1 says 'no limit' with a huge number)."""
    text = _read(path).strip()
    if not text.isdigit() or int(text) >= 1 << 60:
        return None
    return int(text)


def _limits(proc: str, cgroup_fs: Optional[str]) -> List[Tuple[str, int, int]]:
    """(group folder, limit, usage) of each of this worker's memory cgroups, and their ancestors up to
    the mount's root, that sets a limit."""
    found = []
    for group, kind in _groups(proc, cgroup_fs):
        limit_file, usage_file = (("memory.max", "memory.current") if kind == 2
                                  else ("memory.limit_in_bytes", "memory.usage_in_bytes"))
        limit = _number(os.path.join(group, limit_file))
        if limit is None:
            continue
        # The usage counts the page cache too: what is inactive of it the kernel gives back at once.
        usage = (_number(os.path.join(group, usage_file)) or 0) - _field(
            os.path.join(group, "memory.stat"), "inactive_file" if kind == 2 else "total_inactive_file")
        found.append((group, limit, max(0, usage)))
    return found


@functools.lru_cache(maxsize=8)
def _groups(proc: str, cgroup_fs: Optional[str]) -> List[Tuple[str, int]]:
    """This process's memory cgroup folders (cgroup v2 where its mount has the memory controller,
    else v1's memory hierarchy), the group's own first, then each ancestor up to the mount's root;
    with 2 or 1 for the version. Found once per process: a worker stays in its group."""
    try:
        with open(os.path.join(proc, "self", "cgroup"), encoding="utf-8") as f:
            lines = f.read().splitlines()
        with open(os.path.join(proc, "self", "mountinfo"), encoding="utf-8") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return []
    for line in lines:
        number, controllers, path = ([*line.split(":", 2), "", ""])[:3]
        v2 = number == "0" and controllers == ""
        if not v2 and "memory" not in controllers.split(","):
            continue
        for fields in mounts:
            if "-" not in fields:
                continue
            dash = fields.index("-")
            fstype, options = fields[dash + 1], fields[dash + 3] if len(fields) > dash + 3 else ""
            root, point = fields[3], fields[4]
            if cgroup_fs is not None and not point.startswith(cgroup_fs):
                continue
            if v2 and fstype == "cgroup2" and _has_memory_v2(point):
                return _up(point, root, path, 2)
            if not v2 and fstype == "cgroup" and "memory" in options.split(","):
                return _up(point, root, path, 1)
    return []


def _has_memory_v2(point: str) -> bool:
    try:
        with open(os.path.join(point, "cgroup.controllers"), encoding="ascii") as f:
            return "memory" in f.read().split()
    except OSError:
        return False


def _up(point: str, root: str, path: str, kind: int) -> List[Tuple[str, int]]:
    """The folders of cgroup `path` (as /proc/self/cgroup names it) and its ancestors, in the mount
    at `point` whose root is `root` (a container's mount may start below the hierarchy's root)."""
    root = root.rstrip("/")
    if root and not (path == root or path.startswith(root + "/")):
        return []
    parts = [p for p in path[len(root):].split("/") if p]
    folders = []
    while True:
        folder = os.path.join(point, *parts)
        if os.path.isdir(folder):
            folders.append((folder, kind))
        if not parts:
            return folders
        parts.pop()
