"""Training data is read by offset from memory-mapped shards: four workers reading the same
dataset hold its tokens once, in the page cache, not each in its own memory. Their summed private
memory (RssAnon) grows by less than a tenth of the larger dataset's token bytes when the dataset
grows 4x."""

import subprocess
import sys
from pathlib import Path

from corpus_gen import synthetic_dataset

ROOT = Path(__file__).resolve().parent.parent

# What each worker does: open the dataset, then read every training block in the order and the
# batches that training draws them (as pipeline/train/loop.py does), and report its RssAnon.
READER = """
import sys
import numpy as np
sys.path.insert(0, {root!r})
from pipeline.data.dataset import BlockOrder, load_split, open_dataset
d = sys.argv[1]
m = open_dataset(d, verify=False)
blocks = load_split(d, m, "train")
order = BlockOrder(0, len(blocks), 64)
total = 0
for s in range(order.steps_per_epoch):
    total += int(blocks[np.sort(order.batch(s))].sum() % 7)
for line in open("/proc/self/status"):
    if line.startswith("RssAnon:"):
        print(int(line.split()[1]) * 1024, total)
"""


def summed_private_memory(d: Path) -> int:
    script = READER.format(root=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(d)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=600)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return sum(int(o[0]) for o in outs)


def test_four_workers_hold_the_tokens_once(tmp_path):
    small_bytes = synthetic_dataset(tmp_path / "small", 10 << 20)  # 20 MB of tokens
    large_bytes = synthetic_dataset(tmp_path / "large", 40 << 20)  # 80 MB
    small, large = summed_private_memory(tmp_path / "small"), summed_private_memory(tmp_path / "large")
    growth = large - small
    # Each worker holding its own copy would add 4 x 60 MB; a tenth of one file is the bound.
    assert growth < 0.1 * large_bytes, (small, large, growth, large_bytes, small_bytes)
