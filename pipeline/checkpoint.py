"""Training checkpoints: a model directory plus the state that makes a resume exact.

    config.json, model.safetensors   the model (GPT.from_pretrained reads them)
    tokenizer.json                   the dataset's tokenizer (load_tokenizer reads it)
    trainer_state.json               step, schedule, pretraining config, data fingerprint
    optimizer.safetensors            AdamW's moments and step counts, keyed by parameter name,
                                     and the RNG state

Nothing is pickled, so nothing is unpickled on load.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model import GPT

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


def save_checkpoint(directory, gpt: GPT, optimizer: torch.optim.Optimizer, state: dict,
                    tokenizer_path) -> None:
    d = Path(directory)
    gpt.save_pretrained(d)
    shutil.copy(tokenizer_path, d / "tokenizer.json")
    name_of = {id(p): n for n, p in gpt.named_parameters()}
    tensors = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"{name_of[id(p)]}/{key}"] = t.detach().cpu().contiguous()
    tensors["rng/cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(d / OPTIMIZER_FILE))
    (d / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def read_state(directory) -> dict:
    return json.loads((Path(directory) / STATE_FILE).read_text())


def load_training_state(directory, gpt: GPT, optimizer: torch.optim.Optimizer) -> dict:
    """Load the model's weights, the optimizer's state and the RNG into existing objects (the
    model may already be on its device); returns trainer_state.json."""
    d = Path(directory)
    weights = GPT.from_pretrained(d).state_dict()
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
    torch.set_rng_state(tensors["rng/cpu"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
    return read_state(d)
