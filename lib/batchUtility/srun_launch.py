"""The Slurm launcher behind bin/BatchProcess_sbatch.sh: inside an allocation, one `BatchProcess.py
JOB run` worker per task, started by srun and supervised until it ends (see supervise), then the
job-wide summary; or, with --mpi, mpirun on the allocation's nodes (bin/BatchProcess_mpi.sh).

    python -m batchUtility.srun_launch JOB [--mpi] [--config FILE]

srun must not get a stop itself: it turns a SIGTERM or SIGHUP it receives into SIGKILL for every
task, too soon for a worker to put its obsid back. So srun runs in a process group of its own
(`scancel --full` signals the batch script's group, Slurm's --signal=B: the batch script only), and
the launcher turns TERM, INT and HUP into SIGUSR2, which srun forwards to every task (supervise.Stop).
"""
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

from . import config, local, supervise, workdir
from .errors import PASSED_ON, BadInput, BatchError
from .frontend import job_summary, say_error, summary_heading
from .model import INTERACTIVE_PATIENCE, check_identifier
from .storage import open_table

PROG = "BatchProcess_sbatch.sh"
USAGE_LINE = f"sbatch [options] {PROG} JOB [--mpi] [--config FILE]"


class Usage(Exception):
    """Print the batch script's usage and leave with `status` (--help: 0 on stdout; none: 2 on stderr)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def usage() -> str:
    """The batch script's header comment, from its second line to the first #SBATCH line."""
    lines = []
    for line in (config.share_dir() / "bin" / PROG).read_text().splitlines()[1:]:
        if line.startswith("#SBATCH"):
            break
        lines.append(re.sub(r"^# ?", "", line))
    return "".join(line + "\n" for line in lines)


def parse_args(argv: List[str]):
    """(job, --mpi given, ["--config", FILE] or [])."""
    if not argv:
        raise Usage(2)
    if argv[0] in ("-h", "--help"):
        raise Usage(0)
    if argv[0].startswith("-"):
        raise BadInput(f"the first argument must be the job's name (usage: {USAGE_LINE})")
    job, rest, mpi, config_args = argv[0], list(argv[1:]), False, []
    while rest:
        word = rest.pop(0)
        if word == "--config":
            if not rest:
                raise BadInput(f"{word} needs a FILE")
            config_args = ["--config", rest.pop(0)]
        elif word.startswith("--config="):
            config_args = ["--config", word.split("=", 1)[1]]
        elif word == "--mpi":
            mpi = True
        else:
            raise BadInput(f"unknown argument '{word}' (usage: {USAGE_LINE})")
    return job, mpi, config_args


def grace_seconds() -> float:
    grace = os.environ.get("HIPE_BATCH_SLURM_GRACE", "60")
    if not re.fullmatch(r"[0-9]+", grace):
        raise BadInput(f"HIPE_BATCH_SLURM_GRACE={grace} is not a whole number of seconds")
    return float(grace)


def tasks_per_node(text: str) -> List[int]:
    """SLURM_TASKS_PER_NODE as one count a node: "8(x2),4" is 8 on each of two nodes, then 4."""
    counts = []
    for word in text.split(","):
        repeated = re.fullmatch(r"([0-9]+)\(x([0-9]+)\)", word)
        if repeated:
            counts += [int(repeated.group(1))] * int(repeated.group(2))
        elif word.isdigit():
            counts.append(int(word))
    return counts


def write_hostfile(env) -> Path:
    """The allocation's nodes, one slot per task, as an Open MPI hostfile in $TMPDIR (save_hostfile)."""
    path = Path(env.get("TMPDIR") or "/tmp") / f"hipe-batch-hostfile.{env['SLURM_JOB_ID']}"
    try:
        nodes = subprocess.run(["scontrol", "show", "hostnames", env.get("SLURM_JOB_NODELIST", "")],
                               stdout=subprocess.PIPE, check=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        raise BadInput("scontrol show hostnames failed") from None
    save_hostfile(path, nodes, tasks_per_node(env.get("SLURM_TASKS_PER_NODE", "")))
    return path


def save_hostfile(path: Path, nodes: List[str], counts: List[int]) -> None:
    """Write the hostfile: node i with counts[i] slots (1 past the counts). The name is the launcher's
    own, in a folder others write too ($TMPDIR is often /tmp): whatever is there is removed, never
    followed (a link planted there, a FIFO, an earlier file), and a new file made (workdir.open_to_write,
    fresh); what cannot be removed (another user's file in a sticky /tmp) is refused with one line."""
    text = "".join(f"{node} slots={counts[i] if i < len(counts) else 1}\n" for i, node in enumerate(nodes))
    try:
        with open(workdir.open_to_write(path, fresh=True), "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise BadInput(f"cannot write the hostfile {path}: {e.strerror}") from None


def check(job: str, config_args: List[str], tasks: Optional[int] = None):
    """The database and the job, checked once here rather than failing in every task; the configuration.
    With tasks (srun's, SLURM_NTASKS), one warning line when the server would not give the
    connections they and the launcher's lost-host watch need, as `run -j` and the MPI launcher say."""
    check_identifier(job)
    cfg = config.load(config_args[1] if config_args else None)
    table = open_table(cfg.sql, job, INTERACTIVE_PATIENCE)
    try:
        table.require()
        room = local.read_connection_room(table) if tasks else None
    finally:
        table.close()
    if tasks:
        local.warn_if_short_of_connections(room, tasks + 1, cfg.sql, "one per task, one for the launcher", PROG)
    return cfg


def srun_command(job: str, config_args: List[str], env) -> List[str]:
    step = ["--mpi=none", "--kill-on-bad-exit=0", "--no-kill"]
    # srun does not pass the allocation's --cpus-per-task on to its tasks (Slurm 22.05): say it
    # again, or each task (and HIPE under it) may be bound to one core.
    if env.get("SLURM_CPUS_PER_TASK"):
        step.append(f"--cpus-per-task={env['SLURM_CPUS_PER_TASK']}")
    return ["srun", *step, sys.executable, str(config.share_dir() / "bin" / "BatchProcess.py"), job, "run", *config_args]


def finish(cfg, job: str, status: int, stop: supervise.Stop) -> int:
    """The job-wide summary, then the launcher's exit status: 128+N after stop signal N; 2, 3 or 4
    when srun ended with it, its highest task's status (a worker's setup broke, the database stayed
    away, an obsid's heap can never fit: the worker said which in its line), as `run -j` passes it
    on; else 0 when every obsid of the job is done, 1 when not. srun gives only the highest: a
    worker's 2 behind another task's 4, or behind a stopped task's 128+N, is not seen."""
    print(f"{PROG}: {summary_heading(job)}", flush=True)
    try:
        done = job_summary(cfg.sql, job, 0.0 if stop.status else INTERACTIVE_PATIENCE, cfg.run.call_timeout)
    except BatchError as e:
        done = say_error(PROG, e)
    if stop.status:
        return stop.status
    if status in PASSED_ON:
        return status
    if done != 0 and status != 0:
        print(f"{PROG}: srun ended with status {status}", file=sys.stderr, flush=True)
    return done


def launch(argv: List[str]) -> int:
    stop = supervise.Stop(PROG)
    stop.install()
    job, mpi, config_args = parse_args(argv)
    env = os.environ
    launcher = env.get("HIPE_BATCH_LAUNCHER") or "srun"
    if mpi:
        launcher = "mpi"
    if launcher not in ("srun", "mpi", "mpirun"):
        raise BadInput(f"HIPE_BATCH_LAUNCHER={launcher}: must be srun or mpi")
    if not env.get("SLURM_JOB_ID"):
        raise BadInput("not inside a Slurm job: submit this script with sbatch (or run it in salloc)")
    grace = grace_seconds()
    if launcher != "srun":
        # mpirun on the allocation's nodes, one slot per task: BatchProcess_mpi.sh does the rest (its
        # stop handling and summary included), so it replaces this launcher.
        hostfile = write_hostfile(env)
        stop.uninstall()
        if stop.status:
            return stop.status
        script = str(config.share_dir() / "bin" / "BatchProcess_mpi.sh")
        os.execv(script, [script, job, "--hostfile", str(hostfile), *config_args])
    tasks = env.get("SLURM_NTASKS", "")
    cfg = check(job, config_args, int(tasks) if tasks.isdigit() else None)
    print(f"{PROG}: job {job}: {env.get('SLURM_NTASKS', '?')} worker(s) on {env.get('SLURM_JOB_NODELIST', '')} "
          f"(Slurm job {env['SLURM_JOB_ID']})", file=sys.stderr, flush=True)
    # srun waits for good for the tasks of a node that was lost (--no-kill lets the other nodes'
    # workers run on): the watch ends it once the job has had nothing left to run for grace seconds.
    watch = supervise.LostHostWatch(cfg.sql, job, grace, cfg.run.call_timeout)
    # srun gets 30 s between SIGTERM and SIGKILL, as BatchProcess_sbatch.sh gave it before it was Python.
    status = supervise.run(srun_command(job, config_args, env), watch, stop, "srun", patience=30.0)
    stop.uninstall()
    return finish(cfg, job, status, stop)


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return launch(sys.argv[1:] if argv is None else list(argv))
    except Usage as u:
        print(usage(), end="", file=sys.stdout if u.status == 0 else sys.stderr)
        return u.status
    except BatchError as e:
        return say_error(PROG, e)


if __name__ == "__main__":
    sys.exit(main())
