"""Benchmark (prints figures; not a test): `new` from a file of a million obsids, then claim and
finish throughput, on SQLite and on a private MariaDB server.

    .venv/bin/python tests/bench_new.py [N]
"""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batchUtility.model import Outcome
from mariadb_server import MariaDB
from support import BatchEnv


def bench(env: BatchEnv, n: int):
    f = env.obsid_file(range(1342000000, 1342000000 + n), "million.txt")
    t = time.perf_counter()
    r = env.cli("bench", "new", f, timeout=1800)
    new_s = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    table = env.table("bench")
    t = time.perf_counter()
    claims = 2000
    for _ in range(claims):
        table.finish(table.claim("bench-host", "1/1", 1), Outcome(True), 3)
    per = (time.perf_counter() - t) / claims
    t = time.perf_counter()
    counts = table.counts()
    status_s = time.perf_counter() - t
    print(f"{env.backend:6}  new {n:,} obsids: {new_s:6.1f} s   claim+finish: {per * 1000:6.2f} ms each"
          f"   counts(): {status_s * 1000:6.0f} ms   ({counts['done']} done)", flush=True)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        bench(BatchEnv(Path(tmp) / "sqlite", "sqlite"), n)
        server = MariaDB(Path(tmp) / "mariadb").start()
        try:
            server.create_database("bench")
            bench(BatchEnv(Path(tmp) / "mysql", "mysql", server, "bench"), n)
        finally:
            server.cleanup()


if __name__ == "__main__":
    main()
