"""The paper's objectives: L1 (language modelling), L2 (the task), L3 = L2 + λ·L1."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """L1: next-token cross-entropy of [N, T', V] logits against [N, T] inputs, where the logits
    at position t predict input t + 1. T' is T (a fine-tuning input: the last position predicts
    nothing) or T - 1 (a pretraining block of n_ctx + 1 tokens, whose last token is only a target).

    Without a mask, the mean (or with reduction="sum", the sum) over every predicted token:
    pretraining blocks are full. With a [N, T] 0/1 mask, as in the released code: each
    sequence's mean over its non-padding targets, then the mean over sequences, so long and
    short inputs weigh the same.
    """
    targets = input_ids[:, 1:]
    if logits.shape[1] not in (targets.shape[1], input_ids.shape[1]):
        raise ValueError(f"logits for {logits.shape[1]} positions do not fit inputs of {input_ids.shape[1]}")
    losses = F.cross_entropy(
        logits[:, : targets.shape[1]].flatten(0, 1).float(), targets.flatten(), reduction="none"
    ).view_as(targets)
    if attention_mask is None:
        return losses.sum() if reduction == "sum" else losses.mean()
    m = attention_mask[:, 1:].to(losses.dtype)
    return ((losses * m).sum(1) / m.sum(1).clamp(min=1)).mean()


def soft_label(scores: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Real-valued scores as distributions over the integer scores 0..n_classes-1 (Tai, Socher
    and Manning's encoding, which the released code uses for STS-B): 3.4 is 0.6 on 3 and 0.4 on 4."""
    low = scores.float().floor().clamp(0, n_classes - 1)
    frac = scores.float() - low
    target = torch.zeros(scores.shape[0], n_classes, device=scores.device)
    target.scatter_(1, low.long()[:, None], (1 - frac)[:, None])
    return target.scatter_add_(1, (low + 1).clamp(max=n_classes - 1).long()[:, None], frac[:, None])


def task_loss(
    logits: torch.Tensor, labels: torch.Tensor, regression: bool = False, soft_classes: int = 0
) -> torch.Tensor:
    """L2: cross-entropy over classes (or candidates, for multiple choice); for regression MSE, or
    with soft_classes the cross-entropy against soft_label's distribution (logits [B, soft_classes])."""
    if regression and soft_classes:
        return -(soft_label(labels, soft_classes) * logits.float().log_softmax(-1)).sum(-1).mean()
    if regression:
        return F.mse_loss(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


def combined_loss(l2: torch.Tensor, l1: torch.Tensor | None, lm_coef: float) -> torch.Tensor:
    """L3 = L2 + λ·L1. λ = 0 (or no L1) is the paper's 'no auxiliary LM' ablation."""
    return l2 if l1 is None or not lm_coef else l2 + lm_coef * l1
