"""What Linux's /proc says of a process: when it started, whether it is gone, its state and parent,
whether it has children, whether this process has one thread, which machine and PID namespace it is in;
what a launch left running (leftovers), found among its descendants.

A pid alone does not name a process (pids are reused); a pid with its start time does. Imports only
os: the guardian, run as its own program (`python -S -I guardian.py`), uses it too.
"""
import os


def _stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (state first), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # "pid (comm) state ppid ...": comm may hold spaces and ')', so split after the last ')'
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int):
    """When process pid started (clock ticks since boot, /proc/PID/stat field 22), or None if there
    is no such live process (a zombie is dead). With the pid, it names a process: a pid reused by a
    later process has another start time."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def process_gone(pid: int, started) -> bool:
    """Whether the process pid that started at `started` (None: not known) no longer runs on this host."""
    now = process_start(pid)
    return now is None or (started is not None and now != started)


def process_state(pid) -> tuple:
    """(state, parent pid) of a process (state as ps shows it: R, S, T, Z, ...), (None, None) if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None, None
    return fields[0].decode(), int(fields[1])


def has_children(pid: int) -> bool:
    """Whether any live process (not a zombie: a hung parent reaps no dead child) has `pid` as its
    parent (True where that cannot be told)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return True
    for name in names:
        state, parent = process_state(name) if name.isdigit() else (None, None)
        if parent == pid and state != "Z":
            return True
    return False


_libc = None   # the C library through ctypes, loaded once (load_prctl)


def load_prctl() -> None:
    """Load what prctl() needs (ctypes, the C library): `run -j`'s parent does it before its forks, so
    that each of its workers does not pay ~5 ms of CPU for it at its first launch."""
    global _libc
    if _libc is None:
        import ctypes  # here, not at the top: the guardian, run as its own program, never needs it
        _libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, arg: int) -> bool:
    """Linux's prctl(option, arg); whether it worked (not on other kernels)."""
    try:
        load_prctl()
        return _libc.prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux's PR_SET_CHILD_SUBREAPER): a
    process that left HIPE's process group (setsid) and outlived HIPE is then reparented to this
    process, not to init, and leftovers() finds it. Whether that worked (not on other kernels)."""
    return prctl(36, 1)   # PR_SET_CHILD_SUBREAPER


def leftovers(ancestors, first_pid: int, spare=()) -> list:
    """(pid, state, process group) of the descendants of the processes `ancestors` among the processes
    of pid first_pid or more (a launch's: started after HIPE), their descendants included, but those
    in spare (the guardian) and the ancestors: what a launch left, seen from its subreaper, zombies
    to reap included. Pids are read in rising order, so a child comes after its parent (but after a
    wrap-around of pids, which then go unseen). Only the processes newer than HIPE are read: a few,
    not all of /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    family, found = set(ancestors), []
    for pid in sorted(int(name) for name in names if name.isdigit() and int(name) >= first_pid):
        if pid in family or pid in spare:
            continue
        fields = _stat_fields(pid)
        if fields is not None and int(fields[1]) in family:
            family.add(pid)
            found.append((pid, fields[0].decode(), int(fields[2])))
    return found


def one_thread() -> bool:
    """Whether this process has one thread, native ones included (threading counts Python's only)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def machine_identity() -> str:
    """Which machine and PID namespace this process's pids belong to: the kernel's boot id (new at
    each boot, different on each machine, cloned VMs and containers of one host name included) and
    the PID namespace ('pid:[4026531836]'), e.g. '5f2c...-... pid:[4026531836]'. Two processes with
    the same identity see the same pids in the same /proc; a pid of a claim made under another
    identity says nothing here. '' where it cannot be told (no /proc, or a /proc that is not this
    PID namespace's: /proc/self is not this pid), which matches no claim."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
        if os.readlink("/proc/self") != str(os.getpid()):
            return ""
    except (OSError, UnicodeDecodeError):
        return ""
    return f"{boot} {namespace}"[:80] if boot else ""
