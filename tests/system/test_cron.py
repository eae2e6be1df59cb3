"""The README's crontab recipe, run by Debian's cron daemon and under cron's minimal environment.

The daemon runs in a mount namespace of its own, where /etc/crontab is the test's crontab and
/etc/cron.d, the users' crontabs and /run are empty folders of the test: the machine's own cron
entries never fire, nothing of the machine's is changed, and killing the daemon's process group
ends it all. Every entry fires every minute; instead of mailing it, cron's output goes to a file
per firing (what cron would have mailed).
"""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import ROOT, BatchEnv, wait_for

pytestmark = [pytest.mark.cron, pytest.mark.slow]

CAP = 2
# The nightly job's template: each HIPE leaves a file in jobs/nightly/running while it runs, appends
# how many it saw there to jobs/nightly/concurrency and its obsid to jobs/nightly/launches (under cron no variable of the
# test's reaches HIPE: everything goes by outDir).
TEMPLATE = ("import os, time\n"
            "base = os.path.dirname(os.path.dirname(outDir))\n"
            "d = os.path.join(base, 'running')\n"
            "me = os.path.join(d, str(obsid))\n"
            "open(me, 'w').close()\n"
            "f = open(os.path.join(base, 'concurrency'), 'a'); f.write('%d\\n' % len(os.listdir(d))); f.close()\n"
            "f = open(os.path.join(base, 'launches'), 'a'); f.write('%d\\n' % obsid); f.close()\n"
            "time.sleep(1.0)\n"
            "os.remove(me)\n")


def recipe_lines():
    """The crontab lines of the README's recipe (the block after the `crontab recipe` comment)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- crontab recipe.*?-->\n```crontab\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if re.match(r"[0-9*]", line)]


def commands_for(root: Path, job: str):
    """The recipe's commands for this root and job, with the cap set to CAP: (nightly, weekly)."""
    out = []
    for line in recipe_lines():
        command = line.split(None, 5)[5]
        command = (command.replace("/data/batch", str(root)).replace("/opt/hipe-batch", str(ROOT))
                   .replace(" v11 ", f" {job} ").replace("lists/v11.txt", f"lists/{job}.txt")
                   .replace("-j 4", f"-j {CAP}"))
        assert "%" not in command   # would be a newline to cron
        out.append(command)
    return out


def minimal_env():
    """The environment cron gives a job of /etc/crontab."""
    return {"HOME": "/root", "LOGNAME": "root", "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}


def prepare(env: BatchEnv):
    """Root with a finished job `old` and the list of job `nightly`, which the first firing creates."""
    env.template("old", "pass\n")
    assert env.cli("old", "new", env.obsid_file([7, 8])).returncode == 0
    assert env.cli("old", "run").returncode == 0
    env.template("nightly", TEMPLATE)
    (env.root / "jobs" / "nightly" / "running").mkdir()
    (env.root / "lists").mkdir()
    (env.root / "lists" / "nightly.txt").write_text("101\n102\n103\n104\n")
    (env.root / "lists" / "old.txt").write_text("7\n8\n")


def states(env, job):
    return [r["state"] for r in env.table(job).rows()]


def launches(env):
    path = env.root / "jobs" / "nightly" / "launches"
    return sorted(int(x) for x in path.read_text().split()) if path.exists() else []


class CronDaemon:
    def __init__(self, base: Path, entries):
        self.base = base
        self.outputs = base / "mail"
        self.outputs.mkdir(parents=True)
        for sub in ("cron.d", "spool", "run"):
            (base / sub).mkdir()
        lines = ["SHELL=/bin/sh", 'MAILTO=""']
        for name, command in entries:
            # Output to a file per firing instead of a mail; then a line saying the firing ended.
            lines.append(f"* * * * * root ( {command} ) > {self.outputs}/{name}.$$ 2>&1;"
                         f" echo $? >> {self.outputs}/{name}.ended")
        crontab = base / "crontab"
        crontab.write_text("\n".join(lines) + "\n")
        crontab.chmod(0o644)
        mounts = (f"mount --bind {crontab} /etc/crontab && mount --bind {base / 'cron.d'} /etc/cron.d && "
                  f"mount --bind {base / 'spool'} /var/spool/cron/crontabs && mount --bind {base / 'run'} /run && "
                  "exec /usr/sbin/cron -f -L 15")
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env=minimal_env())

    def firings(self, name):
        """Exit statuses of the firings of entry `name` that ended."""
        path = self.outputs / f"{name}.ended"
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    def mail(self):
        """What cron would have mailed: every non-empty output, by file name."""
        return {p.name: p.read_text() for p in self.outputs.iterdir() if not p.name.endswith(".ended")
                and p.stat().st_size}

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        # Firings still running (each in a session of its own): found by the test's paths.
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.base).encode() in cmdline and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def two_roots(tmp_path, mariadb):
    """One root on SQLite and one on MariaDB, each prepared as above."""
    db = mariadb.create_database(f"cron{os.getpid()}")
    envs = {"sqlite": BatchEnv(tmp_path / "sqlite", "sqlite"), "mysql": BatchEnv(tmp_path / "mysql", "mysql", mariadb, db)}
    for env in envs.values():
        prepare(env)
    yield envs
    with mariadb.admin() as c:
        c.cursor().execute(f"DROP DATABASE IF EXISTS `{db}`")


def test_the_readme_recipe_under_the_cron_daemon(two_roots, tmp_path):
    entries = []
    for backend, env in two_roots.items():
        nightly, _ = commands_for(env.root, "nightly")
        old_nightly, old_weekly = commands_for(env.root, "old")
        # The nightly line twice (two overlapping firings), and both lines of a finished job.
        entries += [(f"{backend}-a", nightly), (f"{backend}-b", nightly),
                    (f"{backend}-old", old_nightly), (f"{backend}-old-reset", old_weekly)]
    old_rows = {b: env.table("old").rows() for b, env in two_roots.items()}
    cron = CronDaemon(tmp_path / "cron", entries)
    try:
        # First firing: the job is created from the list and its four obsids run, two at a time.
        for backend, env in two_roots.items():
            wait_for(lambda: len(cron.firings(f"{backend}-a")) >= 1 and len(cron.firings(f"{backend}-b")) >= 1,
                     90, f"the first firing on {backend}")
            assert states(env, "nightly") == ["done"] * 4, cron.mail()
            (env.root / "lists" / "nightly.txt").write_text("101\n102\n103\n104\n105\n106\n107\n108\n")
        started = time.monotonic()
        # Second firing: the job goes on with the obsids added to the list since.
        for backend, env in two_roots.items():
            wait_for(lambda: len(cron.firings(f"{backend}-a")) >= 2 and len(cron.firings(f"{backend}-b")) >= 2,
                     90, f"the second firing on {backend}")
            assert states(env, "nightly") == ["done"] * 8, cron.mail()
        assert time.monotonic() - started > 30   # really a later firing
        for backend, env in two_roots.items():
            assert launches(env) == list(range(101, 109))        # each obsid run once, over two firings
            seen = [int(x) for x in (env.root / "jobs" / "nightly" / "concurrency").read_text().split()]
            assert max(seen) <= CAP, (backend, seen)            # two overlapping firings, one cap
            wait_for(lambda: len(cron.firings(f"{backend}-old")) >= 2 and len(cron.firings(f"{backend}-old-reset")) >= 2,
                     30, "the finished job's firings")
            assert env.table("old").rows() == old_rows[backend]  # a finished job: nothing done
            assert not (env.root / "jobs" / "old" / "log" / "7.stdout.1").exists()
        assert cron.mail() == {}                                  # all is well: nothing to mail
    finally:
        cron.stop()


def test_the_recipe_lines_under_env_i(two_roots):
    """The same commands with cron's environment (env -i, PATH=/usr/bin:/bin, system python3), no daemon."""
    for backend, env in two_roots.items():
        nightly, weekly = commands_for(env.root, "nightly")

        def sh(command):
            return subprocess.run(["env", "-i", *[f"{k}={v}" for k, v in minimal_env().items()], "/bin/sh", "-c", command],
                                  capture_output=True, text=True, timeout=300, cwd="/")
        r = sh(nightly)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), backend
        assert states(env, "nightly") == ["done"] * 4
        r = sh(nightly)                                            # again: the job is finished
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), backend
        assert launches(env) == [101, 102, 103, 104]
        assert (env.root / "cron.log").read_text() == ""
        # The run command alone says how the job went by its exit status: 0, every obsid done.
        run = re.search(r"(/\S+/bin/BatchProcess\.py --config batch\.cfg nightly run [^;]*);", nightly).group(1)
        r = sh(f"cd {env.root} && {run}")
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), backend
        r = sh(weekly)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), backend
