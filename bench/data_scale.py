"""What training data costs a node, against the corpus size and the workers per node.

For each size, a dataset of random token ids (uint16, n_ctx 512, 8 Mi-token shards) is written
to WORKDIR. Its first opening on the machine hashes every shard (verify_once: what staging from
object storage also pays, once per node). Then, for 1, 2 and 4 workers, that many fresh processes
each do what a pretraining worker does before and during training: local_copy (the machine's
stamp: no hashing), load_split (memory-mapped), BlockOrder, then STEPS global batches of 64
blocks read by offset. Each reports its start-up (local_copy to the first batch in hand, after
imports) and its private memory (RssAnon); the page cache holds the tokens once for all of them.

    python bench/data_scale.py --sizes-mb 100 1000 4000 --workdir /tmp/dscale
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from corpus_gen import synthetic_dataset  # noqa: E402  (the tests' generator: random ids)

from pipeline.data.stage import local_copy  # noqa: E402

WORKER = """
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from pipeline.data.dataset import BlockOrder, load_split
from pipeline.data.stage import local_copy
t0 = time.perf_counter()
d, m = local_copy(sys.argv[1])
blocks = load_split(d, m, "train")
order = BlockOrder(int(sys.argv[3]), len(blocks), 64)
check = int(blocks[np.sort(order.batch(0))].sum())
start = time.perf_counter() - t0
for s in range(1, int(sys.argv[2])):
    check += int(blocks[np.sort(order.batch(s))].sum())
rss = next(int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith("RssAnon:"))
print(json.dumps({{"start_s": start, "rss_anon": rss, "check": check}}))
"""


def drop_page_cache() -> bool:
    """Start each measurement cold where the machine lets us (root in a VM does)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def workers(d: Path, n: int, steps: int) -> list[dict]:
    script = WORKER.format(root=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(d), str(steps), str(r)], stdout=subprocess.PIPE, text=True
        )
        for r in range(n)
    ]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return [json.loads(o) for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sizes-mb", type=int, nargs="+", default=[100, 1000, 4000], help="token bytes per dataset"
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=200, help="global batches of 64 blocks each worker reads")
    ap.add_argument("--workdir", default="/tmp/data-scale")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.environ["GPT1_DATA_CACHE"] = str(work / "cache")  # a fresh machine: nothing verified yet
    rows = []
    for mb in args.sizes_mb:
        d = work / f"ds-{mb}mb"
        t = time.perf_counter()
        size = synthetic_dataset(d, mb * (1 << 20) // 2)
        made = time.perf_counter() - t
        cold = drop_page_cache()
        t = time.perf_counter()
        local_copy(str(d))  # the first opening on this machine: every shard hashed
        verify = time.perf_counter() - t
        for n in args.workers:
            drop_page_cache()
            res = workers(d, n, args.steps)
            rows.append(
                {
                    "mb": mb,
                    "workers": n,
                    "verify_s": verify,
                    "made_s": made,
                    "cold": cold,
                    "start_s": statistics.median(r["start_s"] for r in res),
                    "start_max_s": max(r["start_s"] for r in res),
                    "rss_sum": sum(r["rss_anon"] for r in res),
                    "rss_each": max(r["rss_anon"] for r in res),
                    "blocks": json.loads((d / "manifest.json").read_text())["splits"]["train"]["blocks"],
                    "bytes": size,
                }
            )
            r = rows[-1]
            print(
                f"{mb:>6} MB  {n} worker(s): verify once {verify:6.1f} s; start-up median {r['start_s']:.3f} s "
                f"(max {r['start_max_s']:.3f}); private memory {r['rss_sum'] / 2**20:.0f} MB in all, "
                f"{r['rss_each'] / 2**20:.0f} MB the largest worker",
                flush=True,
            )
        shutil.rmtree(d)
    print(
        "\n| tokens (MB) | blocks | workers | verify once (s) | start-up median / max (s) | RssAnon sum (MB) | RssAnon per worker, max (MB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mb']:,} | {r['blocks']:,} | {r['workers']} | {r['verify_s']:.1f} | {r['start_s']:.3f} / "
            f"{r['start_max_s']:.3f} | {r['rss_sum'] / 2**20:.0f} | {r['rss_each'] / 2**20:.0f} |"
        )
    print(
        f"\n(page cache dropped before each measurement: {rows[0]['cold'] if rows else '-'}; "
        f"{args.steps} global batches of 64 x 513 tokens per worker)"
    )


if __name__ == "__main__":
    main()
