"""Status and summary text, in the original's words where it had them."""
import json

from .storage import DONE, PENDING, RUNNING, STATES


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

