"""Issue 23 in-process: heap sizes, the memory a worker has (a /proc and cgroup trees written as the
kernel lays them out, v1 and v2), the reason a Java failure gives (the exception's own line), an
out-of-memory verdict, and the worker's decisions about it (batchUtility.testing: an in-memory job
table, scripted launches): the heap doubled up to [hipe] max_memory, not charged as a script error,
failed beyond it with the setting to raise, and remembered for the obsid's next run."""
import io
import sys

import pytest

from batchUtility import hipe, memory
from batchUtility.config import Config, HipeSettings, RunSettings
from batchUtility.hipe import Launch
from batchUtility.model import Cost, Outcome
from batchUtility.slot import Slot
from batchUtility.testing import FakeGuardian, FakeLauncher, FakeLeaseKeeper, InMemoryJobTable, done
from batchUtility.worker import Worker
from support import settled

JOB = "j"
JAVA_TRACE = """INFO: starting the pipeline
Exception in thread "main" java.lang.OutOfMemoryError: Java heap space
\tat java.base/java.util.Arrays.copyOf(Arrays.java:3537)
\tat herschel.hifi.pipeline.Level1.run(Level1.java:212)
\t... 12 more
"""


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("text, mb", [("2048m", 2048), ("4g", 4096), ("4G", 4096), ("1048576k", 1024),
                                      ("1", 1), ("3000000", 3), ("1t", 1 << 20)])
def test_heap_sizes_in_mib(text, mb):
    assert memory.megabytes(text) == mb


@pytest.mark.parametrize("text", ["", "0", "2 GB", "-1g", "1.5g", "4x"])
def test_not_heap_sizes(text):
    with pytest.raises(ValueError):
        memory.megabytes(text)


def test_max_memory_defaults_to_memory():
    assert HipeSettings(("hipe",), "2g", (), 0.0).max_memory_mb == 2048
    assert HipeSettings(("hipe",), "2g", (), 0.0, "8g").max_memory_mb == 8192


# ----------------------------------------------------------------------------- the memory a worker has
def _proc(tmp_path, cgroup_lines, mounts, meminfo_kb=(8_000_000, 6_000_000), oom_kill=3):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    total, available = meminfo_kb
    (proc / "meminfo").write_text(f"MemTotal:       {total} kB\nMemFree:        100 kB\nMemAvailable:   {available} kB\n")
    (proc / "vmstat").write_text("pgfault 12\n" + (f"oom_kill {oom_kill}\n" if oom_kill is not None else ""))
    (proc / "self" / "cgroup").write_text("".join(line + "\n" for line in cgroup_lines))
    (proc / "self" / "mountinfo").write_text("".join(f"{i} 1 0:{i} {root} {point} rw - {fs} {fs} {opts}\n"
                                                     for i, (root, point, fs, opts) in enumerate(mounts, 30)))
    return str(proc)


def test_room_is_meminfo_without_a_memory_cgroup(tmp_path):
    proc = _proc(tmp_path, ["0::/"], [])
    assert memory.room(proc) == memory.Room(5859, "MemAvailable in /proc/meminfo", 7812, "MemTotal in /proc/meminfo")
    assert memory.oom_kills(proc) == 3


def test_room_in_a_cgroup_v1_memory_group_with_a_limit(tmp_path):
    fs = tmp_path / "cgroup" / "memory"
    group = fs / "slurm" / "job_7"
    group.mkdir(parents=True)
    (fs / "slurm" / "memory.limit_in_bytes").write_text("9223372036854771712\n")   # v1's "no limit"
    (group / "memory.limit_in_bytes").write_text(f"{3 << 30}\n")
    (group / "memory.usage_in_bytes").write_text(f"{(1 << 30) + (256 << 20)}\n")
    (group / "memory.stat").write_text(f"cache 1\ntotal_inactive_file {256 << 20}\n")   # reclaimable page cache
    (group / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    proc = _proc(tmp_path, ["5:memory:/slurm/job_7", "0::/"],
                 [("/", str(tmp_path / "cgroup" / "unified"), "cgroup2", "rw"),
                  ("/", str(fs), "cgroup", "rw,memory")])
    room = memory.room(proc)
    assert (room.free, room.most) == (2048, 3072)
    assert str(group) in room.free_from and str(group) in room.most_from
    assert memory.oom_kills(proc) == 3   # /proc/vmstat's count has the cgroups' kills too
    older = _proc(tmp_path / "older", ["5:memory:/slurm/job_7"], [("/", str(fs), "cgroup", "rw,memory")], oom_kill=None)
    assert memory.oom_kills(older) == 2   # a kernel before 4.13: the group's own counter


def test_room_in_a_cgroup_v2_group_whose_parent_sets_the_limit(tmp_path):
    fs = tmp_path / "cgroup2"
    group = fs / "user.slice" / "worker"
    group.mkdir(parents=True)
    (fs / "cgroup.controllers").write_text("cpu io memory pids\n")
    (fs / "user.slice" / "memory.max").write_text(f"{1 << 30}\n")
    (fs / "user.slice" / "memory.current").write_text(f"{900 << 20}\n")
    (group / "memory.max").write_text("max\n")
    (group / "memory.current").write_text(f"{500 << 20}\n")
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    # A container's mount starts at its own group: /proc/self/cgroup names the path from the hierarchy's root.
    proc = _proc(tmp_path, ["0::/outer/user.slice/worker"], [("/outer", str(fs), "cgroup2", "rw")])
    room = memory.room(proc)
    assert (room.free, room.most) == (124, 1024)
    assert str(fs / "user.slice") in room.free_from
    older = _proc(tmp_path / "older", ["0::/outer/user.slice/worker"], [("/outer", str(fs), "cgroup2", "rw")],
                  oom_kill=None)
    assert memory.oom_kills(older) == 1


def test_room_here_is_a_real_figure():
    room = memory.room()
    assert 0 < room.free <= room.most


# ----------------------------------------------------------------------------- reasons and verdicts
@pytest.mark.parametrize("stderr, reason", [
    (JAVA_TRACE, 'java.lang.OutOfMemoryError: Java heap space'),
    ("herschel.ia.task.TaskException: no such product\n\tat herschel.ia.task.Task.perform(Task.java:88)\n"
     "\tat org.python.Py.call(Py.java:1)\nCaused by: java.io.IOException: pool gone\n\tat x.y(Z.java:1)\n\t... 4 more\n",
     "java.io.IOException: pool gone"),
    ('Traceback (most recent call last):\n  File "jobs/j/j.py", line 3, in <module>\n    fail()\n'
     "ValueError: boom\n", "ValueError: boom"),
    ("just a line\n", "just a line"),
])
def test_the_reason_is_the_exceptions_own_line_not_its_last_frame(tmp_path, stderr, reason):
    path = tmp_path / "x.stderr"
    path.write_text(stderr)
    assert hipe._last_words(path) == f": {reason}"


def test_java_out_of_memory_is_found_anywhere_in_a_long_stderr(tmp_path):
    path = tmp_path / "x.stderr"
    path.write_text("noise\n" * 400_000 + 'Exception in thread "main" java.lang.OutOfMemoryError: Metaspace\n'
                    + "\tat x.y(Z.java:1)\n" * 50_000)
    assert hipe._java_out_of_memory(path) == "java.lang.OutOfMemoryError: Metaspace"
    path.write_text("ValueError: boom\n")
    assert hipe._java_out_of_memory(path) == ""


def test_verdicts_out_of_memory(tmp_path):
    path = tmp_path / "x.stderr"
    path.write_text(JAVA_TRACE)
    java = hipe._verdict(1, False, path)
    assert java.out_of_memory == "java.lang.OutOfMemoryError: Java heap space" and java.script_error
    assert java.reason == "HIPE exited with status 1: java.lang.OutOfMemoryError: Java heap space"
    path.write_text("")
    kernel = hipe._verdict(-9, False, path, oom_killed=True)
    assert kernel.out_of_memory == "killed by the kernel's OOM killer"
    assert kernel.reason == "HIPE killed by SIGKILL: the kernel's OOM killer (out of memory)"
    assert hipe._verdict(137, False, path, oom_killed=True).out_of_memory   # a launcher passing the kill on
    assert not hipe._verdict(-9, False, path, oom_killed=False).out_of_memory   # a SIGKILL of someone else's
    assert not hipe._verdict(-15, False, path, oom_killed=True).out_of_memory
    assert hipe._verdict(0, True, path, oom_killed=True).ok


# ----------------------------------------------------------------------------- the worker's decisions
@pytest.fixture
def make(tmp_path):
    (tmp_path / "jobs" / JOB).mkdir(parents=True)
    (tmp_path / "jobs" / JOB / f"{JOB}.py").write_text("print(obsid)\n")
    settled(tmp_path / "jobs" / JOB / f"{JOB}.py")

    def make(table, launcher, memory="512m", max_memory="", **run):
        settings = {"lease": 30.0, "max_attempts": 3, "db_patience": 60.0, "wait_for_running": True, **run}
        cfg = Config(tmp_path / "batch.cfg", tmp_path, None,
                     HipeSettings((sys.executable,), memory, (), 0.0, max_memory), RunSettings(**settings))
        return Worker(cfg, table, JOB, Slot(1, 1, "here"), out=io.StringIO(), launcher=launcher,
                      guardian=FakeGuardian, lease_keeper=FakeLeaseKeeper)
    return make


def needs(mb):
    """A launch step: Java's OutOfMemoryError below mb MiB of heap, else done; each with a cost."""
    def step(request, should_stop):
        given = request.hipe.memory_mb
        cost = Cost(cpu_s=1.5, peak_rss_mb=given * 0.9, read_mb=3.0, write_mb=1.0)
        if given < mb:
            return Launch(Outcome(False, "HIPE exited with status 1: java.lang.OutOfMemoryError: Java heap space", 1,
                                  script_error=True, cost=cost, heap_mb=given,
                                  out_of_memory="java.lang.OutOfMemoryError: Java heap space"), 0.01)
        return Launch(Outcome(True, "", 0, cost=cost, heap_mb=given), 0.01)
    return step


def test_out_of_memory_is_retried_with_the_heap_doubled_uncounted(make):
    table = InMemoryJobTable(JOB, [1, 2])
    launcher = FakeLauncher(then=needs(1500))
    w = make(table, launcher, max_memory="4g", halt_after=1)   # one script error would halt it
    assert w.run() == 0
    assert [r.hipe.memory for r in launcher.requests] == ["512m", "1024m", "2048m", "512m", "1024m", "2048m"]
    assert [(h["obsid"], h["attempt"], h["outcome"], h["heap_mb"]) for h in table.history(1)] == [
        (1, 1, "memory", 512), (1, 1, "memory", 1024), (1, 1, "done", 2048)]
    assert table.row(1)["state"] == "done" and table.row(1)["attempts"] == 1 and table.row(1)["heap_mb"] == 2048
    assert table.history(1)[0]["reason"] == ("out of memory with a 512m heap, to run again with 1024m: "
                                             "java.lang.OutOfMemoryError: Java heap space")
    assert {h["cpu_s"] for h in table.history()} == {1.5}
    assert not w.halted and w.script_errors == -1


def test_beyond_max_memory_it_fails_naming_the_heap_and_the_setting(make):
    table = InMemoryJobTable(JOB, [1])
    launcher = FakeLauncher(then=needs(5000))
    assert make(table, launcher, max_memory="3g").run() == 1
    assert [r.hipe.memory for r in launcher.requests] == ["512m", "1024m", "2048m", "3072m"]
    row = table.row(1)
    assert (row["state"], row["attempts"], row["heap_mb"]) == ("failed", 1, 6144)
    assert row["reason"] == ("out of memory with a 3072m heap (raise [hipe] max_memory, now 3g, to 6144m or more): "
                             "java.lang.OutOfMemoryError: Java heap space")


def test_without_max_memory_nothing_grows(make):
    table = InMemoryJobTable(JOB, [1])
    launcher = FakeLauncher(then=needs(5000))
    assert make(table, launcher).run() == 1
    assert [r.hipe.memory for r in launcher.requests] == ["512m"]
    assert "raise [hipe] max_memory, now 512m, to 1024m or more" in table.row(1)["reason"]


def test_the_heap_it_needed_is_its_next_runs(make):
    table = InMemoryJobTable(JOB, [1, 2])
    first = FakeLauncher(then=needs(900))
    assert make(table, first, max_memory="8g").run() == 0
    table._rows[1].update(state="pending", attempts=0)   # what `reset` does to it (heap_mb kept)
    table._rows[2].update(state="pending", attempts=0)
    again = FakeLauncher(then=done())
    assert make(table, again, max_memory="8g").run() == 0
    assert [(r.obsid, r.hipe.memory) for r in again.requests] == [(1, "1024m"), (2, "1024m")]
    # never beyond max_memory, never below memory
    table._rows[1].update(state="pending", heap_mb=1 << 20)
    capped = FakeLauncher(then=done())
    assert make(table, capped, max_memory="2g").run() == 0
    assert [r.hipe.memory for r in capped.requests] == ["2048m"]


# ----------------------------------------------------------------------------- the report
def test_the_reports_costs_section():
    from batchUtility import timeline
    attempts = [{"host": "n1", "started": 0.0, "ended": 30.0, "cpu_s": 7200.0, "peak_rss_mb": 100.0, "read_mb": 1024.0,
                 "write_mb": 512.0, "heap_mb": 2048},
                {"host": "n1", "started": 0.0, "ended": 4000.0, "cpu_s": 3600.0, "peak_rss_mb": 300.0, "read_mb": 0.0,
                 "write_mb": 0.0, "heap_mb": 4096},
                {"host": "n2", "started": 0.0, "ended": 10.0, "cpu_s": None, "peak_rss_mb": None}]   # a lost attempt
    html = timeline.costs_section(attempts)
    assert ('<tr><td>n1</td><td class="n">2</td><td class="n">3.00</td><td class="n">300</td><td class="n">300</td>'
            '<td class="n">4,096</td><td class="n">1.00</td><td class="n">0.50</td></tr>') in html
    assert "<td>n2</td>" not in html
    assert "<td>under 1 min</td>" in html and "<td>1-6 h</td>" in html
    assert "No attempt has its cost recorded" in timeline.costs_section([{"host": "n1", "started": 0.0, "ended": 1.0}])
