"""A worker's folders and disks: the temporary folder of its launches, the pool cache in it, the files
written there, and the checks that a disk still takes writes.

Nothing outside the worker's own temporary folder is ever removed or renamed, and nothing is written
through a symbolic link: a link a script (or a user) left is removed or moved aside, never followed.
The worker's folder holds at most one launch's files, however many obsids the worker runs.
"""
import contextlib
import errno
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOM = 4096   # bytes check_room writes: a page, what a full disk refuses first
# What check_room may say of a disk that fails the writes of files already open there too.
WRITES_FAIL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
CACHE_PREFIX = "pool-cache."   # the pool cache folder in the worker's folder: CACHE_PREFIX + a fresh number


# ----------------------------------------------------------------------------- the disk checks
# folder -> (its device and inode, a removed file kept open in it): check_room's probes, this process's only.
_probes: Dict[Path, Tuple[Tuple[int, int], int]] = {}


def _forget_probes() -> None:
    # A forked process makes its own: with one shared, a check could find the page another had just written.
    for _, fd in _probes.values():
        os.close(fd)   # the parent's, inherited across the fork
    _probes.clear()


os.register_at_fork(after_in_child=_forget_probes)


def check_room(folder: Path) -> None:
    """Raise OSError (naming folder) unless a page can be written in folder. A full disk would fail
    HIPE's own writes to its logs, and a JVM ignores those: the obsid would run with its logs lost.
    Only writing tells (quotas, a root's reserved blocks, a read-only mount, as root or not).

    The page goes to a file this process made in folder and removed at once but keeps open, written
    and emptied again at each check: never seen, and gone with the process however it ends.
    Creating and removing a file at each launch cost an inode allocation each time and took the
    shared log folder's lock twice (figures: tests/bench/RESULTS.md)."""
    try:
        fd = _probe(folder)
        try:
            os.pwrite(fd, bytes(ROOM), 0)
        finally:
            os.ftruncate(fd, 0)   # empty between checks: each needs a page the disk still has free
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(folder)) from None


def _probe(folder: Path) -> int:
    """This process's probe file in folder, made anew if folder is now another folder."""
    st = os.stat(folder)
    known = _probes.get(folder)
    if known is not None and known[0] == (st.st_dev, st.st_ino):
        return known[1]
    if known is not None:
        os.close(known[1])
        del _probes[folder]
    fd, path = tempfile.mkstemp(prefix=".batch-room-", dir=folder)
    os.unlink(path)
    _probes[folder] = ((st.st_dev, st.st_ino), fd)
    return fd


def writes_failing(folder: Path) -> Optional[str]:
    """Why files already open in folder cannot be written now (its disk full, read-only or failing),
    else None. Not for folder gone or replaced: files opened before are still written, and the next
    launch names the fault."""
    try:
        check_room(folder)
    except OSError as e:
        if e.errno in WRITES_FAIL:
            return e.strerror
    return None


# ----------------------------------------------------------------------------- the worker's folder
def temporary_folder() -> Path:
    """Where launches put their temporaries: $TMPDIR when set, else tempfile's choice. Python's
    tempfile would silently take /tmp instead of a $TMPDIR that is full, gone or read-only, and an
    operator who pointed TMPDIR at a node's scratch disk must hear of it, not find /tmp filled."""
    chosen = os.environ.get("TMPDIR")
    return Path(os.path.abspath(chosen)) if chosen else Path(tempfile.gettempdir())


def make_scratch(job: str) -> Path:
    """A worker's temporary folder for its launches, in temporary_folder(), made once (raises
    OSError): each launch writes its script, template copy, marker and pool cache there."""
    return Path(tempfile.mkdtemp(prefix=f"hipe-batch-{job}-", dir=temporary_folder()))


def scan(scratch: Path) -> List[os.DirEntry]:
    """What the worker's folder holds now (raises OSError): one scan serves every step of a launch's set-up."""
    with os.scandir(scratch) as found:
        return list(found)


def fresh_cache(scratch: Path, entries: List[os.DirEntry]) -> Path:
    """This launch's pool cache folder in scratch, empty, under a name no earlier launch had (raises
    OSError). The last launch's folder is renamed and emptied rather than replaced (no inode made):
    a process that escaped its HIPE's process group (setsid) and still writes into that folder by
    its path finds no such folder, instead of writing into this launch's cache. Any other folder of
    that name is left to clear()."""
    fresh = scratch / f"{CACHE_PREFIX}{time.monotonic_ns()}"
    earlier = next((e for e in entries if e.name.startswith(CACHE_PREFIX) and e.is_dir(follow_symlinks=False)), None)
    if earlier is None:
        fresh.mkdir()
        return fresh
    os.rename(earlier.path, fresh)   # first: what is written by the old path from now on fails
    empty_folder(fresh)
    return fresh


def reuse_last_script(entries: List[os.DirEntry], job: str, script: Path) -> None:
    """The last launch's script in the worker's folder (entries), if any, renamed to this launch's
    name, to be overwritten: a file reused rather than one created and one removed per launch.
    Only a regular file named as this worker's scripts are (JOB_OBSID.py) is taken."""
    prefix = f"{job}_"
    for entry in entries:
        if (entry.name != script.name and entry.name.startswith(prefix) and entry.name.endswith(".py")
                and entry.name[len(prefix):-3].isdigit() and entry.is_file(follow_symlinks=False)):
            os.rename(entry.path, script)
            return


def clear(entries: List[os.DirEntry], keep: set) -> None:
    """Remove from the worker's folder whatever was in it (entries) but the names in keep: the last
    launch's marker and results (they must never count for this one), its old pool cache folders,
    and anything its script left there. So the folder holds at most one launch's files, however
    many obsids the worker runs. Names only: a symbolic link is removed, never followed."""
    for entry in entries:
        if entry.name not in keep:
            with contextlib.suppress(FileNotFoundError):   # renamed above, or gone meanwhile
                remove(Path(entry.path))


def empty_folder(folder: Path) -> None:
    """Make folder an empty folder: created if missing, whatever is in it removed (raises OSError).
    A symbolic link there (a script may replace its cache by one) is removed, never followed."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):   # a script replaced it
        folder.unlink()
    if not folder.exists():
        folder.mkdir()
        return
    found = list(os.scandir(folder))
    for entry in found:
        remove(Path(entry.path))


def remove(path: Path) -> None:
    """Remove a file or a whole folder (not following a symbolic link; raises OSError)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# ----------------------------------------------------------------------------- files written, never through a link
def write(path: Path, text: str) -> None:
    """Write a file of the launch, never through a symbolic link (a script may leave one in the
    worker's folder: it is replaced); an error names the file (a full disk fails at the write or the
    close, and Python names no file then)."""
    try:
        if path.is_symlink():
            path.unlink()
        with open(_open_own(path), "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def text_of(path: Path) -> Optional[str]:
    """The file's text, or None if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def keep_previous(path: Path) -> None:
    """Move an earlier attempt's log aside (OBSID.stdout -> OBSID.stdout.1, .2, ...) so none is lost.

    A symbolic link found there is always moved aside, never followed: a link planted in log/
    must not make the worker (often root) write HIPE's output into the file it points to."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or st.st_size > 0:
        n = 1
        while os.path.lexists(path.with_name(f"{path.name}.{n}")):
            n += 1
        path.rename(path.with_name(f"{path.name}.{n}"))


def open_log(path: Path) -> int:
    """A fresh log file for HIPE's output, opened without following a symbolic link."""
    keep_previous(path)
    return _open_own(path)


def _open_own(path: Path) -> int:
    """path opened to be written from its start, created if missing; never through a symbolic link (ELOOP)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
