"""mpirun_output.Relay: Open MPI's noise dropped, everything else relayed as it came (real pipes)."""
import os

from batchUtility import mpirun_output

UNREACHABLE = b"[vm:05858] PMIX ERROR: UNREACHABLE in file ../../../../../src/mca/ptl/base/ptl_base_connection_hdlr.c at line 388"
BAD_PARAM = b"[vm:1234] PMIX ERROR: BAD-PARAM in file ../../src/event/pmix_event_notification.c at line 923"
RANK_LINE = b"2026-11-27 07:33:51 WARNING [vm slot 2/2 pid 31312] stopped by SIGUSR2 with no obsid running: worker stopping"


def relayed(lines, stopping):
    """What the relay passes on of mpirun's stderr `lines`."""
    mpirun_r, mpirun_w = os.pipe()
    out_r, out_w = os.pipe()
    relay = mpirun_output.Relay(os.fdopen(mpirun_r, "rb"), out_w, lambda: stopping)
    os.write(mpirun_w, b"".join(line + b"\n" for line in lines))
    os.close(mpirun_w)
    relay.close()
    os.close(out_w)
    with os.fdopen(out_r, "rb") as f:
        return f.read().splitlines()


def test_unreachable_is_noise_only_once_stopping():
    """A rank ended by a stop while it connects to mpirun makes Open MPI print UNREACHABLE, and the
    launcher explains the hang that may follow: noise then. Without a stop it is a real error."""
    lines = [RANK_LINE, UNREACHABLE, BAD_PARAM, b"mpirun: Forwarding signal 12 to job", RANK_LINE]
    assert relayed(lines, stopping=True) == [RANK_LINE, RANK_LINE]
    assert relayed(lines, stopping=False) == [RANK_LINE, UNREACHABLE, RANK_LINE]
    assert relayed([b"x" + UNREACHABLE], stopping=True) == [b"x" + UNREACHABLE]   # whole lines only


NO_ROOM = (b"BatchProcess.py: error: [vm slot 1/2] obsid 1342191755 needs a Java heap of 8192m but this worker can have "
           b"at most 4096 MiB (MemTotal in /proc/meminfo); obsid put back to pending for a worker with more memory, "
           b"and worker stopped")


def worker_status(lines):
    """The status the relay says a worker stopped with, and what it passed on."""
    mpirun_r, mpirun_w = os.pipe()
    out_r, out_w = os.pipe()
    relay = mpirun_output.Relay(os.fdopen(mpirun_r, "rb"), out_w)
    os.write(mpirun_w, b"\n".join(lines))   # the last line without its newline, as a killed rank may leave it
    os.close(mpirun_w)
    relay.close()
    os.close(out_w)
    with os.fdopen(out_r, "rb") as f:
        return relay.worker_status, f.read().splitlines()


def test_a_worker_stopped_for_want_of_memory_is_noted_and_its_line_passed_on():
    """mpirun exits 0 whatever its ranks did (--enable-recovery): a worker's NoRoom line, forked
    (`[HOST slot r/n]`) or a rank of its own, behind mpirun's --tag-output prefix or last and
    unfinished, is how the launcher learns of its 4; other error lines are not."""
    single = NO_ROOM.replace(b"[vm slot 1/2] ", b"")
    for line in (NO_ROOM, single, b"[1,0]<stderr>:" + NO_ROOM):
        assert worker_status([RANK_LINE, line]) == (4, [RANK_LINE, line])
        assert worker_status([line, BAD_PARAM, RANK_LINE]) == (4, [line, RANK_LINE])
    other = b"BatchProcess.py: error: [vm slot 1/2] HIPE /opt/hipe not found; obsid 1 put back to pending and worker stopped"
    assert worker_status([RANK_LINE, other, BAD_PARAM]) == (0, [RANK_LINE, other])
    assert worker_status([b"print('needs a Java heap of 8g but this worker can have at most 1 MiB')"])[0] == 0
