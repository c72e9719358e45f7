"""Training data is read by offset from memory-mapped shards: four workers reading the same
dataset hold its tokens once, in the page cache, not each in its own memory. Their summed private
memory (RssAnon) grows by less than a tenth of the larger dataset's token bytes when the dataset
grows 4x."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from pipeline.data.manifest import FORMAT_VERSION, manifest_json
from pipeline.data.packing import plan_shards, shard_name, to_bytes, write_shard

ROOT = Path(__file__).resolve().parent.parent
N_CTX = 512

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


def synthetic_dataset(d: Path, tokens: int) -> int:
    """A format-3 dataset of random token ids (no tokenizer needed to read blocks); returns the
    train split's bytes."""
    rng = np.random.default_rng(tokens)
    fs = pafs.LocalFileSystem()
    (d / "work").mkdir(parents=True)
    (d / "train").mkdir()
    part = d / "work" / "part"
    part.write_bytes(to_bytes(rng.integers(0, 40_000, tokens), np.dtype("<u2")))
    shard_tokens = 8 << 20
    shards = {}
    for k, pieces in enumerate(plan_shards([tokens], shard_tokens)):
        sha = write_shard(fs, str(d / shard_name("train", k)), [(str(part), 2 * at, 2 * n) for _, at, n in pieces])
        shards[shard_name("train", k)] = {"tokens": sum(n for _, _, n in pieces), "sha256": sha}
    part.unlink()

    def split(n: int) -> dict:
        return {"documents": 1, "tokens": n, "bytes": 4 * n, "blocks": max(n - 1, 0) // N_CTX,
                "tokens_not_in_a_block": 0, "empty_documents": 0}

    manifest = {"format_version": FORMAT_VERSION, "fingerprint": str(tokens), "source_key": str(tokens),
                "inputs": [], "options": {}, "n_ctx": N_CTX, "seed": 0, "dtype": "uint16",
                "shard_tokens": shard_tokens, "replaced_bytes": 0, "shards": shards,
                "tokenizer": {"sha256": "-", "vocab_size": 40_000, "n_merges": 0, "end_of_document": 0, "source": "-"},
                "splits": {"train": split(tokens), "val": split(0)}}
    (d / "manifest.json").write_text(manifest_json(manifest))
    return 2 * tokens


def summed_private_memory(d: Path) -> int:
    script = READER.format(root=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(d)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
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
