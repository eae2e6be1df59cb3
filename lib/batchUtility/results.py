"""Results a job script records per obsid with `batchResult(name, value)`, kept in SQL atomically.

While HIPE runs, each call appends one JSON line to a file in the launch's temporary folder; HIPE
never touches the database. Only when the launch succeeded does the worker read that file and
write its results in the same transaction that marks the obsid done: a failed, killed or fenced
attempt leaves none, and a rerun replaces them. In SQL: `JOB__results (obsid, name, value, number)`,
value as text, number as a double (NULL for strings) so that SQL can sum and average it.
"""
import csv
import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional, TextIO, Tuple, Union

from . import workdir

MAX_NAME = 64      # characters of a result's name
MAX_TEXT = 1000    # characters of a string value
Value = Union[int, float, str]

# Valid in Jython 2.7 (HIPE) and in CPython 3 (the test HIPE). A separate block of the preamble.
_PREAMBLE = '''
# Added by batchUtility: batchResult(name, value) records a number or a string for this obsid.
# They reach the job's results table only if the script runs to its end.
def batchResult(name, value, _path={path}):
    try:
        texts, numbers = (str, unicode), (int, long, float)
    except NameError:
        texts, numbers = (str,), (int, float)
    if not isinstance(name, texts) or not 0 < len(name) <= {max_name}:
        raise ValueError("batchResult: the name must be a string of 1 to {max_name} characters, not %r" % (name,))
    if isinstance(value, bool) or not isinstance(value, numbers + texts):
        raise ValueError("batchResult(%r): the value must be a number or a string, not %r" % (name, value))
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise ValueError("batchResult(%r): the value must be a finite number, not %r" % (name, value))
    if isinstance(value, texts) and len(value) > {max_text}:
        raise ValueError("batchResult(%r): a string value may have at most {max_text} characters" % (name,))
    import json
    f = open(_path, "a")
    try:
        f.write(json.dumps([name, value]) + "\\n")
    finally:
        f.close()
'''


def preamble(path_literal: str) -> str:
    """The preamble block defining batchResult, appending to the file the string literal names."""
    return _PREAMBLE.format(path=path_literal, max_name=MAX_NAME, max_text=MAX_TEXT)


def read(path: Path) -> Dict[str, Value]:
    """The results a launch recorded (the last value of each name); {} if it recorded none.

    Raises ValueError naming the line of anything batchResult would not have written. The file is
    opened as workdir.open_to_read opens one (no link followed, never blocking): a script that left a
    link or a FIFO there gets OSError naming the file, never a worker blocked in open()."""
    found: Dict[str, Value] = {}
    try:
        fd = workdir.open_to_read(path)
    except FileNotFoundError:
        return found
    with open(fd, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                name, value = json.loads(line)
            except ValueError:
                raise ValueError(f"results file line {number}: not a [name, value] pair") from None
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
                raise ValueError(f"results file line {number}: bad name {name!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float, str)) \
                    or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"results file line {number}: bad value {value!r} for {name!r}")
            found[name] = value
    return found


def as_row(obsid: int, name: str, value: Value) -> Dict[str, object]:
    """The parameters of one row of JOB__results."""
    if isinstance(value, str):
        return {"obsid": obsid, "name": name, "value": value, "number": None}
    return {"obsid": obsid, "name": name, "value": repr(value), "number": float(value)}


def write_table(names: List[str], rows: Iterable[Tuple[int, Optional[str], Optional[str]]], out: TextIO) -> int:
    """CSV, one row per done obsid and one column per result name, from (obsid, name, value) rows
    ordered by obsid (name None: a done obsid without results). Returns the number of obsids."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["obsid", *names])
    column = {n: i for i, n in enumerate(names)}
    current, values, count = None, [], 0
    for obsid, name, value in rows:
        if obsid != current:
            if current is not None:
                writer.writerow([current, *values])
                count += 1
            current, values = obsid, [""] * len(names)
        if name is not None:
            values[column[name]] = value
    if current is not None:
        writer.writerow([current, *values])
        count += 1
    return count
