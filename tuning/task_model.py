"""The task model of fine-tuning: a pretrained network (Pretrained, as a sweep ships it to its trials)
with the task's head and input transformation (TaskModel), built from the settings, and its
directory (the network, tokenizer.json, head.safetensors, task.json) written and read back.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from model import GPT, GPTConfig, GPTForTask, TaskHead, from_pretrained
from model import build as build_network
from pipeline import errors, outdir
from pipeline.data.tasks import Task
from pipeline.data.tokenizer import DELIMITER, EXTRACT, START
from tuning.encode import Encoder
from tuning.finetune_config import FinetuneConfig, is_finetune_output

SOFT_CLASSES = 6  # regression_target soft: STS-B's integer scores 0-5, as the release encodes them


@dataclass
class Pretrained:
    """A checkpoint's network and tokenizer as plain data (numpy weights, JSON texts): what a
    sweep puts in Ray's object store once, for every trial to read."""

    config: dict
    weights: dict[str, np.ndarray]
    tokenizer: str

    @classmethod
    def load(cls, checkpoint) -> Pretrained:
        """From any model directory that GPT.from_pretrained and load_tokenizer read; a training
        checkpoint's files (its tokenizer too) must be the ones its trainer_state.json lists."""
        from pipeline.model_dir import load_model_and_tokenizer

        gpt, tok = load_model_and_tokenizer(checkpoint)
        return cls(gpt.config.to_dict(), {k: v.numpy() for k, v in gpt.state_dict().items()}, tok.to_str())

    def gpt(self) -> GPT:
        gpt = build_network(GPTConfig.from_dict(self.config))
        # Copies: arrays from the object store are read-only views of shared memory.
        gpt.load_state_dict({k: torch.tensor(v) for k, v in self.weights.items()})
        return gpt


@dataclass
class TaskModel:
    model: GPTForTask
    encoder: Encoder
    task: Task


def build(task: Task, pretrained: Pretrained, cfg: FinetuneConfig, from_scratch: bool = False) -> TaskModel:
    tok = Tokenizer.from_str(pretrained.tokenizer)
    gpt = pretrained.gpt()
    torch.manual_seed(cfg.seed)
    if from_scratch:  # the paper's "no pretraining" row: the same network, random weights
        gpt = build_network(gpt.config)
    elif cfg.n_transfer >= 0:
        transfer_blocks(gpt, cfg.n_transfer)
    n_ctx = cfg.n_ctx or gpt.config.n_ctx
    if n_ctx > gpt.config.n_ctx:
        raise errors.ConfigError(f"n_ctx {n_ctx}: the model has positions for {gpt.config.n_ctx}")
    specials = [tok.token_to_id(t) for t in (START, DELIMITER, EXTRACT)]
    if cfg.reinit_special or max(specials) >= gpt.config.vocab_size:
        gpt.draw_token_rows(specials, torch.Generator().manual_seed(cfg.seed))
    encoder = Encoder(tok, task.transformation, n_ctx, gpt.config.vocab_size)
    head = TaskHead(
        gpt.config.n_embd,
        task.transformation,
        n_labels=max(len(task.labels), 1),
        clf_pdrop=cfg.clf_dropout,
        regression=task.regression,
        soft_classes=SOFT_CLASSES if cfg.regression_target == "soft" else 0,
    )
    return TaskModel(GPTForTask(gpt, head, encoder.extract), encoder, task)


def transfer_blocks(gpt: GPT, k: int) -> None:
    """Keep the embeddings and the first k blocks of gpt; the others are drawn afresh (from the
    current torch seed)."""
    if gpt.config.arch != "transformer":
        raise errors.ConfigError(
            f"n_transfer {k}: transferring some layers (Figure 2, left) is defined for the Transformer; "
            f"the checkpoint holds an {gpt.config.arch}"
        )
    if k > gpt.config.n_layer:
        raise errors.ConfigError(
            f"n_transfer {k}: the checkpoint has {gpt.config.n_layer} blocks; "
            f"expected 0 to {gpt.config.n_layer} (or -1 for all)"
        )
    gpt.reinit_blocks(k)


def _device(tm: TaskModel) -> torch.device:
    return next(tm.model.parameters()).device


def save(tm: TaskModel, out) -> None:
    """A model directory (the GPT, loadable alone) plus head.safetensors and task.json, written
    beside out and swapped in whole."""
    out = Path(out)
    tmp = outdir.sibling(out, "tmp")
    try:
        _write_model(tm, tmp)
        outdir.swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_task_model(d: Path, device: str = "cpu") -> TaskModel:
    """A directory that finetune wrote (is_finetune_output), in evaluation mode on device: the
    network, its head, and the task's transformation and labels from task.json."""
    from safetensors.torch import load_file

    from pipeline.data.tokenizer import load_tokenizer
    from tuning.inputs import task_of

    d = Path(d)
    if not is_finetune_output(d):
        raise errors.UserError(
            f"{d}: not a fine-tuned model (expected task.json and head.safetensors beside the "
            "model, as gpt1 finetune and gpt1 sweep write them)"
        )
    task = task_of(d)
    gpt, tok = from_pretrained(d), load_tokenizer(d / "tokenizer.json")
    n_ctx = json.loads((d / "task.json").read_text()).get("n_ctx", gpt.config.n_ctx)
    encoder = Encoder(tok, task.transformation, n_ctx, gpt.config.vocab_size)
    head = TaskHead(
        gpt.config.n_embd,
        task.transformation,
        n_labels=max(len(task.labels), 1),
        regression=task.regression,
        soft_classes=json.loads((d / "task.json").read_text()).get("soft_classes", 0),
    )
    head.load_state_dict(load_file(str(d / "head.safetensors")))
    model = GPTForTask(gpt, head, encoder.extract).to(device).eval()
    return TaskModel(model, encoder, task)


def _write_model(tm: TaskModel, tmp: Path) -> None:
    from safetensors.torch import save_file

    tm.model.gpt.save_pretrained(tmp)
    tm.encoder.tok.save(str(tmp / "tokenizer.json"))
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tm.model.head.state_dict().items()},
        str(tmp / "head.safetensors"),
    )
    (tmp / "task.json").write_text(
        json.dumps(
            {
                "task": tm.task.name,
                "transformation": tm.task.transformation,
                "labels": list(tm.task.labels),
                "regression": tm.task.regression,
                "soft_classes": tm.model.head.soft_classes,
                "n_ctx": tm.encoder.n_ctx,
            },
            indent=2,
        )
        + "\n"
    )
