"""The words worker, HIPE launch and storage share: obsid states, a claim, an outcome, how a launch
ended, what a heartbeat found, and which names may name a job.

No I/O here and no imports of the project's other modules, so that every module can import this one.
"""
import enum
import math
import re
from dataclasses import dataclass
from typing import Any, Optional

from .errors import BadInput

# Row life: pending -> running (claimed, with a fresh token) -> done | failed | pending (a retry).
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATES = (PENDING, RUNNING, DONE, FAILED)

HISTORY_SUFFIX = "__attempts"   # job names may not contain "__", so this never names a job
MAX_JOB_NAME = 48
SQL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}\Z")   # what storage agrees to quote as an identifier

INTERACTIVE_PATIENCE = 10.0  # seconds a command a person waits for (status, reset, new, a stop) bears database trouble
FENCE_SHARE = 0.7  # HIPE is killed when this share of the lease passed since the last renewal began


# A terminal's escape sequences (CSI, OSC, DCS/SOS/PM/APC strings, two-character escapes), and the
# control characters left after them: C0 but tab, DEL, C1 (CSI as the one character 0x9b included).
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
                      r"|[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?|[ -/]*[0-~])?"
                      r"|\x9b[0-?]*[ -/]*[@-~]|\x9d[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?")
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: Any) -> str:
    """Text that came from HIPE or a job script (its last stderr line, a result), safe to store and to
    print on a terminal: escape sequences and control characters (C0 but tab, DEL, C1) removed, so
    that it cannot clear a screen, retitle a window, move the cursor or hide what follows."""
    return _CONTROLS.sub("", _ESCAPES.sub("", "" if text is None else str(text)))


def as_seconds(value: Any) -> Optional[float]:
    """A duration as the database holds it (a master table's pipetime, a job's expected) in seconds,
    or None (unknown) when it is not a number: NULL, '', 'abc', negative, infinite. A master table's
    pipetime column may be text (the 2014 dump's users made their own); SQLite keeps text as text."""
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value.strip() if isinstance(value, (str, bytes)) else value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def check_identifier(name: object, what: str = "job name") -> str:
    """Return `name` if it may name a job (or a master table); else raise BadInput saying why."""
    if not isinstance(name, str) or not SQL_NAME.match(name) or len(name) > MAX_JOB_NAME or "__" in name:
        raise BadInput(f"{what} {name!r} is not valid: use at most {MAX_JOB_NAME} letters, digits and "
                       "single underscores, starting with a letter")
    return name


@dataclass(frozen=True)
class Claim:
    """An obsid this worker owns until it finishes, requeues, or its lease runs out."""
    obsid: int
    token: str
    attempt: int       # 1 on the first try
    lease: float = 0.0  # seconds: the claiming worker's [run] lease, stored in the row's lease_expires
    heap_mb: Optional[int] = None   # the Java heap (MiB) the obsid is known to need (None: [hipe] memory)


@dataclass(frozen=True)
class Cost:
    """What one launch of HIPE cost, from the kernel's own accounting (hipe.py says how; None: not known):
    CPU seconds (user + system) of HIPE, the descendants it waited for and those it left for the
    worker to reap, the peak resident memory of the largest of them (MiB), and the bytes they read
    and wrote (MiB, read()/write() calls: rchar, wchar)."""
    cpu_s: Optional[float] = None
    peak_rss_mb: Optional[float] = None
    read_mb: Optional[float] = None
    write_mb: Optional[float] = None


@dataclass(frozen=True)
class Outcome:
    """What became of one launch of HIPE."""
    ok: bool
    reason: str = ""
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    template: str = ""   # the content hash of the template HIPE ran (provenance), if it ran
    # The script's own fault (HIPE's exit status not 0, the script stopping before its end, our
    # timeout): running it again would only fail again. Not so: HIPE killed by a signal we did not send.
    script_error: bool = False
    cost: Optional[Cost] = None
    heap_mb: Optional[int] = None     # the Java heap (java.vm.memory.max) this launch was given, MiB
    # Why HIPE ran out of memory ("java.lang.OutOfMemoryError: Java heap space", "killed by the kernel's
    # OOM killer"), if it did: the worker retries it with a bigger heap, up to [hipe] max_memory.
    out_of_memory: str = ""
    heap_next: Optional[int] = None   # the heap (MiB) its next run should get, when this launch taught one
    # HIPE could not compile the template (a SyntaxError or IndentationError before its first line
    # ran): no obsid can run it, on any worker. The job halts; the obsid goes back uncounted.
    template_broken: bool = False


class LaunchEnd(enum.Enum):
    """How one launch of HIPE ended; exactly one of these is true of every launch."""
    FINISHED = "finished"        # HIPE exited (or timed out and was killed): the outcome says ok or not
    STOPPED = "stopped"          # this worker got a stop signal and stopped HIPE: not the obsid's fault
    CLAIM_LOST = "claim lost"    # the lease was taken back: the obsid is another worker's now
    SETUP_FAULT = "setup fault"  # HIPE could not be launched or watched, or ended on a full log disk: not the obsid's fault
    FENCED = "fenced"            # the guardian killed HIPE: the lease was not renewed in time (not the obsid's fault)


class Lease(enum.Enum):
    """What refreshing a claim's lease found."""
    HELD = "held"          # still ours
    LOST = "lost"          # taken back (reclaimed or reset): stop HIPE, record nothing
    UNKNOWN = "unknown"    # the database could not be reached: keep going, try again next beat
