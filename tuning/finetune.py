"""Stage 3, fine-tune: a pretrained checkpoint + a labeled task -> a task model, minimising
L3 = L2 + λ·L1 over the task's input transformation: the loop. The task model and its files are
tuning/task_model.py, its evaluation tuning/evaluation.py, the command tuning/finetune_cli.py and
the settings tuning/finetune_config.py; this module also names theirs that callers use.

The paper's defaults: lr 6.25e-5, batch 32, 3 epochs, linear warm-up over 0.2% of the updates then
linear decay, classifier dropout 0.1, λ = 0.5. The dev split is evaluated every epoch (or every
`eval_every` steps); the best evaluation's model is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from model import make_optimizer, make_schedule
from model.config import bucketed
from pipeline import errors
from pipeline.console import eta
from pipeline.data.tasks import Task
from pipeline.runtime import autocast, check_device, local_device
from tuning.encode import collate

# What callers take from here: the loop's parts, the settings and the task model.
from tuning.evaluation import (  # noqa: F401
    TRAIN_SAMPLE,
    evaluate,
    evaluate_extra,
    is_extra,
    load_splits,
    parts,
    predict,
    rank,
    write_predictions,
)
from tuning.finetune_config import FinetuneConfig, check_config, check_out, is_finetune_output  # noqa: F401
from tuning.task_model import Pretrained, TaskModel, build, load_task_model, save  # noqa: F401


def finetune(
    task: Task,
    data,
    pretrained,
    cfg: FinetuneConfig,
    from_scratch: bool = False,
    report: Callable[[dict, int], None] | None = None,
    out=None,
    device: str = "auto",
    progress_every: float = 0.0,
) -> dict:
    """Train on the task's train split, evaluate on dev; returns the best evaluation (its
    metrics, step and the truncation counts).

    data is the task's directory, or its splits already loaded (load_splits); pretrained a
    checkpoint directory or a Pretrained. report(metrics, step) is called after every
    evaluation (Ray Tune, MLflow). With out, the best model is written there whenever it
    improves (before report sees it), and at the end its predictions on the test splits that
    the data directory holds. With progress_every, a line of progress (step, epoch, loss, ETA)
    is printed at most that often, in seconds, between evaluations."""
    check_device(device)
    check_config(cfg)
    if not isinstance(pretrained, Pretrained):
        pretrained = Pretrained.load(pretrained)
    splits = data if isinstance(data, dict) else load_splits(task, data, cfg.max_train)
    tm = build(task, pretrained, cfg, from_scratch)
    target = local_device(device)
    tm.model.to(target)
    train, dev = tm.encoder.encode(splits["train"]), tm.encoder.encode(splits["dev"])
    # Scored at each new best (the model the run keeps): the paper's other columns of this task.
    extra = {name: (exs, tm.encoder.encode(exs)) for name, exs in splits.get("extra", {}).items()}
    # Figure 2 (left) draws train accuracy beside dev: a seeded sample of the training examples.
    pick = np.random.default_rng(0).permutation(len(train))[:TRAIN_SAMPLE]
    extra["train"] = ([splits["train"][i] for i in pick], [train[i] for i in pick])
    if parts(splits["dev"]):
        extra["dev"] = (splits["dev"], dev)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    eval_every = cfg.eval_every or steps_per_epoch
    opt = make_optimizer(tm.model, cfg.lr, cfg.weight_decay)
    # The paper's fine-tuning schedule: linear warm-up over `warmup` of the updates, then linear decay.
    schedule = make_schedule(opt, "warmup_linear", total, cfg.warmup)
    rng = np.random.default_rng(cfg.seed)
    key = task.metrics[0]
    best: dict | None = None
    truncated = {
        "train_truncated": sum(e.truncated for e in train),
        "dev_truncated": sum(e.truncated for e in dev),
    }
    step = 0
    started = last_line = time.monotonic()
    tm.model.train()
    while step < total:
        order = rng.permutation(len(train))
        for i in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            batch = [train[j] for j in order[i : i + cfg.batch_size]]
            ids, mask, labels = collate(batch, task.regression, bucketed(tm.encoder.n_ctx, target))
            with autocast(target):
                loss = tm.model(ids.to(target), mask.to(target), labels.to(target), lm_coef=cfg.lm_coef).l3
            if not torch.isfinite(loss):  # stop before a diverged model can be kept
                raise errors.UserError(
                    f"the training loss became {loss.item()} at step {step + 1:,}; lower lr (now {cfg.lr:g})"
                )
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(tm.model.parameters(), cfg.grad_clip)
            opt.step()
            schedule.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            now = time.monotonic()
            if progress_every and now - last_line >= progress_every and step % eval_every:
                last_line = now
                print(
                    f"step {step:,}/{total:,} (epoch {step / steps_per_epoch:.2f} of {total / steps_per_epoch:.2f}): "
                    f"loss {loss.item():.4f}, ETA {eta((total - step) * (now - started) / step)}",
                    flush=True,
                )
            if step % eval_every == 0 or step == total:
                result = {
                    **evaluate(tm, dev, cfg.eval_batch),
                    "train_loss": float(loss.detach()),
                    "epoch": step / steps_per_epoch,
                    "total_steps": total,  # for the progress lines of whoever reports
                }
                if best is None or rank(result[key]) > rank(best[key]):
                    result.update(evaluate_extra(tm, extra, cfg.eval_batch))
                    best = {**result, "step": step}
                    best_state = {k: v.detach().clone() for k, v in tm.model.state_dict().items()}
                    if out is not None:
                        save(tm, out)
                if report:
                    report(result, step)
    if out is not None and not isinstance(data, dict):
        tm.model.load_state_dict(best_state)
        write_predictions(tm, data, out, cfg.eval_batch)
    return {**best, **truncated, "train_examples": len(train), "dev_examples": len(dev)}
