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
