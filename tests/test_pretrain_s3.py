"""pretrain --data s3://...: a dataset on a local S3 server (moto) staged once per node, each file
verified against the manifest as it arrives; a corrupt shard there is one line, exit 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs

from corpus_gen import documents
from pipeline.data.prepare import PrepareConfig, prepare

ROOT = Path(__file__).resolve().parent.parent


def pretrain(data: str, tmp_path: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "GPT1_DATA_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "gpt1.cli", "pretrain", "--config", "tiny", "--data", data,
                           "--no-mlflow", "--storage", str(tmp_path / "runs"), "--workers", "2",
                           "--set", "max_steps=4", "--set", "eval_every=4", "--set", "checkpoint_every=4"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


def test_pretrain_stages_a_dataset_on_s3_once_and_refuses_a_corrupt_one(s3, tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("\n\n".join(documents(1500, seed=9)) + "\n")
    cfg = PrepareConfig(n_merges=200, n_ctx=64, val_fraction=0.1, shard_mb=1)
    m = prepare([str(src)], "s3://gpt1-test/ds", cfg, track=False, local=True)
    cache = tmp_path / "cache"
    r = pretrain("s3://gpt1-test/ds", tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "done at step 4" in r.stdout and "bits per byte" in r.stdout
    # One copy on this node, however many workers: the shards, the tokenizer, the manifest last.
    (staged,) = [d for d in cache.iterdir() if d.is_dir()]
    assert json.loads((staged / "manifest.json").read_text()) == m
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()) == \
        sorted(["manifest.json", "tokenizer.json", *m["shards"]])

    # The same bytes, altered on S3 (same length, so no listing can tell): caught while staging.
    fs = pafs.FileSystem.from_uri("s3://gpt1-test")[0]
    fs.copy_file("gpt1-test/ds/manifest.json", "gpt1-test/bad/manifest.json")
    fs.copy_file("gpt1-test/ds/tokenizer.json", "gpt1-test/bad/tokenizer.json")
    for name in m["shards"]:
        data = fs.open_input_stream(f"gpt1-test/ds/{name}").read()
        if name == sorted(m["shards"])[0]:
            data = data[:100] + bytes(10) + data[110:]
        with fs.open_output_stream(f"gpt1-test/bad/{name}") as f:
            f.write(data)
    r = pretrain("s3://gpt1-test/bad", tmp_path, tmp_path / "cache2")
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [x for x in r.stderr.splitlines() if x.startswith("gpt1 pretrain: ")]
    assert len(lines) == 1 and "s3://gpt1-test/bad/train/shard-00000.bin: sha256 differs" in lines[0], r.stderr[-3000:]
    # (Ray's own PlacementGroupCleaner may print a traceback as the job's Ray shuts down: not ours.)
    assert not [x for x in r.stderr.splitlines() if "Traceback" in x and "PlacementGroupCleaner" not in x]
