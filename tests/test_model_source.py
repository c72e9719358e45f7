"""--checkpoint has one meaning for every verb: a model directory, a pretraining run's directory
(its newest complete checkpoint), an MLflow model, an object-storage URI, or a Hugging Face hub
id fetched into huggingface_hub's cache (tested offline, against a cache built here). And export
keeps a fine-tuned model's task head."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from gpt1.cli import main as gpt1
from model import GPT
from pipeline.data.tasks import get
from tuning.finetune import FinetuneConfig, finetune, load_task_model, predict


def run_dir(task_checkpoint, tmp_path):
    """A pretraining run's directory: two checkpoints, the newer with other weights."""
    run = tmp_path / "runs" / "r"
    for step, seed in ((2, 1), (4, 2)):
        d = run / f"checkpoint_{step:09d}"
        shutil.copytree(task_checkpoint, d)
        torch.manual_seed(seed)
        GPT(GPT.from_pretrained(task_checkpoint).config).save_pretrained(d)
        (d / "trainer_state.json").write_text(json.dumps({"step": step, "files": {}}))
    return run


def test_every_verb_reads_a_run_directory_as_its_newest_checkpoint(
    task_checkpoint, sst2, tmp_path, capsys, mlflow_uri, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # finetune's MLflow artifacts land here
    run = run_dir(task_checkpoint, tmp_path)
    newest = run / "checkpoint_000000004"
    said = f"--checkpoint {run}: a pretraining run; its newest checkpoint is {newest}"
    greedy = ["generate", "--prompt", "a good film", "--max-new-tokens", "5", "--temperature", "0"]
    assert gpt1([*greedy, "--checkpoint", str(run)]) == 0
    from_run = capsys.readouterr().out
    assert said in from_run
    assert gpt1([*greedy, "--checkpoint", str(newest)]) == 0
    assert from_run.split(said, 1)[1].strip() == capsys.readouterr().out.strip()  # the same text
    (tmp_path / "held-out.txt").write_text("a good film\n\nthe plot was dull\n")
    assert (
        gpt1(
            ["evaluate", "--checkpoint", str(run), "--corpus", str(tmp_path / "held-out.txt"), "--no-mlflow"]
        )
        == 0
    )
    assert said in capsys.readouterr().out
    out = tmp_path / "ft"
    sets = ["--set", "max_steps=1", "--set", "batch_size=4"]
    assert (
        gpt1(
            [
                "finetune",
                "--task",
                "sst-2",
                "--data",
                str(sst2),
                "--checkpoint",
                str(run),
                "--out",
                str(out),
                *sets,
            ]
        )
        == 0
    )
    assert said in capsys.readouterr().out
    assert GPT.from_pretrained(out).config == GPT.from_pretrained(newest).config


def test_a_hub_id_is_read_from_huggingface_hubs_cache(task_checkpoint, tmp_path):
    """The released model by its hub id: a cache laid out as huggingface_hub lays it out, read
    with HF_HUB_OFFLINE=1; an id in neither the cache nor reach is one line."""
    home = tmp_path / "hf"
    repo = home / "hub" / "models--acme--tiny-gpt"
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert gpt1(["export", str(task_checkpoint), str(repo / "snapshots" / commit), "--format", "hf"]) == 0
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    args = ["generate", "--prompt", "a good film", "--max-new-tokens", "4", "--temperature", "0"]

    def gpt1_process(*more):
        cmd = [sys.executable, "-m", "gpt1.cli", *args, *more]
        return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)

    done = gpt1_process("--checkpoint", "acme/tiny-gpt")
    assert done.returncode == 0, done.stderr
    assert "--checkpoint acme/tiny-gpt: the Hugging Face hub model, in its cache at " in done.stdout
    assert str(repo / "snapshots" / commit) in done.stdout
    local = gpt1_process("--checkpoint", str(task_checkpoint))
    assert done.stdout.splitlines()[-1] == local.stdout.splitlines()[-1]  # the same model, the same text
    missing = gpt1_process("--checkpoint", "acme/no-such-model")
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1, missing.stderr
    assert "--checkpoint acme/no-such-model: no such directory, nor a Hugging Face hub model" in lines[0]


@pytest.mark.parametrize("fmt", ["native", "hf"])
def test_export_keeps_a_fine_tuned_models_head_and_task(task_checkpoint, sst2, tmp_path, capsys, fmt):
    tuned = tmp_path / "tuned"
    finetune(get("sst-2"), sst2, task_checkpoint, FinetuneConfig(batch_size=8, max_steps=3), out=tuned)
    assert gpt1(["export", str(tuned), str(tmp_path / "copy"), "--format", fmt]) == 0
    assert "with its task head" in capsys.readouterr().out
    a, b = load_task_model(tuned), load_task_model(tmp_path / "copy")
    dev = get("sst-2").load(sst2, "dev")[:16]
    assert list(predict(a, a.encoder.encode(dev))) == list(predict(b, b.encoder.encode(dev)))
    assert b.task.name == "sst-2"
