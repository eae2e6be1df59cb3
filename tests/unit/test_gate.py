"""The gate `run -j`'s workers wait at (lib/batchUtility/gate.py), with real forks and signals: a
worker frozen before it let go of its copy of the parent's end holds no sibling back."""
import contextlib
import os
import signal

from batchUtility.gate import Gate
from support import wait_for


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def _ended(pid, what):
    """The child's exit status, once it has ended (waited for up to 30 s)."""
    def ended():
        got, status = os.waitpid(pid, os.WNOHANG)
        return got and (os.waitstatus_to_exitcode(status),)
    return wait_for(ended, 30, what)[0]


def _fork(then):
    pid = os.fork()
    if pid == 0:
        try:
            then()
        finally:
            os._exit(0)
    return pid


def test_a_worker_frozen_before_it_let_go_of_the_gate_holds_no_sibling_back():
    gate = Gate(2)
    children = []
    try:
        def frozen_then_waits():
            os.kill(os.getpid(), signal.SIGSTOP)   # frozen before in_worker(): it holds the parent's end
            gate.in_worker()
            gate.wait()
        children.append(_fork(frozen_then_waits))
        wait_for(lambda: _state(children[0]) == "T", 30, "the first worker to be frozen")

        def waits():
            gate.in_worker()
            gate.wait()
        children.append(_fork(waits))
        gate.open()
        assert _ended(children[1], "the sibling to pass the gate while the first is frozen") == 0
        children.pop()
        os.kill(children[0], signal.SIGCONT)
        assert _ended(children[0], "the frozen worker to pass the gate once continued") == 0
        children.pop()
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_workers_pass_a_gate_whose_parent_died_before_opening_it():
    gate = Gate(1)

    def waits():
        gate.in_worker()
        gate.wait()
    child = _fork(waits)
    try:
        os.close(gate.write_end)   # as the parent's death closes it, no byte written
        child, ended = None, child
        assert _ended(ended, "the worker to pass the gate") == 0
    finally:
        os.close(gate.read_end)
        if child is not None:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)


def test_workers_pass_a_gate_whose_parent_died_while_a_frozen_sibling_holds_it():
    """The parent dies before it opens the gate, a worker frozen before it let go of its copy of the
    parent's end holding the pipe open: the other worker goes through once it sees its parent gone."""
    news_r, news_w = os.pipe()

    def parent():   # forks both, says their pids, dies without opening the gate
        gate = Gate(2)

        def frozen_then_waits():
            os.kill(os.getpid(), signal.SIGSTOP)
            gate.in_worker()
            gate.wait()

        def waits_then_says():
            gate.in_worker()
            gate.wait()
            os.write(news_w, b"through\n")
        frozen = _fork(frozen_then_waits)
        waiting = _fork(waits_then_says)
        os.write(news_w, f"{frozen} {waiting}\n".encode())
    _ended(_fork(parent), "the parent to fork its workers and die")
    os.close(news_w)
    os.set_blocking(news_r, False)   # the frozen worker holds the pipe open: no end of file to wait for
    said = []

    def lines():
        with contextlib.suppress(BlockingIOError):
            said.append(os.read(news_r, 1024).decode())
        return "".join(said).splitlines()
    try:
        wait_for(lambda: len(lines()) >= 1, 30, "the workers' pids")
        wait_for(lambda: lines()[1:] == ["through"], 30, "the worker to go through once its parent died")
    finally:
        for pid in map(int, (lines() or [""])[0].split()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.close(news_r)
