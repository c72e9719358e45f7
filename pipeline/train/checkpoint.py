"""Training checkpoints: a model directory plus the state that makes a resume exact.

    config.json, model.safetensors   the model (model.from_pretrained reads them)
    tokenizer.json                   the dataset's tokenizer (load_tokenizer reads it)
    trainer_state.json               step, schedule, pretraining config, data fingerprint, and
                                     the size and sha256 of every other file: written last, so
                                     a checkpoint without it, or whose files differ, is damaged
    optimizer.safetensors            AdamW's moments and step counts, keyed by parameter name

No RNG state is kept: the loop draws each micro-batch's randomness (dropout) from
micro_seed(seed, step, micro-batch), so a resume needs only the step. (Checkpoints of earlier
versions hold rng/cpu and rng/cuda tensors; they are read and ignored.)

Nothing is pickled, so nothing is unpickled on load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model import GPT, from_pretrained
from model.weights import write_weights
from pipeline import outdir
from pipeline.errors import model_input
from pipeline.files import sha256_file
from pipeline.model_dir import OPTIMIZER_FILE, STATE_FILE, check_complete, read_state


def snapshot(gpt: GPT, optimizer: torch.optim.Optimizer) -> tuple:
    """The model's and AdamW's tensors, copied into this process's memory: what write_checkpoint
    writes, while training goes on and changes the originals."""
    model = {k: v.detach().to("cpu", copy=True) for k, v in gpt.state_dict().items()}
    name_of = {id(p): n for n, p in gpt.named_parameters()}
    moments = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                moments[f"{name_of[id(p)]}/{key}"] = t.detach().to("cpu", copy=True).contiguous()
    return gpt.config, model, moments


def write_checkpoint(directory, snap: tuple, state: dict, tokenizer_path) -> None:
    """Write a snapshot() as a checkpoint directory, trainer_state.json (with every file's hash) last."""
    config, model, moments = snap
    d = Path(directory)
    write_weights(d, config, model)
    shutil.copy(tokenizer_path, d / "tokenizer.json")
    save_file(moments, str(d / OPTIMIZER_FILE))
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(d.iterdir())
        if p.is_file() and p.name not in (STATE_FILE, outdir.MARKER_FILE)
    }
    (d / STATE_FILE).write_text(json.dumps({**state, "files": files}, indent=2, sort_keys=True) + "\n")


def save_checkpoint(
    directory, gpt: GPT, optimizer: torch.optim.Optimizer, state: dict, tokenizer_path
) -> None:
    write_checkpoint(directory, snapshot(gpt, optimizer), state, tokenizer_path)


def load_training_state(directory, gpt: GPT, optimizer: torch.optim.Optimizer) -> dict:
    """Load the model's weights and the optimizer's state into existing objects (the
    model may already be on its device); returns trainer_state.json."""
    d = Path(directory)
    check_complete(d, hashes=False)
    with model_input(str(d)):
        weights = from_pretrained(d).state_dict()
    with torch.no_grad():
        for name, t in gpt.state_dict().items():
            t.copy_(weights[name])
    tensors = load_file(str(d / OPTIMIZER_FILE))
    fused = any(g.get("fused") for g in optimizer.param_groups)
    for name, p in gpt.named_parameters():
        state = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == name}
        # The moments live on the parameter's device; the step count too for the fused kernel,
        # on the CPU otherwise (as AdamW itself keeps them).
        optimizer.state[p] = {k: v.to(p.device if k != "step" or fused else "cpu") for k, v in state.items()}
    return read_state(d)
