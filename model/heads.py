"""Task heads for the paper's four input transformations, read at the extract token.

Input shapes by transformation (T = tokens per sequence):
  classification, entailment   [B, T]     one sequence: start text (delim text) extract
  similarity                   [B, 2, T]  both orders, A-delim-B and B-delim-A; states summed
  multiple_choice              [B, K, T]  one sequence per candidate; softmax over the K scores
A regression head (STS-B) is a similarity head with one real-valued output, or, with soft_classes,
one per integer score, its prediction the expected score (the released code's STS-B target).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import TRANSFORMATIONS
from .dropout import Dropout
from .gpt import GPT
from .losses import combined_loss, linear_cross_entropy, task_loss
from .lstm import LSTMLM


def extract_states(h: torch.Tensor, input_ids: torch.Tensor, extract_token: int) -> torch.Tensor:
    """[N, T, d] states, [N, T] ids -> [N, d]: the state at each sequence's first extract token."""
    is_extract = input_ids == extract_token
    if not bool(is_extract.any(-1).all()):
        raise ValueError(f"every sequence must contain the extract token (id {extract_token})")
    pos = is_extract.int().argmax(-1)
    return h[torch.arange(h.size(0), device=h.device), pos]


class TaskHead(nn.Module):
    def __init__(
        self,
        n_embd: int,
        transformation: str,
        n_labels: int = 2,
        clf_pdrop: float = 0.1,
        regression: bool = False,
        soft_classes: int = 0,
    ):
        super().__init__()
        if transformation not in TRANSFORMATIONS:
            raise ValueError(f"unknown transformation {transformation!r}; expected one of {TRANSFORMATIONS}")
        self.transformation = transformation
        self.regression = regression
        self.soft_classes = soft_classes if regression else 0
        # Multiple choice scores each candidate with one linear output; regression has one output
        # (or one per integer score, soft_classes).
        self.scalar = transformation == "multiple_choice" or (regression and not self.soft_classes)
        n_out = 1 if self.scalar else self.soft_classes or n_labels
        self.dropout = Dropout(clf_pdrop)
        self.linear = nn.Linear(n_embd, n_out)
        nn.init.normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """[B, d] (or [B, 2|K, d]) extract states -> [B, n_labels], [B, K] or [B] (regression)."""
        if self.transformation == "similarity":
            states = states.sum(1)  # the two orders' final states, added element-wise
        if self.transformation == "multiple_choice":
            # One dropout mask per example, shared by its K candidates, as the released code
            # draws it (noise_shape [B, 1, d]): the candidates are compared under the same units.
            states = states * self.dropout(torch.ones_like(states[:, :1]))
        else:
            states = self.dropout(states)
        out = self.linear(states)
        return out.squeeze(-1) if self.scalar else out

    def score(self, out: torch.Tensor) -> torch.Tensor:
        """What the task reads from forward's output: itself, or with soft_classes the expected
        integer score [B] of its distribution."""
        if not self.soft_classes:
            return out
        return out.float().softmax(-1) @ torch.arange(
            self.soft_classes, dtype=torch.float32, device=out.device
        )


@dataclass
class TaskOutput:
    logits: torch.Tensor
    l1: torch.Tensor | None = None  # auxiliary LM loss on the same inputs
    l2: torch.Tensor | None = None  # task loss
    l3: torch.Tensor | None = None  # L2 + λ·L1, the fine-tuning objective


class GPTForTask(nn.Module):
    """A pretrained network (the Transformer or the LSTM) plus a task head; computes L1, L2 and
    L3 in one forward pass."""

    def __init__(self, gpt: GPT | LSTMLM, head: TaskHead, extract_token: int):
        super().__init__()
        self.gpt = gpt
        self.head = head
        self.extract_token = extract_token

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        lm_coef: float = 0.5,
    ) -> TaskOutput:
        T = input_ids.size(-1)
        flat_ids = input_ids.reshape(-1, T)
        flat_mask = None if attention_mask is None else attention_mask.reshape(-1, T)
        h = self.gpt.hidden_states(flat_ids, flat_mask)
        states = extract_states(h, flat_ids, self.extract_token)
        raw = self.head(states.view(*input_ids.shape[:-1], -1))
        logits = self.head.score(raw)
        if labels is None:
            return TaskOutput(logits)
        l2 = task_loss(raw, labels, self.head.regression, self.head.soft_classes)
        # L1 costs a full-vocabulary projection (in chunks: no [N, T, vocab] logits); skip it when λ = 0.
        l1 = None
        if lm_coef:
            weight, vocab = self.gpt.tokens_embed.weight, self.gpt.config.vocab_size
            mask = None if flat_mask is None else flat_mask[:, 1:]
            l1 = linear_cross_entropy(h[:, :-1], weight, flat_ids[:, 1:], vocab, target_mask=mask)
        return TaskOutput(logits, l1, l2, combined_loss(l2, l1, lm_coef))
