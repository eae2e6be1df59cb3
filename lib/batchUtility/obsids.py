"""Reading obsid lists: one obsid a line (the first CSV column, as the original read it)."""
import re
import sys
from pathlib import Path
from typing import List, Optional

from .errors import BadInput

# Herschel obsids are 10-digit numbers such as 1342191755; anything longer is a typo, not an obsid.
MAX_OBSID = 9_999_999_999
_OBSID = re.compile(r"[0-9]{1,10}\Z")
WHAT_AN_OBSID_IS = "a positive whole number of at most 10 digits"


def as_obsid(value) -> Optional[int]:
    """The obsid a value of a file line or a master table's column holds, or None if it is none
    (text such as 'abc' or '1342191756abc', a fraction, zero, a negative or too long a number)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, (int, str)) or isinstance(value, bool):
        return None   # a float (1342191755.0), a date, NULL...
    text = str(value).strip()
    if not _OBSID.match(text) or int(text) == 0:
        return None
    return int(text)


def read_obsids(path) -> List[int]:
    """The obsids of a file (`-`: standard input), in file order, duplicates collapsed.

    Blank lines and `#` comments are skipped; a BOM and CRLF line ends are accepted; on a CSV
    line only the first column counts, and a first line `obsid` is a header. Any other line raises
    BadInput naming file, line and text, so that a caller can check the whole file before changing anything.
    """
    if str(path) == "-":   # standard input, e.g. a list piped in from cron
        path, raw = "<stdin>", sys.stdin.buffer.read()
    else:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise BadInput(f"{path}: cannot read obsid file: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise BadInput(f"{path}:{line}: not UTF-8 text") from None
    seen = {}
    for number, line in enumerate(text.splitlines(), 1):
        field = line.split("#", 1)[0].split(",", 1)[0].strip().strip('"').strip()
        if not field or (not seen and field.lower() == "obsid"):  # blank, comment, or a CSV header
            continue
        if not _OBSID.match(field) or int(field) == 0:
            shown = line.strip() if len(line.strip()) <= 60 else line.strip()[:57] + "..."
            raise BadInput(f"{path}:{number}: {shown!r} is not an obsid ({WHAT_AN_OBSID_IS})")
        seen.setdefault(int(field), None)
    return list(seen)
