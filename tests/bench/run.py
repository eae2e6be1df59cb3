#!/usr/bin/env python3
"""The benchmark suite: one command, not part of the test run.

    .venv/bin/python tests/bench/run.py [--quick] [NAME ...]

NAME: dispatch, launch, makespan, scale, claims, memory, flat, durable, newjobs, eta, soak, status, spread,
mpistart (default: all, in that order). Each prints a table and appends it, with date, machine, load, commit and
versions, to tests/bench/RESULTS.md.
--quick: one repetition instead of the median of 3, shorter sleeps and runs (see each benchmark).
"""
import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_claims
import bench_commands
import bench_dispatch
import bench_durable
import bench_eta
import bench_flat
import bench_launch
import bench_makespan
import bench_memory
import bench_mpistart
import bench_newjobs
import bench_scale
import bench_soak
import bench_spread
import common

BENCHMARKS = {"dispatch": bench_dispatch, "launch": bench_launch, "makespan": bench_makespan, "scale": bench_scale,
              "claims": bench_claims, "memory": bench_memory, "flat": bench_flat,
              "durable": bench_durable, "newjobs": bench_newjobs, "eta": bench_eta, "soak": bench_soak,
              "status": bench_commands, "spread": bench_spread, "mpistart": bench_mpistart}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="one repetition, shorter runs")
    parser.add_argument("--only", action="append", default=[], metavar="TOOL",
                        help="dispatch: only tools whose column name holds TOOL; newjobs: sqlite or mysql (repeatable)")
    parser.add_argument("--no-save", action="store_true", help="print the tables, do not append them to RESULTS.md")
    parser.add_argument("--obsids", type=int, default=None,
                        help="dispatch, memory: obsids per run (default 2,000; durable: 1,000; newjobs: 200,000; "
                             "status: 1,000,000, 200,000 with --quick); "
                             "flat: 20,000 (5,000 with --quick)")
    parser.add_argument("--workers", type=int, action="append", default=None,
                        help="dispatch: worker counts (default 1, 8 and 32; durable: 1 and 8; repeatable)")
    parser.add_argument("--compare", action="append", default=[], metavar="CHECKOUT",
                        help="dispatch, durable, status, spread, mpistart: also another checkout (e.g. main), side by side "
                             "(repeatable)")
    parser.add_argument("--scale", type=float, default=None,
                        help="makespan: each obsid sleeps pipetime / SCALE (default 250; 1000 with --quick); "
                             "eta: default 2000 (4000 with --quick)")
    parser.add_argument("--slots", type=int, action="append", default=None,
                        help="makespan: slot counts (default 15 and 64; repeatable)")
    parser.add_argument("--no-mpi", action="store_true", help="makespan: skip BatchProcess_mpi.sh")
    parser.add_argument("--sizes", type=int, action="append", default=None,
                        help="scale: job sizes (default 10,000, 100,000 and 1,000,000; repeatable)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}: choose from {', '.join(BENCHMARKS)}")
    # SIGTERM ends the suite like Ctrl-C: its MariaDB server stopped, its temporary folder removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="hipe-bench-") as tmp:
        common.SAVE[0] = not args.no_save
        suite = common.Suite(Path(tmp), args.quick)
        try:
            for name in args.names or BENCHMARKS:
                t = time.perf_counter()
                print(f"== {name}", flush=True)
                BENCHMARKS[name].main(suite, args)
                print(f"== {name}: {time.perf_counter() - t:.0f} s", flush=True)
        finally:
            suite.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
