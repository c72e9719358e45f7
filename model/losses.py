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


# Tokens whose logits one chunk of linear_cross_entropy holds: 8,192 x 40,576 fp32 logits are
# 1.3 GB, where a whole 64 x 512 batch's would be 5.3 GB (and as much again for their gradient).
CHUNK_TOKENS = 8192


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i CE(h_i W[:V]^T, y_i), a chunk of rows at a time. Each chunk's gradient is taken
    at once (softmax minus one-hot, times w_i) and multiplied into dh and dW, so no chunk's logits
    outlive it: the backward pass only scales what the forward pass kept."""

    @staticmethod
    def forward(ctx, h, weight, targets, row_weights, vocab: int, chunk: int, grads: bool):
        device = h.device.type
        # Under autocast the matmuls run in its dtype (bf16 on a GPU), as F.linear would; the
        # softmax, the loss and dW's sum stay in fp32.
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        ctx.weight_dtype = weight.dtype
        with torch.autocast(device, enabled=False):
            w = weight[:vocab].to(dtype)
            # Under no_grad (an evaluation) needs_input_grad still says True: `grads` says whether
            # a backward pass can come.
            dh = torch.empty_like(h) if grads and ctx.needs_input_grad[0] else None
            dw = torch.zeros_like(weight, dtype=torch.float32) if grads and ctx.needs_input_grad[1] else None
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            for s in range(0, h.shape[0], chunk):
                hc, yc, wc = h[s : s + chunk].to(dtype), targets[s : s + chunk], row_weights[s : s + chunk]
                logits = (hc @ w.t()).float()
                lse = logits.logsumexp(-1)
                total += ((lse - logits.gather(1, yc[:, None])[:, 0]) * wc).sum()
                if dh is not None or dw is not None:  # none under no_grad: an evaluation
                    g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                    g[torch.arange(len(yc), device=g.device), yc] -= 1
                    g = g.mul_(wc[:, None]).to(dtype)
                    if dh is not None:
                        dh[s : s + chunk] = (g @ w).to(h.dtype)
                    if dw is not None:
                        dw[:vocab] += (g.t() @ hc).float()
        ctx.save_for_backward(dh, dw)
        return total

    @staticmethod
    def backward(ctx, grad):
        dh, dw = ctx.saved_tensors
        return (
            None if dh is None else dh * grad.to(dh.dtype),
            None if dw is None else (dw * grad).to(ctx.weight_dtype),
            None,
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab: int,
    reduction: str = "mean",
    chunk: int = CHUNK_TOKENS,
    target_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """L1 from [B, T, d] final states and the tied [>= vocab, d] output table: the cross-entropy
    of h W[:vocab]^T against [B, T] targets, equal to lm_loss on the full logits: their mean (or
    sum), or with a [B, T] 0/1 target_mask each sequence's mean over its real targets, then the
    mean over sequences. The logits exist a chunk of tokens at a time, never as [B, T, vocab]."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction {reduction!r}: expected mean or sum")
    flat, y = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    if target_mask is not None:
        m = target_mask.float()
        row_weights = (m / m.sum(1, keepdim=True).clamp(min=1) / m.shape[0]).reshape(-1)
    else:
        scale = 1.0 / y.numel() if reduction == "mean" else 1.0
        row_weights = torch.full(y.shape, scale, dtype=torch.float32, device=h.device)
    grads = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(flat, weight, y, row_weights, vocab, chunk, grads)


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
