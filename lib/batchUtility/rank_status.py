"""A worker's exit status of 2, 3 or 4 told to the MPI launcher, which mpirun does not tell it.

mpirun, run with --enable-recovery (mpi_launch), exits 0 whatever its ranks did. So the launcher
makes a token for each launch (random) and gives it to every rank in $HIPE_BATCH_STATUS_TOKEN,
which the rank takes out of its environment at once (its workers and HIPE never see it); a
rank (`BatchProcess.py JOB run`, one slot, or one host's slots forked: the worst of them) that
leaves with 2 (bad input, HIPE or the template gone, a broken host), 3 (the database away past
db_patience) or 4 (no room for an obsid's heap) writes, as its last word on stderr, one line
`TOKEN exit N`. It comes back through mpirun's stderr to the launcher's relay (mpirun_output), which
notes N and drops the line: the user reads the worker's own error line, as before, and nothing more.

A token rather than the error lines' wording: the statuses come from many errors (every BadInput),
whose wording changes and may hold any text (a path, HIPE's last words in a reason); a line holding
a token made at random for this launch is nothing but the rank's word. The relay finds it behind
whatever mpirun puts before a rank's line (--tag-output, --timestamp-output).

Not told: a rank killed (its obsid is taken back after its lease, the job table says the rest), a
stop (128+N: the launcher was stopped itself). When the ranks' stderr does not come back through
mpirun's pipe (mpirun's --output-filename, --merge-stderr-to-stdout, --xterm) the launcher gives no
token (the line would be seen): it then exits 1 for an unfinished job, as it did before.
"""
import os
import re
import secrets
import sys
from typing import MutableMapping, Optional

from .errors import PASSED_ON

VARIABLE = "HIPE_BATCH_STATUS_TOKEN"
# mpirun options after which a rank's stderr no longer reaches the launcher's relay
DIVERTING = {"output-filename", "merge-stderr-to-stdout", "xterm"}


def new_token() -> str:
    return f"hipe-batch-status-{secrets.token_hex(12)}"


def diverted(mpirun_options) -> bool:
    """Whether mpirun's options send the ranks' stderr elsewhere than mpirun's own stderr."""
    return any(w.startswith("-") and w.lstrip("-").split("=", 1)[0] in DIVERTING for w in mpirun_options)


def take(env: MutableMapping[str, str] = os.environ) -> Optional[str]:
    """This rank's token, taken out of its environment: its workers, HIPE and whatever HIPE runs
    (a BatchProcess.py of a job script's own) never write a status line."""
    return env.pop(VARIABLE, None) or None


def tell(status: int, token: Optional[str], fd: int = 2) -> int:
    """Write `TOKEN exit STATUS` on fd when this process is a rank given a token and STATUS is one
    to tell, after whatever the process printed; returns status."""
    if token and status in PASSED_ON:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        try:
            os.write(fd, f"{token} exit {status}\n".encode())   # one write: never cut by another rank's
        except OSError:
            pass
    return status


class Listener:
    """Finds the ranks' `TOKEN exit N` lines among mpirun's stderr lines; `worst` is the highest N."""

    def __init__(self, token: Optional[str]):
        self.said = (re.compile(re.escape(token.encode()) + rb" exit ([234])(?![0-9])") if token else None)
        self.worst = 0

    def heard(self, line: bytes) -> bool:
        """Whether line is a rank's status line (noted; not to be passed on)."""
        found = self.said.search(line) if self.said else None
        if found:
            self.worst = max(self.worst, int(found.group(1)))
        return bool(found)
