"""Checks of the code itself, not of its behaviour: slips a reader misses and a linter has no rule for."""
import ast

from support import ROOT

SOURCES = sorted([*(ROOT / "lib" / "batchUtility").rglob("*.py"), ROOT / "bin" / "BatchProcess.py"])

SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _events(node, own=frozenset()):
    """(line, column, name, 'store' or 'load') for each use of a name in node's own scope:
    nested functions and classes are skipped, and a comprehension's own variables are its own."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, SCOPES):
            continue
        if isinstance(child, COMPREHENSIONS):
            inner = own | {t.id for g in child.generators for t in ast.walk(g.target) if isinstance(t, ast.Name)}
            yield from (e for e in _events(child, inner) if e[2] not in inner)
            continue
        if isinstance(child, ast.Name):
            yield child.lineno, child.col_offset, child.id, "store" if isinstance(child.ctx, ast.Store) else "load"
        yield from _events(child, own)


def rebound_loop_names(source: str, filename: str):
    """Each loop that rebinds a name read before it (a meaning in use) that is read again after the
    loop before any new binding: the later read gets the loop's last value, not the first meaning.
    This is the slip of issue 17 (`folder`, the worker's folder, rebound by `for folder in (log_dir,
    out_dir)`, then used as the worker's folder: a user's product renamed and deleted)."""
    found = []
    for fn in ast.walk(ast.parse(source, filename)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        args = {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}
        events = sorted(_events(fn))
        for loop in (n for s in fn.body for n in _walk_scope(s) if isinstance(n, (ast.For, ast.AsyncFor))):
            for name in {t.id for t in ast.walk(loop.target) if isinstance(t, ast.Name)}:
                before = [e for e in events if e[2] == name and e[0] < loop.lineno]
                bound = name in args or any(e[3] == "store" for e in before)
                read = any(e[3] == "load" for e in before)
                after = next((e for e in events if e[2] == name and e[0] > loop.end_lineno), None)
                if bound and read and after is not None and after[3] == "load":
                    found.append(f"{filename}:{loop.lineno}: the loop rebinds {name!r}, "
                                 f"which line {after[0]} reads after it")
    return found


def _walk_scope(node):
    """node and what it holds in its own scope (no nested function or class)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, SCOPES):
            yield from _walk_scope(child)


def test_no_loop_rebinds_a_name_read_after_it():
    found = [f for path in SOURCES for f in rebound_loop_names(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []


def test_the_check_finds_issue_17s_slip():
    slip = """
def launch(request, script):
    folder = script.parent
    marker = folder / "completed"
    for folder in (request.log_dir, request.out_dir):
        check_room(folder)
    rename_last_script(folder, script)
"""
    assert rebound_loop_names(slip, "hipe.py") == ["hipe.py:5: the loop rebinds 'folder', which line 7 reads after it"]


def test_the_check_leaves_a_count_and_a_comprehension_alone():
    fine = """
def count(rows, fds):
    n = 0
    for n, row in enumerate(rows, 1):
        write(row)
    kept = [fd for fd in fds if fd > 2]
    for fd in kept:
        close(fd)
    for fd in (0, 1, 2):
        dup2(fd)
    return n
"""
    assert rebound_loop_names(fine, "report.py") == []
