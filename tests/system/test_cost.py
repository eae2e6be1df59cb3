"""Issue 23 through the command line, both backends: what each attempt cost (CPU, peak memory, bytes
read and written) measured on a HIPE that does known work; an obsid that runs out of Java heap retried
with the heap doubled up to [hipe] max_memory, failed beyond it, and remembered on its next run (the
trivial HIPE printing a real Jython OutOfMemoryError trace, and the Jython stand-in running out of heap
for real); a worker in a memory cgroup (the real v1 controller here) that waits rather than launch a
heap that does not fit, stops with exit 4 when it never can (run -j and BatchProcess_mpi.sh exit 4
too), and a kernel OOM kill in the cgroup recognised as running out of memory."""
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import OBSID, ROOT, new_job, wait_for

A, B = OBSID, OBSID + 1

# A real trace: bin/hipe-standin (Jython 2.7 on OpenJDK 17) with java.vm.memory.max=64m allocating
# 10 MiB arrays with jarray.zeros until the heap ran out.
JYTHON_OOM = """Traceback (most recent call last):
  File "s.py", line 6, in <module>
    a = jarray.zeros(10 * 1024 * 1024, 'b')
\tat java.base/java.lang.reflect.Array.newArray(Native Method)
\tat java.base/java.lang.reflect.Array.newInstance(Array.java:78)
\tat org.python.core.PyArray.<init>(PyArray.java:213)
\tat org.python.core.PyArray.zeros(PyArray.java:410)
\tat org.python.modules.jarray.zeros(jarray.java:15)
\tat java.base/jdk.internal.reflect.NativeMethodAccessorImpl.invoke0(Native Method)
\tat java.base/java.lang.reflect.Method.invoke(Method.java:569)
java.lang.OutOfMemoryError: java.lang.OutOfMemoryError: Java heap space
"""

# The trivial HIPE's job script (CPython): an obsid that needs more heap than $TRIVIAL_HIPE_MEMORY
# (java.vm.memory.max) prints the trace and exits 1, as HIPE does.
NEEDS = """import os, sys
NEEDS = {needs!r}
heap = os.environ["TRIVIAL_HIPE_MEMORY"]
mb = int(heap[:-1]) * (1024 if heap.endswith("g") else 1) if heap[-1] in "mg" else int(heap) >> 20
if mb < NEEDS.get(obsid, 0):
    sys.stderr.write({trace!r})
    sys.exit(1)
"""

# Known work for obsid A: MB MiB allocated and touched, CPU seconds burnt, MIB written to a file and read
# back; obsid B does nothing (the interpreters' own cost, subtracted).
WORK = """import os, time
if obsid == {a}:
    x = bytearray({mb} << 20)
    for i in range(0, len(x), 4096):
        x[i] = 1
    path = os.path.join(outDir, "data.bin")
    with open(path, "wb") as f:
        for _ in range({io}):
            f.write(b"y" * (1 << 20))
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    os.remove(path)
    while time.process_time() < {cpu}:
        pass
"""


def run(env, *args, timeout=120):
    r = env.cli("j", *args, timeout=timeout)
    return r


def history(env, obsid=None):
    r = env.cli("j", "history", "--json")
    assert r.returncode == 0, r.stderr
    return [h for h in json.loads(r.stdout) if obsid is None or h["obsid"] == obsid]


def calls(env):
    """(obsid, java.vm.memory.max) of every HIPE call so far."""
    if not env.calls.exists():
        return []
    return [(int(line.split()[0]), line.split()[2]) for line in env.calls.read_text().splitlines()]


# ----------------------------------------------------------------------------- what an attempt costs
@pytest.mark.slow
def test_history_gives_what_each_attempt_cost(batch):
    """A HIPE that touches 300 MiB, burns 2 CPU seconds and writes and reads 40 MiB: the history says
    so within a few percent of the work, beyond what an obsid doing nothing costs (the interpreters)."""
    env = batch
    new_job(env, [A, B], template=WORK.format(a=A, mb=300, io=40, cpu=2.0))
    r = run(env, "run")
    assert r.returncode == 0, r.stderr
    [work], [idle] = history(env, A), history(env, B)
    assert idle["cpu_s"] < 1.0 and idle["peak_rss_mb"] < 100, idle
    assert abs(work["cpu_s"] - idle["cpu_s"] - 2.0) <= 0.1, (work, idle)
    # the peak is the largest process's: the script's 300 MiB and its interpreter (at most what idle's peak is)
    assert 300 <= work["peak_rss_mb"] <= 300 * 1.03 + idle["peak_rss_mb"], (work, idle)
    assert abs(work["write_mb"] - idle["write_mb"] - 40) <= 40 * 0.03, (work, idle)
    assert abs(work["read_mb"] - idle["read_mb"] - 40) <= 40 * 0.03, (work, idle)
    assert work["heap_mb"] == 512
    # the same figures in --csv, the text, status --obsid (text and JSON)
    csv = run(env, "history", "--csv").stdout.splitlines()
    assert csv[0].endswith(",cpu_s,peak_rss_mb,read_mb,write_mb,heap_mb"), csv[0]
    assert f",{work['cpu_s']},{work['peak_rss_mb']},{work['read_mb']},{work['write_mb']},512" in csv[1]
    assert f"cpu {work['cpu_s']:.1f} s, peak {work['peak_rss_mb']:,.0f} MiB" in run(env, "history").stdout
    assert f"cpu {work['cpu_s']:.1f} s" in run(env, "status", "--obsid", A).stdout
    [attempt] = json.loads(run(env, "status", "--obsid", A, "--json").stdout)["history"]
    assert attempt["cpu_s"] == work["cpu_s"] and attempt["peak_rss_mb"] == work["peak_rss_mb"]


# A process the job script starts and never waits for: it reads IO MiB of /dev/zero into /dev/null,
# burns CPU seconds (its whole CPU time, its interpreter's start included), says so with one byte on
# a pipe, then ends or lingers (killed with the launch). os.posix_spawn and os.fork leave no Popen
# behind to reap it at the script's exit. Obsid A: a child that ends unwaited (HIPE's zombie, the
# worker's once HIPE is gone); A+1: a child still running when HIPE ends (killed with HIPE's process
# group); A+2: a daemon in a session of its own that lingers, its burning child ended unwaited.
ESCAPES = '''import os, sys
BURN = """import os, sys, time
with open("/dev/zero", "rb") as z, open("/dev/null", "wb") as n:
    for _ in range({io}):
        n.write(z.read(1 << 20))
while time.process_time() < {cpu}:
    pass
os.write(FD, b"x")
if sys.argv[1] == "linger":
    time.sleep(600)
"""
def burn():
    r, w = os.pipe()
    os.set_inheritable(w, True)
    argv = [sys.executable, "-c", BURN.replace("FD", str(w)), "linger" if obsid == {a} + 1 else "end"]
    if obsid in ({a}, {a} + 1):
        os.posix_spawn(sys.executable, argv, os.environ)
    elif os.fork() == 0:
        os.setsid()
        os.posix_spawn(sys.executable, argv, os.environ)
        os.execv("/bin/sleep", ["sleep", "600"])
    os.close(w)
    assert os.read(r, 1) == b"x"
if {a} <= obsid <= {a} + 2:
    burn()
'''


@pytest.mark.slow
def test_processes_hipe_did_not_wait_for_are_counted(batch):
    """What HIPE started and did not wait for (ESCAPES): each burnt 1 CPU s and moved 30 MiB, and
    the attempt's cpu_s, read_mb and write_mb hold it beyond an idle obsid's (before: only what
    HIPE waited for, a few ms)."""
    env = batch
    cases = [A + 10, A + 11, A + 12]
    new_job(env, [*cases, B], template=ESCAPES.format(a=A + 10, io=30, cpu=1.0))
    r = run(env, "run")
    assert r.returncode == 0, r.stderr
    [idle] = history(env, B)
    for obsid in cases:
        [spent] = history(env, obsid)
        # (the idle obsid's own CPU varies by a few 10 ms from one launch to the next)
        assert 1.0 - 0.05 <= spent["cpu_s"] - idle["cpu_s"] <= 1.0 * 1.03 + 0.1, (obsid, spent, idle)
        assert abs(spent["write_mb"] - idle["write_mb"] - 30) <= 30 * 0.03, (obsid, spent, idle)
        # 30 MiB, and the burner's interpreter reading its own modules (about 1.3 MiB)
        assert 30 <= spent["read_mb"] - idle["read_mb"] <= 30 * 1.03 + 3, (obsid, spent, idle)
    assert "left 1 process(es) running after its end" in r.stderr   # the daemon (A+12) is still warned of


@pytest.mark.slow
def test_a_job_of_an_earlier_version_gets_the_cost_columns(batch):
    """A job table without heap_mb and a history without the cost columns (made by an earlier
    version) get them from the next command; its old attempts have no figures, the new ones do."""
    env = batch
    new_job(env, [A, B], template="x = 1\n")
    table = env.table("j")
    drops = ["ALTER TABLE {job_table} DROP COLUMN heap_mb"] + [
        f"ALTER TABLE {{history_table}} DROP COLUMN {c}" for c in ("heap_mb", "cpu_s", "peak_rss_mb", "read_mb", "write_mb")]
    for drop in drops:
        table._transaction(lambda cur, drop=drop: cur.execute(table.statement(drop)), "dropping a column")
    table.close()
    assert run(env, "status").returncode == 0
    assert run(env, "run").returncode == 0
    assert all(h["cpu_s"] is not None and h["heap_mb"] == 512 for h in history(env))
    assert "heap_mb" in env.table("j").rows()[0]


# ----------------------------------------------------------------------------- a heap that grows
@pytest.mark.slow
def test_out_of_java_heap_is_retried_with_more_up_to_max_memory_and_remembered(batch):
    env = batch
    env.write_cfg(hipe={"memory": "256m", "max_memory": "1g"}, run={"halt_after": "1"})
    new_job(env, [A, B], template=NEEDS.format(needs={A: 600, B: 2000}, trace=JYTHON_OOM))
    r = run(env, "run")
    assert r.returncode == 1, r.stderr
    assert calls(env) == [(A, "256m"), (A, "512m"), (A, "1024m"), (B, "256m"), (B, "512m"), (B, "1024m")]
    assert [(h["outcome"], h["heap_mb"], h["attempt"]) for h in history(env, A)] == [
        ("memory", 256, 1), ("memory", 512, 1), ("done", 1024, 1)]
    assert [h["outcome"] for h in history(env, B)] == ["memory", "memory", "failed"]
    rows = {row["obsid"]: row for row in env.table("j").rows()}
    assert (rows[A]["state"], rows[A]["attempts"], rows[A]["heap_mb"]) == ("done", 1, 1024)
    assert (rows[B]["state"], rows[B]["attempts"], rows[B]["heap_mb"]) == ("failed", 1, 2048)
    assert rows[B]["reason"] == ("out of memory with a 1024m heap (raise [hipe] max_memory, now 1g, to 2048m or "
                                 "more): java.lang.OutOfMemoryError: java.lang.OutOfMemoryError: Java heap space")
    assert history(env, A)[0]["reason"].startswith("out of memory with a 256m heap, to run again with 512m: "
                                                   "java.lang.OutOfMemoryError")
    assert "not charged" not in r.stderr and "probably cannot work" not in r.stderr   # halt_after 1 not tripped
    assert "needs a Java heap of 1024m" in run(env, "status", "--obsid", A).stdout
    # The rerun of A starts with the heap it needed; B, once max_memory is raised, with what it needs.
    env.calls.unlink()
    assert run(env, "reset", "--yes").returncode == 0
    env.write_cfg(hipe={"memory": "256m", "max_memory": "2g"})
    assert run(env, "run").returncode == 0
    assert sorted(calls(env)) == [(A, "1024m"), (B, "2048m")]


@pytest.mark.slow
def test_the_jython_standin_running_out_of_heap_for_real(sqlite_batch):
    """bin/hipe-standin (Jython in a JVM of java.vm.memory.max): 120 MiB of Java arrays fail at 64m
    and 128m with Java's own OutOfMemoryError, and fit at 256m."""
    env = sqlite_batch
    env.write_cfg(hipe={"command": str(ROOT / "bin" / "hipe-standin"), "memory": "64m", "max_memory": "256m"})
    new_job(env, [A], template="import jarray\nkept = [jarray.zeros(10 << 20, 'b') for _ in range(12)]\n")
    r = run(env, "run", timeout=300)
    assert r.returncode == 0, r.stderr
    attempts = history(env, A)
    assert [(h["outcome"], h["heap_mb"]) for h in attempts] == [("memory", 64), ("memory", 128), ("done", 256)]
    assert "java.lang.OutOfMemoryError" in attempts[0]["reason"] and "Java heap space" in attempts[0]["reason"]
    assert attempts[-1]["peak_rss_mb"] > 120 and attempts[-1]["cpu_s"] > 0.5


# ----------------------------------------------------------------------------- a worker in a memory cgroup
@contextlib.contextmanager
def memory_group(name, limit_mb):
    """A v1 memory cgroup (or v2 where the memory controller is there) limited to limit_mb MiB;
    yields (folder, preexec_fn putting a child in it)."""
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").exists() and "memory" in (v2 / "cgroup.controllers").read_text().split():
        parent, limit_file = v2, "memory.max"
    else:
        parent, limit_file = Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"
    group = parent / f"batch-test-{name}-{os.getpid()}"
    try:
        group.mkdir()
        (group / limit_file).write_text(str(limit_mb << 20))
    except OSError as e:
        pytest.skip(f"no memory cgroup to limit a worker with ({e})")

    def enter():
        (group / "cgroup.procs").write_text(str(os.getpid()))
    try:
        yield group, enter
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
        wait_for(lambda: not (group / "cgroup.procs").read_text().split(), 30, "the group's processes to end")
        group.rmdir()


def worker_in(env, reaper, enter, name="w"):
    out, err = open(env.root / f"{name}.out", "w"), open(env.root / f"{name}.err", "w")
    proc = reaper.popen(env.popen("j", "run", stdout=out, stderr=err, preexec_fn=enter))
    out.close()
    err.close()
    return proc, env.root / f"{name}.err"


@pytest.mark.slow
def test_a_worker_waits_until_the_heap_fits_in_its_cgroup(batch, reaper):
    env = batch
    env.write_cfg(hipe={"memory": "256m"})
    new_job(env, [A], template="print(obsid)\n")
    with memory_group("wait", 400) as (group, enter):
        hog = reaper.popen(subprocess.Popen(
            [sys.executable, "-c", "import sys\nx = bytearray(250 << 20)\nx[::4096] = b'1' * len(x[::4096])\n"
             "print('ready', flush=True)\nsys.stdin.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=enter))
        assert hog.stdout.readline() == "ready\n"
        worker, err = worker_in(env, reaper, enter)
        wait_for(lambda: "waiting for memory" in err.read_text(), 60, "the worker to say it waits")
        assert not env.calls.exists()   # no HIPE started
        assert env.table("j").row(A)["state"] == "running"
        hog.kill()
        assert worker.wait(60) == 0, err.read_text()
    text = err.read_text()
    assert text.count("waiting for memory") == 1, text
    assert "HIPE's heap of 256m does not fit in the" in text and str(group) in text
    assert calls(env) == [(A, "256m")]


@pytest.mark.slow
def test_a_worker_that_can_never_fit_the_heap_stops_with_exit_4(batch, reaper):
    env = batch
    env.write_cfg(hipe={"memory": "512m"})
    new_job(env, [A], template="print(obsid)\n")
    with memory_group("never", 300) as (group, enter):
        worker, err = worker_in(env, reaper, enter)
        assert worker.wait(60) == 4, err.read_text()
    lines = [line for line in err.read_text().splitlines() if "error:" in line]
    assert len(lines) == 1 and "needs a Java heap of 512m but this worker can have at most 300 MiB" in lines[0], lines
    assert str(group) in lines[0] and "Traceback" not in err.read_text()
    row = env.table("j").row(A)
    assert (row["state"], row["attempts"]) == ("pending", 0)
    assert [h["outcome"] for h in history(env)] == ["memory"]
    assert not env.calls.exists()
    with memory_group("never-j", 300) as (group, enter):   # run -j 2 leaves with its workers' 4
        r = subprocess.run([sys.executable, str(ROOT / "bin" / "BatchProcess.py"), "j", "run", "-j", "2"],
                           capture_output=True, text=True, env=env.env(), cwd=env.root, timeout=120, preexec_fn=enter)
        assert r.returncode == 4, r.stderr
    assert env.table("j").row(A)["state"] == "pending" and not env.calls.exists()


@pytest.mark.parametrize("extra", [[], ["-np", "1"]], ids=["per-host", "np-one-rank-per-slot"])
@pytest.mark.slow
@pytest.mark.mpi
def test_the_mpi_launcher_passes_a_workers_exit_4_on(batch, extra):
    """bin/BatchProcess_mpi.sh in a memory cgroup too small for the heap (mpirun, its rank and the
    worker forked by it inherit the group): the worker stops with 4, which mpirun (run with
    --enable-recovery, so 0 whatever its ranks did) does not pass on; the launcher exits 4 all the
    same, with the worker's one line saying why; nothing counted, no obsid failed."""
    env = batch
    env.write_cfg(hipe={"memory": "512m"})
    new_job(env, [A], template="print(obsid)\n")
    (env.root / "hostfile").write_text("localhost slots=1\n")
    with memory_group("never-mpi", 300) as (group, enter):
        r = subprocess.run([str(ROOT / "bin" / "BatchProcess_mpi.sh"), "j", *extra], capture_output=True, text=True,
                           env=env.env(HIPE_BATCH_PYTHON=sys.executable), cwd=env.root, timeout=180,
                           preexec_fn=enter)
    assert r.returncode == 4, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "needs a Java heap of 512m but this worker can have at most 300 MiB" in lines[0], lines
    assert str(group) in lines[0] and "Traceback" not in r.stderr
    row = env.table("j").row(A)
    assert (row["state"], row["attempts"]) == ("pending", 0)
    assert [h["outcome"] for h in history(env)] == ["memory"]
    assert not env.calls.exists()


@pytest.mark.slow
def test_a_kernel_oom_kill_in_the_cgroup_is_running_out_of_memory(batch, reaper):
    """The script (the largest process of the worker's cgroup) grows past the group's limit: the
    kernel's OOM killer takes it, the trivial HIPE exits 137, and the worker retries it with the
    heap doubled, then fails it naming max_memory."""
    env = batch
    env.write_cfg(hipe={"memory": "64m", "max_memory": "128m"})
    new_job(env, [A], template="x = bytearray(400 << 20)\nx[::4096] = b'1' * len(x[::4096])\n")
    with memory_group("oom", 200) as (_, enter):
        worker, err = worker_in(env, reaper, enter)
        assert worker.wait(120) == 1, err.read_text()
    attempts = history(env, A)
    assert [(h["outcome"], h["heap_mb"]) for h in attempts] == [("memory", 64), ("failed", 128)], attempts
    assert "killed by the kernel's OOM killer" in attempts[0]["reason"]
    row = env.table("j").row(A)
    assert row["reason"].startswith("out of memory with a 128m heap (raise [hipe] max_memory, now 128m, to 256m")
    assert row["heap_mb"] == 256
