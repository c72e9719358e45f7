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
    """A native, Hugging Face or original-OpenAI model directory (model/weights.py)."""
    from .weights import read_weights

    config, sd = read_weights(directory, **overrides)
    # The config is the directory's text and the weights its bytes: a config that asks for
    # more than the files hold (n_layer 100000 beside 2 blocks of weights) is refused before
    # anything that size is built.
    held = sum(t.numel() for t in sd.values())
    if held != config.n_params():
        raise ValueError(
            f"{directory}: the config asks for {config.n_params():,} parameters "
            f"({config.arch}, {config.n_layer} x {config.n_embd}, vocab {config.vocab_size:,}, n_ctx "
            f"{config.n_ctx}) but the weights hold {held:,}; the config and the weights do not "
            "belong together"
        )
    # Built on the meta device and then handed the loaded tensors: no time spent drawing a
    # random init that is overwritten at once.
    with torch.device("meta"):
        net = build(config)
    try:
        net.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as err:  # missing, unexpected or mis-shaped tensors
        detail = " ".join(str(err).split("\n", 1)[-1].split())
        raise ValueError(f"{directory}: the weights do not fit the config: {detail[:300]}") from None
    if isinstance(net, LSTMLM):
        net.lstm.flatten_parameters()  # assign=True handed it new tensors; cuDNN wants one block
    return net
