"""Fine-tuning's evaluation: a task model's predictions and metrics on encoded examples, the splits a
task's directory holds (dev held out where the release has none), the other labelled sets the
paper's tables report (MNLI mismatched, public test labels, RACE's parts), GLUE's submission
files, and how a dev metric ranks (NaN last).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from model.config import bucketed
from pipeline.data.tasks import Example, Task
from pipeline.eval import metrics as metriclib
from pipeline.runtime import autocast
from tuning.encode import collate
from tuning.task_model import TaskModel, _device


@torch.no_grad()
def predict(tm: TaskModel, encoded, batch_size: int = 64) -> np.ndarray:
    tm.model.eval()
    device, out = _device(tm), []
    for i in range(0, len(encoded), batch_size):
        ids, mask, _ = collate(
            encoded[i : i + batch_size], tm.task.regression, bucketed(tm.encoder.n_ctx, device)
        )
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
            for e, p in zip(examples, pred, strict=True)
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


def rank(metric: float) -> float:
    """A dev metric as a sort key: NaN (a correlation of constant predictions, say) ranks below
    every number, so the first evaluation is always a best, and a later number beats it."""
    return -math.inf if math.isnan(metric) else metric
