"""Either network by its config: build(config) makes a fresh one, from_pretrained(directory) loads
one. config.arch says which: "transformer" (GPT) or "lstm" (LSTMLM, Table 5's baseline)."""

from __future__ import annotations

import torch

from .config import GPTConfig
from .gpt import GPT
from .lstm import LSTMLM

NETWORKS = {"transformer": GPT, "lstm": LSTMLM}


def build(cfg: GPTConfig) -> GPT | LSTMLM:
    return NETWORKS[cfg.arch](cfg)


def from_pretrained(directory, **overrides) -> GPT | LSTMLM:
    """A native, Hugging Face or original-OpenAI model directory (model/weights.py), whichever
    network its config names."""
    from .weights import assign_weights, read_checked

    config, sd = read_checked(directory, **overrides)
    # Built on the meta device and then handed the loaded tensors: no time spent drawing a
    # random init that is overwritten at once.
    with torch.device("meta"):
        net = build(config)
    return assign_weights(net, sd, directory)
