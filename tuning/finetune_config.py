"""fine-tune's settings and its checks before any work, importing neither torch nor Ray: what
`gpt1 finetune --help`, a sweep's search space and the command's refusals need.

    FinetuneConfig        the settings (the paper's defaults), as --set and a sweep's space name them
    check_config(cfg)     every numeric key in its range
    check_out(out, ...)   where the fine-tuned model may go
    is_finetune_output(d) a directory that finetune wrote
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import configio, errors, outdir


@dataclass
class FinetuneConfig:
    lr: float = 6.25e-5  # the paper's fine-tuning learning rate
    batch_size: int = 32  # examples an update (the paper's 32)
    epochs: int = 3  # passes over the training split (the paper's 3)
    max_steps: int = 0  # 0 = epochs over the training split
    warmup: float = 0.002  # fraction of the updates, linear warm-up then linear decay
    lm_coef: float = 0.5  # λ; 0 is the paper's "no auxiliary LM" ablation
    clf_dropout: float = 0.1  # dropout on the extract token's state, before the task head
    weight_decay: float = 0.01  # decoupled, on all weights but biases and gains
    grad_clip: float = 1.0  # max global gradient norm; 0 = none
    eval_every: int = 0  # steps between dev evaluations; 0 = once per epoch
    eval_batch: int = 64  # examples a forward pass when evaluating
    max_train: int = 0  # use the first N training examples; 0 = all
    n_ctx: int = 0  # 0 = the model's
    seed: int = 0  # the head's init, the special rows, dropout and the example order
    # Draw the start, delimiter and extract tokens' embedding rows afresh from N(0, 0.02), as the
    # released code does: pretraining never trained them. A checkpoint without those rows (the
    # released model, in any layout) always gets them drawn.
    reinit_special: bool = True
    # Figure 2, left: how many of the checkpoint's blocks to transfer (with the embeddings), the
    # rest drawn afresh as pretraining initialises them. -1 = all of them.
    n_transfer: int = -1
    # A regression task's target: mse (one output), or soft (the released code's STS-B target: a
    # distribution over the integer scores 0-5, Tai et al.'s encoding; the prediction its mean).
    regression_target: str = "mse"


def check_config(cfg: FinetuneConfig) -> None:
    """Every numeric key in its range, before any work."""
    c = errors.ConfigError
    for key in ("batch_size", "epochs", "eval_batch"):
        if getattr(cfg, key) < 1:
            raise c(f"{key} {getattr(cfg, key)}: expected at least 1")
    for key in ("max_steps", "eval_every", "max_train", "n_ctx"):
        if getattr(cfg, key) < 0:
            raise c(f"{key} {getattr(cfg, key)}: expected >= 0")
    if cfg.regression_target not in ("mse", "soft"):
        raise c(f"regression_target {cfg.regression_target!r}: expected mse or soft")
    if cfg.n_transfer < -1:
        raise c(f"n_transfer {cfg.n_transfer}: expected 0 to n_layer blocks, or -1 for all")
    configio.check_ranges(
        cfg,
        {
            "lr": (0.0, 1.0),
            "warmup": (0.0, 1.0),
            "lm_coef": (0.0, None),
            "clf_dropout": (0.0, 0.99),
            "weight_decay": (0.0, 1.0),
            "grad_clip": (0.0, None),
        },
    )


def is_finetune_output(d: Path) -> bool:
    """A directory that finetune wrote: its model plus head.safetensors and task.json."""
    return (d / "task.json").is_file() and (d / "head.safetensors").is_file()


def check_out(out: Path, checkpoint, overwrite: bool) -> None:
    """--out may be new, empty, or (with --overwrite) an earlier finetune output; never the
    checkpoint being read, a directory inside it, or one that holds it."""
    out, ckpt = out.absolute(), Path(checkpoint).absolute()
    if out == ckpt or ckpt in out.parents or out in ckpt.parents:
        raise errors.ConfigError(
            f"--out {out}: is (or holds, or lies in) the --checkpoint being read; "
            "write the fine-tuned model elsewhere"
        )
    outdir.check_replaceable(out, "a fine-tuned model", is_finetune_output, overwrite)
    outdir.check_writable(out)
    outdir.remove_orphans(out)
