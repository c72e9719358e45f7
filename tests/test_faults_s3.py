"""Checkpoints on object storage (a real local S3 server, moto): each is uploaded with its
trainer_state.json last, so that a resume takes the newest complete one, and the same command
resumes from it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from corpus_gen import documents

from pipeline.data.prepare import PrepareConfig, prepare
from pipeline.model_dir import latest_checkpoint

pytestmark = pytest.mark.slow  # a cluster, an S3 server or a Ray job: minutes

ROOT = Path(__file__).resolve().parent.parent


def test_checkpoints_on_s3_are_complete_and_the_run_resumes(s3, tmp_path):
    (tmp_path / "c.txt").write_text("\n\n".join(documents(800, seed=8)) + "\n")
    prepare(
        [str(tmp_path / "c.txt")],
        tmp_path / "data",
        PrepareConfig(n_merges=100, n_ctx=32, val_fraction=0.1),
        track=False,
    )
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **s3}
    cmd = [
        sys.executable,
        str(ROOT / "pipeline" / "pretrain.py"),
        "--data",
        str(tmp_path / "data"),
        "--storage",
        "s3://gpt1-test/runs",
        "--name",
        "r",
        "--no-mlflow",
        "--set",
        "model_overrides={n_ctx: 32}",
        "--set",
        "max_steps=20",
        "--set",
        "batch_size=4",
        "--set",
        "checkpoint_every=10",
        "--set",
        "eval_every=0",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    # The line that names the checkpoint to resume from gives its whole URI.
    assert "newest checkpoint s3://gpt1-test/runs/r/checkpoint_000000020" in first.stdout, first.stdout[
        -2000:
    ]
    assert latest_checkpoint("s3://gpt1-test/runs/r") == ("s3://gpt1-test/runs/r/checkpoint_000000020", 20)
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri("s3://gpt1-test/runs/r/checkpoint_000000020")
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(path))}
    assert names == {
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "tokenizer.json",
        "trainer_state.json",
    }
    # A checkpoint whose upload was cut off before its trainer_state.json is passed over.
    fs.create_dir(f"{path[:-2]}30")
    with fs.open_output_stream(f"{path[:-2]}30/model.safetensors") as f:
        f.write(b"half")
    assert latest_checkpoint("s3://gpt1-test/runs/r")[1] == 20
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    # The run had ended at step 20: it says so, from that checkpoint, the cut-off one passed over.
    said = "run r is complete: step 20 of 20, nothing to do; newest checkpoint s3://gpt1-test/runs/r/checkpoint_000000020"
    assert said in again.stdout, again.stdout[-2000:]
