"""What one long line costs prepare: the peak memory of a process that prepares a corpus made of
one line of N MB (and a short document), against the line's size.

    python bench/long_line_memory.py [--mb 5 20 50]

Each size runs in a fresh process (prepare's in-process mode, local=True: the work a Ray worker
does, without Ray), which reports its peak RSS (ru_maxrss) before and after. The tokenizer is
called on bounded pieces (pipeline/data/work.py, ENCODE_CHARS), so the growth is a small multiple
of the line's length; tokenizing the line in one call took ~95 bytes a character.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ONE = """
import random, resource, shutil, sys, time
sys.path.insert(0, {root!r})
from pipeline.data.prepare import PrepareConfig, prepare
corpus, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
random.seed(0)
words = ["alpha", "beta", "gamma", "delta", "the", "of", "and"]
with open(corpus, "w") as f:
    f.write(" ".join(random.choice(words) for _ in range(size // 5)) + "\\n\\nand a short one.\\n")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
prepare([corpus], out, PrepareConfig(n_merges=50, n_ctx=16), track=False, local=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(before, peak, time.perf_counter() - t0)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, nargs="+", default=[5, 20, 50], help="line sizes in MB")
    a = p.parse_args()
    print("| line MB | peak RSS MB | grown MB | grown bytes per character | prepare s |")
    print("|---:|---:|---:|---:|---:|")
    for mb in a.mb:
        with tempfile.TemporaryDirectory(prefix="gpt1-long-line-") as d:
            size = mb * 1_000_000
            out = subprocess.run(
                [sys.executable, "-c", ONE.format(root=str(ROOT)), f"{d}/c.txt", f"{d}/ds", str(size)],
                capture_output=True,
                text=True,
                check=True,
            )
            before, peak, seconds = out.stdout.split()[-3:]
            grown = int(peak) - int(before)
            print(
                f"| {mb} | {int(peak) / 1e6:,.0f} | {grown / 1e6:,.0f} | {grown / size:.1f} | {float(seconds):.1f} |"
            )


if __name__ == "__main__":
    main()
