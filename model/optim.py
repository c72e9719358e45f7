"""The paper's optimiser and learning-rate schedules.

The schedules are functions of x = update / total updates, with the same values at the same
points as the released code's opt.py (note that warmup_cosine's cosine runs over all of x, not
only the part after warm-up, and that update 0 gets lr 0).
"""

from __future__ import annotations

import inspect
import math

import torch

from model.config import ADAM_BETAS, ADAM_EPS


def _warming(x: float, warmup: float) -> bool:
    return warmup > 0 and x <= warmup  # warmup 0: no warm-up at all (and no 0 / 0 at update 0)


def warmup_cosine(x: float, warmup: float = 0.002) -> float:
    return x / warmup if _warming(x, warmup) else 0.5 * (1 + math.cos(math.pi * x))


def warmup_constant(x: float, warmup: float = 0.002) -> float:
    return x / warmup if _warming(x, warmup) else 1.0


def warmup_linear(x: float, warmup: float = 0.002) -> float:
    return (x / warmup if _warming(x, warmup) else 1.0) * (1 - x)


SCHEDULES = {
    "warmup_cosine": warmup_cosine,
    "warmup_constant": warmup_constant,
    "warmup_linear": warmup_linear,
}


def lr_factor(name: str, step: int, total_steps: int, warmup: float = 0.002) -> float:
    """The multiplier of the base lr at update `step` of `total_steps`: a pure function of the
    step, so a resumed run needs only the step to be back on the schedule."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](step / total_steps, warmup)


def make_schedule(
    optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup: float = 0.002, start_step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR that multiplies the base lr by SCHEDULES[name](step / total_steps, warmup): the
    one lr schedule of both loops, stepped after every optimizer step.

    warmup is a fraction of total_steps, as in opt.py: the paper's 2,000 pretraining warm-up
    updates are warmup = 2000 / total_steps. start_step is the update a resumed run starts at.
    """
    lr_factor(name, 0, total_steps, warmup)  # an unknown name fails here, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(name, start_step + step, total_steps, warmup)
    )


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The paper's "modified L2": decay weights of rank >= 2 (matrices, embeddings), not biases
    or LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = ADAM_BETAS,
    eps: float = ADAM_EPS,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """Adam with decoupled weight decay (AdamW), b1 0.9, b2 0.999, eps 1e-8 as in opt.py.

    The fused kernel (one launch for all parameters) is used where this torch has it.
    """
    if fused is None:
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused)
