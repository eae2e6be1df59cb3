"""mpirun_output.Relay: Open MPI's noise dropped, everything else relayed as it came (real pipes)."""
import os

from batchUtility import mpirun_output, rank_status

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
TOKEN = rank_status.new_token()


def worker_status(lines, token=TOKEN):
    """The worst status the relay heard a rank tell, and what it passed on."""
    mpirun_r, mpirun_w = os.pipe()
    out_r, out_w = os.pipe()
    relay = mpirun_output.Relay(os.fdopen(mpirun_r, "rb"), out_w, listener=rank_status.Listener(token))
    os.write(mpirun_w, b"\n".join(lines))   # the last line without its newline, as a killed rank may leave it
    os.close(mpirun_w)
    relay.close()
    os.close(out_w)
    with os.fdopen(out_r, "rb") as f:
        return relay.listener.worst, f.read().splitlines()


def told(status, token=TOKEN):
    """What rank_status.tell writes on a real pipe for a rank ending with status (given token)."""
    r, w = os.pipe()
    env = {rank_status.VARIABLE: token} if token else {}
    assert rank_status.tell(status, rank_status.take(env), w) == status
    assert rank_status.VARIABLE not in env   # taken: the rank's workers and HIPE do not see it
    os.close(w)
    with os.fdopen(r, "rb") as f:
        return f.read()


def test_a_ranks_2_3_or_4_is_heard_from_its_own_line_and_the_line_dropped():
    """mpirun exits 0 whatever its ranks did (--enable-recovery): a rank leaving with 2, 3 or 4 tells
    the launcher in a line of its own, with the launch's token, which the relay notes and drops,
    behind --tag-output's or --timestamp-output's prefix, between other lines or last and unfinished;
    the worst of several counts. The worker's own error line passes unchanged."""
    for status in (2, 3, 4):
        line = told(status).rstrip(b"\n")
        assert line == TOKEN.encode() + b" exit %d" % status
        for said in (line, b"[1,0]<stderr>:" + line, b"Sun Dec  6 08:00:00 2026[1,1]<stderr>:" + line):
            assert worker_status([NO_ROOM, said, RANK_LINE]) == (status, [NO_ROOM, RANK_LINE])
            assert worker_status([RANK_LINE, said]) == (status, [RANK_LINE])
            assert worker_status([said, BAD_PARAM, RANK_LINE]) == (status, [RANK_LINE])
    two, three = told(2).rstrip(), told(3).rstrip()
    assert worker_status([two, three, two]) == (3, [])
    assert worker_status([told(4).rstrip(), three]) == (4, [])


def test_no_other_line_is_taken_for_a_ranks_status():
    """Without the launch's token nothing is heard and everything passes: a worker's error lines
    (whatever their wording), another launch's token, a status not passed on, no token at all."""
    other = rank_status.new_token().encode()
    lines = [NO_ROOM, other + b" exit 3", TOKEN.encode() + b" exit 1", TOKEN.encode() + b" exit 31",
             b"2026-12-06 08:00:00 ERROR [vm slot 1/1 pid 9] database away; stopping. Nothing is lost: ..."]
    assert worker_status(lines) == (0, lines)
    assert worker_status([told(3).rstrip()], token=None) == (0, [told(3).rstrip()])


def test_a_rank_tells_only_2_3_and_4_and_only_when_given_a_token():
    """A command not started by the launcher (no token), or leaving with 0, 1 or 128+N, writes nothing."""
    assert [told(s) for s in (0, 1, 130, 143)] == [b""] * 4
    assert [told(s, token=None) for s in (2, 3, 4)] == [b""] * 3


def test_the_token_is_not_given_where_the_ranks_stderr_does_not_come_back():
    """mpirun's --output-filename (either spelling, with = or not), --merge-stderr-to-stdout and
    --xterm send the ranks' stderr elsewhere: the line would be seen, so no token."""
    for words in (["--output-filename", "out"], ["-output-filename=out"], ["--merge-stderr-to-stdout"],
                  ["-x", "A", "--xterm", "0"]):
        assert rank_status.diverted(words), words
    assert not rank_status.diverted(["-x", "OUTPUT", "--tag-output", "--timestamp-output", "output-filename"])
