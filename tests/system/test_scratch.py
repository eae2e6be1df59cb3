"""The tool touches nothing of a user's: files a user or a script put in output/ and log/ survive any
number of launches, and the worker's own temporary folder holds one launch's files at most (issue 17)."""
import os
import stat
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# Named as the files the tool makes in the worker's folder, so that a helper handed the wrong folder
# would take them for its own: the last script, the template's copy, the marker, the results, the
# pool cache, the disk check's probe.
PLANTED_FILES = ["product.py", "w_7.py", "w_1342191755.py", "template.py", "completed", "results.jsonl",
                 ".batch-room-x", "notes.txt"]


def plant(folder: Path, elsewhere: Path) -> None:
    """A user's files of each kind the tool handles: files, folders (one named as a pool cache),
    a link to a file outside, a link to a folder, a dangling link."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in PLANTED_FILES:
        (folder / name).write_text(f"user's {name}\n")
    for name in ("maps", "pool-cache.1"):
        (folder / name).mkdir()
        (folder / name / "a.fits").write_text("spectrum\n")
    (folder / "thesis.py").symlink_to(elsewhere / "thesis.py")
    (folder / "calibration").symlink_to(elsewhere / "calibration")
    (folder / "gone.py").symlink_to(elsewhere / "nowhere.py")


def snapshot(folder: Path) -> dict:
    """Every entry under folder, not following links: its kind, inode, and content or link target."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        kind = "link" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else "file"
        what = os.readlink(path) if kind == "link" else path.read_bytes() if kind == "file" else None
        out[str(path.relative_to(folder))] = (kind, st.st_ino, what)
    return out


def test_a_users_files_in_output_and_log_survive_300_launches(batch, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "calibration").mkdir(parents=True)
    (elsewhere / "thesis.py").write_text("years of work\n")
    (elsewhere / "calibration" / "bands.py").write_text("# bands\n")
    job = batch.root / "jobs" / "w"
    plant(job / "output", elsewhere)
    plant(job / "log", elsewhere)
    before = {name: snapshot(job / name) for name in ("output", "log")}
    outside = snapshot(elsewhere)
    # Each obsid's own product is a *.py file too: the first kind the slip of issue 17 took.
    batch.template("w", "open(outDir + 'p%d.py' % obsid, 'w').write('# product of %d\\n' % obsid)\n")
    obsids = list(range(1, 301))
    batch.cli("w", "new", batch.obsid_file(obsids))
    r = batch.cli("w", "run", "-j", "2", timeout=900)
    assert r.returncode == 0, r.stderr
    assert batch.table("w").counts()["done"] == 300
    for name in ("output", "log"):
        after = snapshot(job / name)
        assert {k: v for k, v in after.items() if k in before[name]} == before[name], name
    products = sorted(p.name for p in (job / "output").glob("p[0-9]*.py"))
    assert products == sorted(f"p{o}.py" for o in obsids)
    assert all((job / "output" / f"p{o}.py").read_text() == f"# product of {o}\n" for o in obsids)
    assert snapshot(elsewhere) == outside
    assert sorted(p.name for p in (job / "log").iterdir() if p.name not in before["log"]) == \
        sorted(f"{o}.{s}" for o in obsids for s in ("stdout", "stderr"))


def test_the_workers_folder_stays_bounded_over_2000_launches(sqlite_batch, c_standin, tmp_path):
    """Each launch records how many entries the worker's folder holds as HIPE starts, and leaves a
    file and a folder of its own there (as a script may). The backend plays no part in this folder:
    SQLite only."""
    batch = sqlite_batch
    counts = tmp_path / "counts"
    hipe = tmp_path / "hipe"
    hipe.write_text(f"""#!/bin/bash
shopt -s nullglob dotglob
for script; do :; done
folder=${{script%/*}}
entries=("$folder"/*)
echo ${{#entries[@]}} >> {counts}
echo stray > "$folder/stray.$$"
mkdir "$folder/stray-dir.$$"
exec {c_standin} "$@"
""")
    hipe.chmod(0o755)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    batch.write_cfg(hipe={"command": str(hipe)})
    batch.template("b", "pass\n")
    batch.cli("b", "new", batch.obsid_file(range(1, 2001)))
    r = batch.cli("b", "-q", "run", timeout=900, env=batch.env(TMPDIR=tmpdir))
    assert r.returncode == 0, r.stderr
    assert batch.table("b").counts()["done"] == 2000
    seen = [int(line) for line in counts.read_text().split()]
    assert len(seen) == 2000
    # At HIPE's start: the template's copy, the script and the pool cache; the last launch's
    # marker, results and strays are gone.
    assert max(seen) == 3 and seen[-1] == 3, (seen[:5], max(seen))
    assert list(tmpdir.iterdir()) == []   # and the worker removed its folder when it ended
