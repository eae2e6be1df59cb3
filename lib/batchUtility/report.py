"""Status and summary text, in the original's words where it had them."""
import json
import signal
import time

from .model import DONE, PENDING, RUNNING, STATES


def progress_line(counts) -> str:
    """The original's line: `N of M processed. (x.x %, K remaining)`; processed means done."""
    total = sum(counts.values())
    done = counts[DONE]
    percent = 100.0 * done / total if total else 0.0
    return f"{done} of {total} processed. ({percent:.1f} %, {counts[PENDING] + counts[RUNNING]} remaining)"


def status_text(job, counts, failures, hosts=None) -> str:
    lines = [progress_line(counts), "  " + ", ".join(f"{s} {counts[s]}" for s in STATES)]
    if failures:
        lines.append(f"  failed obsids (first {len(failures)}):")
        lines += [f"    {obsid}  after {attempts} attempt(s): {reason}" for obsid, attempts, reason in failures]
        lines.append(f"  retry them with: BatchProcess.py {job} reset --failed")
        lines.append(f"  why each attempt ended: BatchProcess.py {job} status --obsid OBSID")
    if hosts is not None:
        lines.append(hosts_text(hosts))
    return "\n".join(lines)


def status_json(job, counts, failures, hosts) -> str:
    total = sum(counts.values())
    return json.dumps({
        "job": job, "total": total, **counts,
        "remaining": counts[PENDING] + counts[RUNNING],
        "percent_done": round(100.0 * counts[DONE] / total, 3) if total else 0.0,
        "failures": [{"obsid": o, "attempts": a, "reason": r} for o, a, r in failures],
        "hosts": [{"host": h, "done": d, "failed": f, "busy_seconds": round(s, 3)} for h, d, f, s in hosts],
    }, indent=2)


def obsid_text(row, history) -> str:
    """One obsid (`status --obsid`): its state, then each attempt, oldest first."""
    head = f"obsid {row['obsid']}: {row['state']}, {row['attempts']} attempt(s) counted"
    if row["state"] == RUNNING:
        head += f", running on {row['host']} slot {row['worker']} pid {row['pid']}"
    elif row["state"] != DONE and row["reason"]:
        head += f": {row['reason']}"
    lines = [head] + ([] if history else ["  no attempt recorded yet"])
    for h in history:
        took = f"{h['ended'] - h['started']:.1f} s" if h["started"] is not None and h["ended"] is not None else "?"
        lines.append(f"  attempt {h['attempt']}  {h['outcome']:<7}  {_when(h['started'])}  {took:>9}  "
                     f"{h['host']} slot {h['worker']} pid {h['pid']}  {_ending(h)}"
                     + (f"  {h['reason']}" if h["reason"] else "")
                     + (f"  [template {h['template']}]" if h.get("template") else ""))
    return "\n".join(lines)


def obsid_json(row, history) -> str:
    return json.dumps({"obsid": row["obsid"], "state": row["state"], "attempts": row["attempts"],
                       "reason": row["reason"], "history": history}, indent=2, default=str)


def _when(epoch) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch is not None else "?"


def _ending(h) -> str:
    if h["signal_no"]:
        try:
            return f"signal {h['signal_no']} ({signal.Signals(h['signal_no']).name})"
        except ValueError:
            return f"signal {h['signal_no']}"
    return f"exit {h['exit_code']}" if h["exit_code"] is not None else "-"


def hosts_text(hosts) -> str:
    """The job-wide summary per host: obsids done and failed, and busy time."""
    lines = [f"  {'host':<24} {'done':>8} {'failed':>8} {'busy (h)':>10}"]
    for host, done, failed, seconds in hosts:
        lines.append(f"  {host:<24} {done:>8} {failed:>8} {seconds / 3600:>10.2f}")
    lines.append(f"  {'total':<24} {sum(h[1] for h in hosts):>8} {sum(h[2] for h in hosts):>8} "
                 f"{sum(h[3] for h in hosts) / 3600:>10.2f}")
    return "\n".join(lines)


def slot_summary(slot, processed, done, failed, seconds) -> str:
    """The original's SUMMARY line, without its faults: no division by zero, whole days counted."""
    minutes = seconds / 60.0
    per = f"{minutes / processed:.2f} minutes/obsid" if processed else "no obsid"
    return (f"{slot.host} SLOT {slot.rank} SUMMARY: {processed} obsids processed in {minutes:.2f} minutes "
            f"({per}); {done} done, {failed} failed")

