"""The paper's LSTM baseline (Table 5, Figure 2): a single-layer 2048-unit LSTM language model,
trained and fine-tuned in the same framework as the Transformer.

It offers GPT's interface (hidden_states, lm_logits, forward, save_pretrained, from_pretrained,
draw_token_rows, flops_per_token, generate), so the pretraining loop, the task heads
(model/heads.py), the input transformations and the zero-shot heuristics take either network.

Shapes, for config.arch == "lstm":
  tokens_embed  [vocab, n_embd]        the input embedding, and the output layer (tied)
  lstm          n_embd -> lstm_units   one layer (n_layer of them, if asked)
  proj          lstm_units -> n_embd   so that the tied output layer and the task heads read
                                       n_embd-wide states, as they do from the Transformer

The embedding width is the Transformer's (n_embd, 768 in the paper's preset): the paper says only
"2048 unit LSTM", and keeping the embedding the same makes the comparison about the sequence
model alone, with the same vocabulary table and the same task heads. There are no position
embeddings: the recurrence orders the tokens. Dropout sits where the Transformer has it and an
LSTM has the same place: on the embeddings (embd_pdrop) and on the sequence model's output
(resid_pdrop); attention dropout has no counterpart.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig
from .dropout import Dropout
from .gpt import GPT
from .losses import linear_cross_entropy
from .vocab import keep_real_rows, padded_table, real_logits, zero_padding


class LSTMState:
    """The LSTM's (h, c) after the tokens seen so far: the recurrent counterpart of KVCache, for
    decoding one token at a time."""

    def __init__(self):
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        self.length = 0


class LSTMLM(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.arch != "lstm":
            raise ValueError(f"arch {cfg.arch!r}: LSTMLM builds arch 'lstm'")
        self.config = cfg
        self.tokens_embed = padded_table(cfg)  # padded_vocab rows, as the Transformer's (vocab.py)
        self.drop = Dropout(cfg.embd_pdrop)
        self.lstm = nn.LSTM(cfg.n_embd, cfg.lstm_units, num_layers=cfg.n_layer, batch_first=True)
        self.out_drop = Dropout(cfg.resid_pdrop)
        self.proj = nn.Linear(cfg.lstm_units, cfg.n_embd)
        self._init_weights()
        zero_padding(self)
        keep_real_rows(self)

    def _init_weights(self) -> None:
        # N(0, 0.02) for the embedding and projection, as the Transformer's; the LSTM keeps torch's
        # uniform(±1/sqrt(units)) with its forget-gate bias at 1 (Jozefowicz et al., 2015), so
        # that early gradients flow through the cell.
        std = self.config.initializer_range
        nn.init.normal_(self.tokens_embed.weight, std=std)
        nn.init.normal_(self.proj.weight, std=std)
        nn.init.zeros_(self.proj.bias)
        self.lstm.reset_parameters()
        H = self.config.lstm_units
        with torch.no_grad():
            for name, p in self.lstm.named_parameters():
                if name.startswith("bias_ih"):
                    p[H : 2 * H] = 1.0  # gates are ordered input, forget, cell, output
                elif name.startswith("bias_hh"):
                    p[H : 2 * H] = 0.0

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: LSTMState | None = None,
    ) -> torch.Tensor:
        """[B, T] token ids -> [B, T, n_embd] states. Padding must be on the right (as the task
        encoder pads): a recurrence reads the tokens in order, so no real token ever sees a pad
        after it, but pads before it would change its state."""
        T = input_ids.size(1)
        past = cache.length if cache is not None else 0
        if past + T > self.config.n_ctx:
            raise ValueError(f"sequence length {past + T} exceeds n_ctx {self.config.n_ctx}")
        if attention_mask is not None:
            valid = attention_mask.bool()
            if (valid[:, 1:] & ~valid[:, :-1]).any():
                raise ValueError(
                    "the LSTM takes padding on the right only: a pad before a token changes its state"
                )
        x = self.drop(self.tokens_embed(input_ids))
        y, state = self.lstm(x, cache.state if cache is not None else None)
        if cache is not None:
            cache.state, cache.length = state, past + T
        return self.proj(self.out_drop(y))

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        # Tied, as the Transformer's, with the padding rows' logits cut off.
        return real_logits(F.linear(h, self.tokens_embed.weight), self.config.vocab_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: LSTMState | None = None,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Logits, or given next-token targets L1, as GPT.forward."""
        h = self.hidden_states(input_ids, attention_mask, cache)
        if targets is not None:
            return linear_cross_entropy(
                h, self.tokens_embed.weight, targets, self.config.vocab_size, reduction
            )
        return self.lm_logits(h)

    def make_cache(self) -> LSTMState:
        return LSTMState()

    def reinit_blocks(self, first: int) -> None:
        raise ValueError("transferring some layers (Figure 2, left) is defined for the Transformer's blocks")

    # The same growth and N(0, 0.02) draw of the special tokens' rows, and the same sampling.
    draw_token_rows = GPT.draw_token_rows
    padding_params = GPT.padding_params
    generate = GPT.generate

    def num_params(self, non_embedding: bool = False) -> int:
        return sum(p.numel() for p in self.parameters()) - self.padding_params()

    def flops_per_token(self, T: int | None = None) -> float:
        """6N: every parameter takes part in one multiply-add per token, forward, and two back
        (the recurrence has no term in T, unlike attention)."""
        return 6 * self.num_params()

    def save_pretrained(self, directory, format: str = "native") -> None:
        from .weights import write_weights

        if format != "native":
            raise ValueError(f"format {format!r}: an LSTM is written in the native format only")
        write_weights(directory, self.config, self.state_dict(), format=format)
