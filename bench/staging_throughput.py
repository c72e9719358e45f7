"""How fast a node stages a dataset from object storage (pipeline/data/stage.py): MB/s with 1 and
with 8 streams of ranged reads, side by side in one run, against a local S3 server (moto_server
on 127.0.0.1). Each round stages the same dataset afresh into an empty directory, the stream
counts alternating; every copy is verified against the manifest's sha256s as in a real run.

    python bench/staging_throughput.py [--shards 16] [--shard-mb 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    from local_s3 import local_s3

    from pipeline.data.stage import _download

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--shard-mb", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="staging-"))
    rng = __import__("random").Random(0)
    with local_s3() as fs:
        manifest = {"shards": {}, "tokenizer": {}}
        for i in range(a.shards + 1):
            data = rng.randbytes(a.shard_mb << 20) if i < a.shards else b"{}"
            name = f"train/{i:05d}.bin" if i < a.shards else "tokenizer.json"
            with fs.open_output_stream(f"bench/ds/{name}") as out:
                out.write(data)
            entry = {"sha256": hashlib.sha256(data).hexdigest()}
            if i < a.shards:
                manifest["shards"][name] = entry
            else:
                manifest["tokenizer"] = entry
        total = a.shards * (a.shard_mb << 20)
        print(f"command: python {shlex.join(sys.argv)}")
        print(
            f"date: {datetime.date.today()}  machine: {platform.machine()}, {os.cpu_count()} cores; "
            f"S3: moto_server on 127.0.0.1; dataset: {a.shards} shards of {a.shard_mb} MiB"
        )
        print()
        rates: dict[int, list[float]] = {n: [] for n in a.streams}
        for r in range(a.rounds):
            for n in a.streams:
                dest = work / f"r{r}-{n}"
                t0 = time.perf_counter()
                _download("s3://bench/ds", manifest, dest, streams=n)
                rates[n].append(total / 1e6 / (time.perf_counter() - t0))
                shutil.rmtree(dest)
        print("| streams | MB/s, median of rounds | min-max |")
        print("|---:|---:|---:|")
        for n, got in rates.items():
            print(f"| {n} | {statistics.median(got):,.0f} | {min(got):,.0f}-{max(got):,.0f} |")
        one, many = statistics.median(rates[a.streams[0]]), statistics.median(rates[a.streams[-1]])
        print(f"\n{a.streams[-1]} streams / {a.streams[0]}: {many / one:.2f}x (target >= 2x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
