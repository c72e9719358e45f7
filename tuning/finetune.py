"""Stage 3, fine-tune: a pretrained checkpoint + a labeled task -> a task model, minimising
L3 = L2 + λ·L1 over the task's input transformation (the loop, its evaluation, the task model's
saving and loading). The command is tuning/finetune_cli.py; the settings, tuning/finetune_config.py.

The paper's defaults: lr 6.25e-5, batch 32, 3 epochs, linear warm-up over 0.2% of the updates then
linear decay, classifier dropout 0.1, λ = 0.5. The dev split is evaluated every epoch (or every
`eval_every` steps); the best evaluation's model is kept.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tokenizers import Tokenizer

from model import GPT, GPTConfig, GPTForTask, TaskHead, make_optimizer, make_schedule
from model import build as build_network
from pipeline import errors
from pipeline.console import eta
from pipeline.data.tasks import Example, Task
from pipeline.data.tokenizer import DELIMITER, EXTRACT, START
from pipeline.eval import metrics as metriclib
from pipeline.runtime import autocast, check_device, local_device
from tuning.encode import Encoder, collate
from tuning.finetune_config import FinetuneConfig, check_config, check_out, is_finetune_output  # noqa: F401


@dataclass
class Pretrained:
    """A checkpoint's network and tokenizer as plain data (numpy weights, JSON texts): what a
    sweep puts in Ray's object store once, for every trial to read."""

    config: dict
    weights: dict[str, np.ndarray]
    tokenizer: str

    @classmethod
    def load(cls, checkpoint) -> "Pretrained":
        """From any model directory that GPT.from_pretrained and load_tokenizer read; a training
        checkpoint's files (its tokenizer too) must be the ones its trainer_state.json lists."""
        from pipeline.train.checkpoint import load_model_and_tokenizer

        gpt, tok = load_model_and_tokenizer(checkpoint)
        return cls(gpt.config.to_dict(), {k: v.numpy() for k, v in gpt.state_dict().items()}, tok.to_str())

    def gpt(self) -> GPT:
        gpt = build_network(GPTConfig.from_dict(self.config))
        # Copies: arrays from the object store are read-only views of shared memory.
        gpt.load_state_dict({k: torch.tensor(v) for k, v in self.weights.items()})
        return gpt


@dataclass
class TaskModel:
    model: GPTForTask
    encoder: Encoder
    task: Task


def build(task: Task, pretrained: Pretrained, cfg: FinetuneConfig, from_scratch: bool = False) -> TaskModel:
    tok = Tokenizer.from_str(pretrained.tokenizer)
    gpt = pretrained.gpt()
    torch.manual_seed(cfg.seed)
    if from_scratch:  # the paper's "no pretraining" row: the same network, random weights
        gpt = build_network(gpt.config)
    elif cfg.n_transfer >= 0:
        transfer_blocks(gpt, cfg.n_transfer)
    n_ctx = cfg.n_ctx or gpt.config.n_ctx
    if n_ctx > gpt.config.n_ctx:
        raise errors.ConfigError(f"n_ctx {n_ctx}: the model has positions for {gpt.config.n_ctx}")
    specials = [tok.token_to_id(t) for t in (START, DELIMITER, EXTRACT)]
    if cfg.reinit_special or max(specials) >= gpt.config.vocab_size:
        gpt.draw_token_rows(specials, torch.Generator().manual_seed(cfg.seed))
    encoder = Encoder(tok, task.transformation, n_ctx, gpt.config.vocab_size)
    head = TaskHead(
        gpt.config.n_embd,
        task.transformation,
        n_labels=max(len(task.labels), 1),
        clf_pdrop=cfg.clf_dropout,
        regression=task.regression,
        soft_classes=SOFT_CLASSES if cfg.regression_target == "soft" else 0,
    )
    return TaskModel(GPTForTask(gpt, head, encoder.extract), encoder, task)


def transfer_blocks(gpt: GPT, k: int) -> None:
    """Keep the embeddings and the first k blocks of gpt; the others are drawn afresh (from the
    current torch seed)."""
    if gpt.config.arch != "transformer":
        raise errors.ConfigError(
            f"n_transfer {k}: transferring some layers (Figure 2, left) is defined for the Transformer; "
            f"the checkpoint holds an {gpt.config.arch}"
        )
    if k > gpt.config.n_layer:
        raise errors.ConfigError(
            f"n_transfer {k}: the checkpoint has {gpt.config.n_layer} blocks; "
            f"expected 0 to {gpt.config.n_layer} (or -1 for all)"
        )
    gpt.reinit_blocks(k)


def _device(tm: TaskModel) -> torch.device:
    return next(tm.model.parameters()).device


@torch.no_grad()
def predict(tm: TaskModel, encoded, batch_size: int = 64) -> np.ndarray:
    tm.model.eval()
    device, out = _device(tm), []
    for i in range(0, len(encoded), batch_size):
        ids, mask, _ = collate(encoded[i : i + batch_size], tm.task.regression, tm.encoder.n_ctx)
        with autocast(device):  # bf16 on a GPU, as in pretraining
            logits = tm.model(ids.to(device), mask.to(device)).logits.float().cpu()
        out.append(logits.numpy() if tm.task.regression else logits.argmax(-1).numpy())
    tm.model.train()
    return np.concatenate(out)


def evaluate(tm: TaskModel, encoded, batch_size: int = 64) -> dict[str, float]:
    pred = predict(tm, encoded, batch_size)
    gold = np.array([e.label for e in encoded])
    return metriclib.compute(tm.task.metrics, pred, gold)


# GLUE's submission file names, per test split.
SUBMISSION_NAMES = {
    ("cola", "test"): "CoLA",
    ("sst-2", "test"): "SST-2",
    ("mrpc", "test"): "MRPC",
    ("qqp", "test"): "QQP",
    ("sts-b", "test"): "STS-B",
    ("mnli", "test"): "MNLI-m",
    ("mnli", "test_mismatched"): "MNLI-mm",
    ("qnli", "test"): "QNLI",
    ("rte", "test"): "RTE",
    ("wnli", "test"): "WNLI",
}


def write_predictions(tm: TaskModel, data_dir, out, batch_size: int = 64) -> list[Path]:
    """Predictions on each test split present, as `index<TAB>prediction` under a header (the GLUE
    submission format, its file names): label strings, or scores for regression."""
    written = []
    for split in (s for s in tm.task.splits if s.startswith("test")):
        if not (Path(data_dir) / tm.task.splits[split]).exists():
            continue
        examples = tm.task.load(data_dir, split)
        pred = predict(tm, tm.encoder.encode(examples), batch_size)
        name = SUBMISSION_NAMES.get((tm.task.name, split), f"{tm.task.name}-{split}")
        path = Path(out) / f"{name}.tsv"
        rows = [
            f"{e.index}\t{p:.3f}" if tm.task.regression else f"{e.index}\t{tm.task.labels[int(p)]}"
            for e, p in zip(examples, pred)
        ]
        path.write_text("index\tprediction\n" + "\n".join(rows) + "\n")
        written.append(path)
    return written


# Tasks whose test labels are public: the paper's Tables 2 and 3 report their test accuracy.
PUBLIC_TEST_LABELS = ("snli", "scitail", "race", "story-cloze")
TRAIN_SAMPLE = 1000  # training examples scored at each new best, for the train metric
# RACE's two parts, by the directory each article came from (Example.index "middle/...").
RACE_LEVELS = ("middle", "high")


def extra_sets(task: Task, data_dir) -> dict[str, list[Example]]:
    """The labelled evaluations besides dev that the paper's tables report, where the data holds
    them: MNLI's mismatched dev ("mismatched"), and the test split of a task whose test labels
    are public ("test"). GLUE's own test splits have no labels and stay submission files."""
    out = {}
    for split, f in task.splits.items():
        if split in ("train", "dev") or not (Path(data_dir) / f).exists():
            continue
        if split.startswith("test") and task.name not in PUBLIC_TEST_LABELS:
            continue
        out[split.removeprefix("dev_")] = task.load(data_dir, split)
    return out


# The names evaluate_extra gives its metrics, before _<metric>.
EXTRA_NAMES = (
    "train",
    "mismatched",
    "test",
    "test_mismatched",
    *RACE_LEVELS,
    *(f"test_{lv}" for lv in RACE_LEVELS),
)


def is_extra(key: str, metrics) -> bool:
    """Whether a result key is one of evaluate_extra's (test_accuracy, middle_accuracy, ...)."""
    return any(key == f"{name}_{m}" for name in EXTRA_NAMES for m in metrics)


def parts(examples: list[Example]) -> dict[str, list[int]]:
    """RACE's middle and high school parts of a split (by each question's article directory)."""
    groups = {
        level: [i for i, e in enumerate(examples) if str(e.index).startswith(level + "/")]
        for level in RACE_LEVELS
    }
    return {level: idx for level, idx in groups.items() if idx} if all(groups.values()) else {}


SOFT_CLASSES = 6  # regression_target soft: STS-B's integer scores 0-5, as the release encodes them

# The release's protocol for Story Cloze, which has no training set: it trains on the 1,871
# validation stories but 374 (20%) held out for model selection (datasets.py, n_valid=374).
HOLD_OUT = 0.2


def load_splits(task: Task, data_dir, max_train: int = 0) -> dict[str, list[Example]]:
    """The train (its first max_train examples, if set) and dev splits of a task's directory,
    and under "extra" the other labelled evaluations (extra_sets). A task released without a dev
    split (Story Cloze) holds out HOLD_OUT of its training examples (chosen by a seeded
    permutation) for model selection."""
    train = task.load(data_dir, "train")
    if "dev" in task.splits:
        dev = task.load(data_dir, "dev")
    else:
        order = np.random.default_rng(0).permutation(len(train))
        n_dev = max(1, round(len(train) * HOLD_OUT))
        dev, train = [train[i] for i in sorted(order[:n_dev])], [train[i] for i in sorted(order[n_dev:])]
    return {
        "train": train[:max_train] if max_train else train,
        "dev": dev,
        "extra": extra_sets(task, data_dir),
    }


def evaluate_extra(tm: TaskModel, sets: dict, batch_size: int = 64) -> dict[str, float]:
    """The metrics of each (name, examples, encoded) set as <name>_<metric>, and of RACE's parts
    as <name>_<level>_<metric> (dev's as <level>_<metric>)."""
    out = {}
    for name, (examples, encoded) in sets.items():
        pred = predict(tm, encoded, batch_size)
        gold = np.array([e.label for e in encoded])
        prefix = "" if name == "dev" else f"{name}_"
        if name != "dev":
            out.update({f"{prefix}{m}": v for m, v in metriclib.compute(tm.task.metrics, pred, gold).items()})
        for level, idx in (parts(examples) if name != "train" else {}).items():
            scores = metriclib.compute(tm.task.metrics, pred[idx], gold[idx])
            out.update({f"{prefix}{level}_{m}": v for m, v in scores.items()})
    return out


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
            ids, mask, labels = collate(batch, task.regression, tm.encoder.n_ctx)
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


def rank(metric: float) -> float:
    """A dev metric as a sort key: NaN (a correlation of constant predictions, say) ranks below
    every number, so the first evaluation is always a best, and a later number beats it."""
    return -math.inf if math.isnan(metric) else metric


def save(tm: TaskModel, out) -> None:
    """A model directory (the GPT, loadable alone) plus head.safetensors and task.json, written
    beside out and swapped in whole."""
    from pipeline import outdir

    out = Path(out)
    tmp = outdir.sibling(out, "tmp")
    try:
        _write_model(tm, tmp)
        outdir.swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_task_model(d: Path, device: str = "cpu") -> TaskModel:
    """A directory that finetune wrote (is_finetune_output), in evaluation mode on device: the
    network, its head, and the task's transformation and labels from task.json."""
    from safetensors.torch import load_file

    from model import from_pretrained
    from pipeline.data.tokenizer import load_tokenizer
    from tuning.inputs import task_of

    d = Path(d)
    if not is_finetune_output(d):
        raise errors.UserError(
            f"{d}: not a fine-tuned model (expected task.json and head.safetensors beside the "
            "model, as gpt1 finetune and gpt1 sweep write them)"
        )
    task = task_of(d)
    gpt, tok = from_pretrained(d), load_tokenizer(d / "tokenizer.json")
    n_ctx = json.loads((d / "task.json").read_text()).get("n_ctx", gpt.config.n_ctx)
    encoder = Encoder(tok, task.transformation, n_ctx, gpt.config.vocab_size)
    head = TaskHead(
        gpt.config.n_embd,
        task.transformation,
        n_labels=max(len(task.labels), 1),
        regression=task.regression,
        soft_classes=json.loads((d / "task.json").read_text()).get("soft_classes", 0),
    )
    head.load_state_dict(load_file(str(d / "head.safetensors")))
    model = GPTForTask(gpt, head, encoder.extract).to(device).eval()
    return TaskModel(model, encoder, task)


def _write_model(tm: TaskModel, tmp: Path) -> None:
    from safetensors.torch import save_file

    tm.model.gpt.save_pretrained(tmp)
    tm.encoder.tok.save(str(tmp / "tokenizer.json"))
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tm.model.head.state_dict().items()},
        str(tmp / "head.safetensors"),
    )
    (tmp / "task.json").write_text(
        json.dumps(
            {
                "task": tm.task.name,
                "transformation": tm.task.transformation,
                "labels": list(tm.task.labels),
                "regression": tm.task.regression,
                "soft_classes": tm.model.head.soft_classes,
                "n_ctx": tm.encoder.n_ctx,
            },
            indent=2,
        )
        + "\n"
    )
