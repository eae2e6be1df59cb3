"""A real, private Slurm cluster for tests: munged, slurmctld and one slurmd per node, all in a
temporary folder, on ports of their own, as root (Debian's Slurm 22.05).

    cluster = SlurmCluster(base, {"vm": "127.0.0.1"}).start()   # one node, this machine
    job = cluster.sbatch(["--ntasks=4", script, "JOB"], env=...)
    cluster.wait_ended(job, 120)
    cluster.stop()                                              # everything it started, always

Several nodes: give each node the network namespace it runs in (`netns={"h1": "ns1", ...}`) and
its address there; slurmctld then listens on `ctld_addr` (the bridge's address). Every daemon is
started in the foreground (-D / -F) as a child of this process, so that its pid is ours to kill;
what Slurm starts on its own (slurmstepd, the job's tasks) carries SLURM_CONF=<our slurm.conf> in
its environment and is found by that.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

from mariadb_server import free_port, wait_for

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "srun")
# Job states after which nothing of the job runs any more (scontrol's words).
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
         "BOOT_FAIL", "DEADLINE"}


def missing_commands() -> List[str]:
    return [c for c in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "srun", "scancel")
            if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _command(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """munged + slurmctld + slurmd per node; `nodes` maps node name to the address it listens on."""

    def __init__(self, base: Path, nodes: Dict[str, str], netns: Optional[Dict[str, str]] = None,
                 ctld_addr: str = "127.0.0.1", cpus: int = 8, memory: int = 8000, slurmd_timeout: int = 10):
        self.base = Path(base)
        self.nodes, self.netns = dict(nodes), dict(netns or {})
        self.ctld_addr, self.cpus, self.memory = ctld_addr, cpus, memory
        self.slurmd_timeout = slurmd_timeout
        self.conf = self.base / "slurm.conf"
        self.munge_socket = self.base / "munge" / "munge.socket"
        self.procs: Dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ setup
    def write_conf(self):
        b = self.base
        for sub in ("munge", "state", "spool", "log"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        (b / "munge").chmod(0o700)
        ctld_port, slurmd_port = free_port(self.ctld_addr), free_port("127.0.0.1")
        node_lines = "".join(f"NodeName={n} NodeAddr={a} CPUs={self.cpus} RealMemory={self.memory} State=UNKNOWN\n"
                             for n, a in self.nodes.items())
        self.conf.write_text(f"""# written by tests/slurm_cluster.py
ClusterName=hbt{os.getpid() % 100000}
SlurmctldHost={socket.gethostname()}({self.ctld_addr})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={b / 'state'}
SlurmdSpoolDir={b / 'spool'}/%n
SlurmctldPidFile={b / 'slurmctld.pid'}
SlurmdPidFile={b / 'slurmd'}.%n.pid
SlurmctldLogFile={b / 'log' / 'slurmctld.log'}
SlurmdLogFile={b / 'log'}/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Short waits, so that tests of time limits and lost nodes take seconds, not minutes:
# KillWait: SIGTERM to SIGKILL at a time limit or scancel; SlurmdTimeout: a silent node is DOWN.
KillWait=10
OverTimeLimit=0
SlurmdTimeout={self.slurmd_timeout}
InactiveLimit=0
MinJobAge=600
MessageTimeout=10
{node_lines}PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def env(self, base_env=None, **extra) -> dict:
        env = dict(base_env if base_env is not None else os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def _spawn(self, name, argv, netns=None):
        log = open(self.base / "log" / f"{name}.out", "ab")
        if netns:  # (not `ip netns exec`: its fresh /sys has no cgroup file system, which slurmd wants)
            argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                            env=self.env(), start_new_session=True)
        log.close()

    def start(self, timeout=60):
        self.write_conf()
        key = self.base / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        m = self.base / "munge"
        self._spawn("munged", [_command("munged"), "-F", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={self.base / 'log' / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"])
        wait_for(lambda: self._alive("munged") and self.munge_socket.exists(), timeout, "munged's socket")
        self._spawn("slurmctld", [_command("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        wait_for(lambda: self._alive("slurmctld") and self.run(["scontrol", "ping"], check=False).returncode == 0,
                 timeout, "slurmctld to answer", interval=0.2)
        for node in self.nodes:
            self.start_slurmd(node)
        self.wait_idle(list(self.nodes), timeout)
        return self

    def start_slurmd(self, node):
        (self.base / "spool" / node).mkdir(parents=True, exist_ok=True)
        self._spawn(f"slurmd.{node}", [_command("slurmd"), "-D", "-N", node, "-f", str(self.conf)],
                    self.netns.get(node))

    def _alive(self, name):
        proc = self.procs[name]
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}: "
                                 + (self.base / "log" / f"{name}.out").read_text(errors="replace")[-2000:]
                                 + self.logs_tail())
        return True

    def logs_tail(self, chars=1500) -> str:
        parts = []
        for log in sorted((self.base / "log").glob("*.log")):
            parts.append(f"\n--- {log.name}:\n" + log.read_text(errors="replace")[-chars:])
        return "".join(parts)

    # ------------------------------------------------------------------ commands
    def run(self, argv, check=True, timeout=60, env=None) -> subprocess.CompletedProcess:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env or self.env())
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, argv))}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def node_states(self) -> Dict[str, str]:
        r = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False)
        return dict(line.split() for line in r.stdout.splitlines() if line.strip())

    def wait_idle(self, nodes, timeout=60):
        def idle():
            for name in self.procs:
                self._alive(name)
            states = self.node_states()
            return all(states.get(n, "").rstrip("*") == "idle" for n in nodes)
        wait_for(idle, timeout, f"sinfo to show {', '.join(nodes)} idle", interval=0.3)

    def sbatch(self, args, env=None, cwd=None) -> int:
        r = subprocess.run(["sbatch", "--parsable", *map(str, args)], capture_output=True, text=True, timeout=60,
                           env=self.env(env), cwd=cwd)
        if r.returncode != 0:
            raise AssertionError(f"sbatch {' '.join(map(str, args))}: exit {r.returncode}: {r.stderr.strip()}")
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id) -> Dict[str, str]:
        """scontrol's fields of a job (for an array: of its first task), {} once Slurm forgot it."""
        r = self.run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
        line = r.stdout.splitlines()[0] if r.returncode == 0 and r.stdout.strip() else ""
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def array_states(self, job_id) -> List[str]:
        r = self.run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
        return re.findall(r"JobState=(\S+)", r.stdout)

    def over(self, job_id) -> bool:
        """Whether nothing of the job (no task of an array) can run any more. Not while scontrol does not
        answer, and not while a task is CONFIGURING or COMPLETING: neither is pending nor running in
        scontrol's words, yet the job's processes may still start or run."""
        states = self.array_states(job_id)
        return bool(states) and all(s in ENDED for s in states)

    def wait_ended(self, job_id, timeout) -> List[str]:
        """Wait until the job (every task of an array) has ended; returns their states."""
        def ended():
            states = self.array_states(job_id)
            return states if states and all(s in ENDED for s in states) else None
        try:
            return wait_for(ended, timeout, f"Slurm job {job_id} to end", interval=0.5)
        except AssertionError as e:
            raise AssertionError(f"{e}; squeue:\n{self.run(['squeue'], check=False).stdout}{self.logs_tail()}")

    def wait_running(self, job_id, timeout):
        wait_for(lambda: "RUNNING" in self.array_states(job_id), timeout, f"Slurm job {job_id} to run",
                 interval=0.3)

    # ------------------------------------------------------------------ teardown
    def ours(self, daemons=False) -> List[int]:
        """Processes Slurm started for this cluster (slurmstepd, tasks): SLURM_CONF=<ours> in their
        environment, or anything left in our nodes' namespaces; the daemons too if `daemons`."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = set()
        for p in os.listdir("/proc"):
            if not p.isdigit() or int(p) == os.getpid():
                continue
            try:
                with open(f"/proc/{p}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        pids.add(int(p))
            except OSError:
                pass
        for ns in self.netns.values():
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
            pids.update(int(p) for p in r.stdout.split())
        if not daemons:  # the daemons, and slurmctld's helper (slurmscriptd)
            live = {proc.pid for proc in self.procs.values() if proc.poll() is None}
            pids = {p for p in pids - live if _parent(p) not in live or not _name(p).startswith("slurmctld")}
        return sorted(pids)

    def wait_no_job_processes(self, timeout=30):
        """Wait until no slurmstepd, task or HIPE of this cluster's jobs is left."""
        try:
            wait_for(lambda: not self.ours(), timeout, "every task and HIPE of the jobs to be gone", interval=0.2)
        except AssertionError as e:
            left = self.ours()
            ps = subprocess.run(["ps", "-o", "pid,ppid,args", "-p", ",".join(map(str, left))], capture_output=True,
                                text=True).stdout if left else ""
            raise AssertionError(f"{e}:\n{ps}") from None

    def cancel_all(self):
        """Kill every job of this cluster and wait until none of their processes is left, so that a test
        that failed half-way leaves nothing running into the next one."""
        self.run(["scancel", "--user=root", "--signal=KILL", "--full"], check=False)
        self.run(["scancel", "--user=root"], check=False)
        self.wait_no_job_processes(60)

    def kill_node(self, node):
        """The node is lost: SIGKILL its slurmd and everything in its namespace (slurmstepd, tasks, HIPE)."""
        ns = self.netns[node]

        def pids():
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
            return [int(p) for p in r.stdout.split()]
        for pid in pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not pids(), 30, f"everything in {ns} to end")
        self.procs[f"slurmd.{node}"].wait(timeout=30)

    def stop(self):
        """Cancel every job, stop the daemons, kill whatever is left; each step even if one failed."""
        if self.conf.exists() and self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self.run(["scancel", "--user=root", "--signal=KILL", "--full"], check=False)
            self.run(["scancel", "--user=root"], check=False)
        for name in sorted(self.procs, key=lambda n: (n.startswith("munged"), n.startswith("slurmctld"))):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = self.ours(daemons=True)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        return self.ours(daemons=True)


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


class Namespaces:
    """Hosts made of network namespaces on one bridge (as tests/test_mpi.py makes them, without
    sshd): `address` is the bridge's (this machine's side), `addresses[h]` each host's."""

    def __init__(self, hosts):
        self.hosts = tuple(hosts)
        self.prefix = f"hbs{os.getpid() % 100000}"
        self.bridge = f"{self.prefix}br"
        self.netns = {h: f"{self.prefix}{h}" for h in self.hosts}
        self.made_links, self.made_netns = [], []

    def available(self) -> Optional[str]:
        """None if namespaces can be made here, else why not."""
        if shutil.which("ip") is None:
            return "no `ip` command (iproute2)"
        probe = f"{self.prefix}probe"
        r = _ip("netns", "add", probe, check=False)
        if r.returncode != 0:
            return f"ip netns add: {r.stderr.strip()}"
        _ip("netns", "del", probe, check=False)
        return None

    def setup(self):
        # A /24 of 10.232.0.0/16 that no interface here uses (another run may be on).
        used = _ip("-o", "-4", "addr").stdout
        first = os.getpid() % 250
        net = next((f"10.232.{k}" for k in ((first + i) % 250 for i in range(250)) if f" 10.232.{k}." not in used), None)
        assert net, "every 10.232.K.0/24 is in use on this machine"
        self.address = f"{net}.1"
        self.addresses = {h: f"{net}.1{i}" for i, h in enumerate(self.hosts, 1)}
        _ip("link", "add", self.bridge, "type", "bridge")
        self.made_links.append(self.bridge)
        _ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, h in enumerate(self.hosts, 1):
            ns, outer, inner = self.netns[h], f"{self.prefix}v{i}", f"{self.prefix}p{i}"
            _ip("netns", "add", ns)
            self.made_netns.append(ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            self.made_links.append(outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[h]}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        return self

    def cleanup(self):
        """Kill whatever still runs in the namespaces, then remove them and the links."""
        errors = []
        for ns in self.made_netns:
            pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                wait_for(lambda: not _ip("netns", "pids", ns, check=False).stdout.split(), 30,
                         f"the processes in {ns} to end")
            except AssertionError as e:
                errors.append(str(e))
            r = _ip("netns", "del", ns, check=False)
            if r.returncode != 0:
                errors.append(f"ip netns del {ns}: {r.stderr.strip()}")
        for link in reversed(self.made_links):
            r = _ip("link", "del", link, check=False)
            if r.returncode != 0 and "Cannot find device" not in r.stderr:
                errors.append(f"ip link del {link}: {r.stderr.strip()}")
        assert not errors, errors
