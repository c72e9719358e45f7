"""gpt1 serve under a bounded load on loopback: p50 / p99 latency and requests/s at concurrency 1
and 16, with requests batched across clients (--max-batch-size 16) and without (1), side by
side in one run. The same fine-tuned model (bench/fine_tuned.py, `mini` by default) behind
`gpt1 serve` in a process of its own; each client thread sends one-row POST /predict requests
back to back, `--requests` in all per setting, after a warm-up.

    python bench/serve_load.py [--requests 400] [--preset mini]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def post(port: int, row: dict) -> float:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict", data=json.dumps(row).encode(), method="POST"
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
        assert r.status == 200
    return time.perf_counter() - t0


def load(port: int, rows: list[str], requests: int, concurrency: int) -> dict:
    latencies: list[float] = []
    lock, next_i = threading.Lock(), iter(range(requests))

    def client():
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            took = post(port, {"sentence": rows[i % len(rows)]})
            with lock:
                latencies.append(took)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "p50": latencies[len(latencies) // 2] * 1e3,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        "rps": requests / wall,
    }


def main() -> None:
    from fine_tuned import fine_tuned_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--preset", default="mini")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model, rows = fine_tuned_model(work, a.preset)
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"date: {datetime.date.today()}  machine: {platform.machine()}, {os.cpu_count()} cores; model: {a.preset}"
    )
    print()
    print("| max_batch_size | concurrency | requests | p50 ms | p99 ms | requests/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch in (16, 1):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(work / f"serve-{batch}.log", "w")  # noqa: SIM115 (the server's, closed once it stops)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpt1.cli",
                "serve",
                "--model",
                str(model),
                "--port",
                str(port),
                "--max-batch-size",
                str(batch),
            ],
            cwd=ROOT,  # not the work directory: its model/ folder would shadow the package
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        )
        try:
            deadline = time.time() + 300
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    sys.exit(
                        f"bench: gpt1 serve did not come up:\n{(work / f'serve-{batch}.log').read_text()[-3000:]}"
                    )
                time.sleep(1)
            load(port, rows, 32, 4)  # warm-up
            for concurrency in (1, 16):
                r = load(port, rows, a.requests, concurrency)
                print(
                    f"| {batch} | {concurrency} | {a.requests} | {r['p50']:.1f} | {r['p99']:.1f} | {r['rps']:.1f} |",
                    flush=True,
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
            log.close()


if __name__ == "__main__":
    main()
