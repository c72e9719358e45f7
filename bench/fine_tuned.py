"""A fine-tuned model for the benchmarks of what a trained model serves: a GPT of a preset (random
weights) with a tokenizer learned on generated reviews, fine-tuned for a few steps on the
generated sentiment task (gpt1/world.py). Its accuracy does not matter here; its shape does."""

from __future__ import annotations

from pathlib import Path


def fine_tuned_model(work: Path, preset: str = "mini", steps: int = 10) -> tuple[Path, list[str]]:
    """(the model directory, the task's dev sentences)."""
    import torch

    from gpt1 import world
    from model import GPT, GPTConfig
    from pipeline.data.tasks import from_directory
    from pipeline.data.tokenizer import save_tokenizer, train_tokenizer
    from tuning.finetune import FinetuneConfig, finetune

    task_dir = world.write_task("sentiment", work / "task", n_train=400, n_dev=400)
    task = from_directory("sentiment", task_dir)
    dev = [e.text[0] for e in task.load(task_dir, "dev")]
    ckpt = work / "pretrained"
    tok = train_tokenizer(dev + [e.text[0] for e in task.load(task_dir, "train")], n_merges=500)
    torch.manual_seed(0)
    GPT(GPTConfig.preset(preset, vocab_size=tok.get_vocab_size())).save_pretrained(ckpt)
    save_tokenizer(tok, ckpt / "tokenizer.json")
    out = work / "model"
    finetune(task, task_dir, ckpt, FinetuneConfig(batch_size=16, max_steps=steps), out=out)
    return out, dev
