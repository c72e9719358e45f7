"""The token table padded to an aligned row count inside the model, and kept to the real rows outside it.

A network's tokens_embed has config.padded_vocab rows (model/config.py), so the tied LM head's
matmul runs on shapes the GPU's kernels tile exactly. The rows past vocab_size are zero and never
read: no token id reaches them, and real_logits cuts them off every output. A state dict holds
only the real rows (what exports, checkpoints and the released layouts expect), and loading one
pads it again, so every file is the same as an unpadded model's.
"""

from __future__ import annotations

import torch
import torch.nn as nn

KEY = "tokens_embed.weight"


def padded_table(cfg) -> nn.Embedding:
    """The [padded_vocab, n_embd] token table; its padding rows zero (after the module's init)."""
    return nn.Embedding(cfg.padded_vocab, cfg.n_embd)


def zero_padding(net: nn.Module) -> None:
    with torch.no_grad():
        net.tokens_embed.weight[net.config.vocab_size :].zero_()


def real_logits(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[..., padded_vocab] -> [..., vocab_size]: the padding rows' logits never win or count."""
    return logits if logits.size(-1) == vocab_size else logits[..., :vocab_size]


def pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """weight with zero rows appended up to `rows` (itself where it has them)."""
    if weight.shape[0] >= rows:
        return weight
    pad = torch.zeros(rows - weight.shape[0], *weight.shape[1:], dtype=weight.dtype, device=weight.device)
    return torch.cat([weight, pad])


def keep_real_rows(net: nn.Module) -> None:
    """Hooks that write only vocab_size rows of the table and pad a loaded table again, so a
    padded model reads and writes the same files as an unpadded one."""

    def write(module, state_dict, prefix, local_metadata) -> None:
        key = prefix + KEY
        if key in state_dict:
            state_dict[key] = state_dict[key][: module.config.vocab_size]

    def read(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        key = prefix + KEY
        w = state_dict.get(key)
        # Only a table of exactly the real rows is padded: any other size is a mismatch, and
        # load_state_dict reports it as one.
        if w is not None and w.shape[0] == module.config.vocab_size:
            state_dict[key] = pad_rows(w, module.config.padded_vocab)

    net.register_state_dict_post_hook(write)
    net.register_load_state_dict_pre_hook(read)
