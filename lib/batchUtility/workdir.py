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


# ----------------------------------------------------------------------------- files in shared folders
# The one way the tool opens a file it writes (open_to_write) or reads (open_to_read) in a folder others
# may write too: the job's folder and its log/ and .slots/, TMPDIR, the folder a report is written to.
# Neither ever follows a symbolic link at the last part of the path, and neither ever blocks: a FIFO,
# a device or a socket planted there is never opened for what it is (a FIFO would block open() for good,
# beyond HIPE's timeout and deaf to SIGTERM).
class NotAFile(OSError):
    """What is at path is not a regular file (a link, a FIFO, a folder...): refused, nothing done through it.
    str(e) and e.strerror name what it is; e.filename is the path."""

    def __init__(self, path: Path, mode: int):
        code = errno.ELOOP if stat.S_ISLNK(mode) else errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
        super().__init__(code, f"{kind_of(mode)}, not a regular file: nothing is read or written through it", str(path))


def kind_of(mode: int) -> str:
    """What a file of this st_mode is, in words."""
    for test, words in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                        (stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return words
    return "not a regular file"


OPEN_TRIES = 5   # looks at a name whose entry keeps changing while it is opened, before giving up


def open_to_write(path: Path, *, replace: bool = False, fresh: bool = False, truncate: bool = True,
                  mode: int = 0o644) -> int:
    """path opened for writing (O_WRONLY, close-on-exec), created (mode) if missing; its descriptor.

    Guarantees, whoever else may write the folder:
    - no symbolic link is followed at the last part of path (O_NOFOLLOW; a file is created only with
      O_EXCL, which follows no link either, dangling or not); nothing outside the folder is written;
    - the folder is opened as a folder once, and every step (look, remove, open) is done in that folder
      (dir_fd): renaming or replacing it meanwhile cannot send a step elsewhere. Links in the folder's
      own path are the layout its owner chose (log/ on a scratch disk) and are followed;
    - open() never blocks: only a name that lstat found missing or a regular file is opened, with
      O_NONBLOCK (a FIFO or socket put there meanwhile fails with ENXIO, or opens at once), fstat then
      checks a regular file was opened, and O_NONBLOCK is cleared for the writes;
    - anything else found at the name (a link, a FIFO, a device, a socket, a folder) is refused
      (NotAFile, naming path), or, with replace=True (names the tool owns: a slot lock), removed (a
      folder only if empty) and a new empty file made in its place. fresh=True (the tool's own
      temporary names: the Slurm hostfile) removes whatever is there, a regular file too, and makes a
      new file: one another user made in a sticky folder (/tmp) cannot be removed, and is refused.
    - a regular file is emptied (truncate) only once it is known to be one.
    Raises OSError naming path (e.filename) for anything that goes wrong."""
    if path.name in ("", ".", ".."):
        raise NotAFile(path, stat.S_IFDIR)
    folder = path.parent
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        return _open_to_write_in(folder_fd, path, replace, fresh, truncate, mode)
    except NotAFile:
        raise
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        os.close(folder_fd)


def _open_to_write_in(folder_fd: int, path: Path, replace: bool, fresh: bool, truncate: bool, mode: int) -> int:
    name = path.name
    base = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    for _ in range(OPEN_TRIES):
        found = _lstat_in(folder_fd, name)
        if found is not None and (fresh or not stat.S_ISREG(found.st_mode)):
            if not (replace or fresh):
                raise NotAFile(path, found.st_mode)
            try:
                _remove_in(folder_fd, name, found.st_mode)
            except FileNotFoundError:
                pass
            found = None
        try:
            if found is None:
                fd = os.open(name, base | os.O_CREAT | os.O_EXCL, mode, dir_fd=folder_fd)
            else:
                fd = os.open(name, base, dir_fd=folder_fd)
        except (FileExistsError, FileNotFoundError):
            continue   # made or removed meanwhile: look again
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENXIO):   # a link, a FIFO or a socket put there meanwhile
                continue
            raise
        opened = _regular_or_closed(fd)
        if opened is None:
            continue   # something else put there meanwhile: look again (and refuse or replace it)
        if truncate and opened.st_size:
            os.ftruncate(fd, 0)
        return fd
    found = _lstat_in(folder_fd, name)
    if found is not None and not stat.S_ISREG(found.st_mode):
        raise NotAFile(path, found.st_mode)
    raise OSError(errno.EAGAIN, f"kept changing while it was opened ({OPEN_TRIES} tries)", str(path))


def open_to_read(path: Path) -> int:
    """path opened for reading (O_RDONLY, close-on-exec); its descriptor.

    Guarantees: no symbolic link is followed at the last part of path (O_NOFOLLOW), and open() never
    blocks: only a name that lstat found a regular file is opened, with O_NONBLOCK (a FIFO opened for
    reading would wait for a writer for good), fstat checks that a regular file was opened, and
    O_NONBLOCK is cleared for the reads. Anything but a regular file there (a link, a FIFO, a device,
    a socket, a folder) is refused with NotAFile naming path; a missing file raises FileNotFoundError
    naming it, having opened nothing (a worker out of file descriptors still learns that a launch
    left no results). Nothing is ever changed. (Unlike open_to_write, no descriptor of the folder:
    a read removes and creates nothing, so there is no sequence of steps to keep in one folder.)"""
    if path.name in ("", ".", ".."):
        raise NotAFile(path, stat.S_IFDIR)
    try:
        for _ in range(OPEN_TRIES):
            found = os.lstat(path)
            if not stat.S_ISREG(found.st_mode):
                raise NotAFile(path, found.st_mode)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError as e:
                if e.errno == errno.ELOOP:   # a link put there meanwhile
                    continue
                raise
            if _regular_or_closed(fd) is not None:
                return fd
        raise OSError(errno.EAGAIN, f"kept changing while it was opened ({OPEN_TRIES} tries)", str(path))
    except NotAFile:
        raise
    except OSError as e:
        raise type(e)(e.errno, e.strerror, str(path)) from None


def _lstat_in(folder_fd: int, name: str) -> Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove_in(folder_fd: int, name: str, mode: int) -> None:
    """Remove the entry name of the folder: a link itself (never what it points to), a FIFO, a file,
    or an empty folder (a folder holding anything is not the tool's to remove: OSError ENOTEMPTY)."""
    if stat.S_ISDIR(mode):
        os.rmdir(name, dir_fd=folder_fd)
    else:
        os.unlink(name, dir_fd=folder_fd)


def _regular_or_closed(fd: int) -> Optional[os.stat_result]:
    """fd's stat with O_NONBLOCK cleared if it is a regular file; else fd is closed and None returned."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
        return st
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


# ----------------------------------------------------------------------------- files written, never through a link
def write(path: Path, text: str) -> None:
    """Write a file of the launch in the worker's folder (open_to_write; a link, FIFO or anything else a
    script left at that name is replaced); an error names the file (a full disk fails at the write or
    the close, and Python names no file then)."""
    try:
        with open(open_to_write(path, replace=True), "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def text_of(path: Path) -> Optional[str]:
    """The file's text (open_to_read: no link followed, never blocking), or None if it cannot be read."""
    try:
        with open(open_to_read(path), encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def keep_previous(path: Path) -> None:
    """Move an earlier attempt's log aside (OBSID.stdout -> OBSID.stdout.1, .2, ...) so none is lost.

    A symbolic link found there is always moved aside, never followed: a link planted in log/
    must not make the worker (often root) write HIPE's output into the file it points to. Anything
    else that is not a regular file (a FIFO, a folder...) is left where it is, for open_log to refuse."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_size > 0):
        n = 1
        while os.path.lexists(path.with_name(f"{path.name}.{n}")):
            n += 1
        path.rename(path.with_name(f"{path.name}.{n}"))


def open_log(path: Path) -> int:
    """A fresh log file for HIPE's output (open_to_write): an earlier one or a link moved aside
    (keep_previous), anything else not a regular file refused (NotAFile naming path)."""
    keep_previous(path)
    return open_to_write(path)
