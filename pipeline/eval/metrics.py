"""The paper's task metrics: accuracy; F1 (MRPC, QQP); Pearson and Spearman (STS-B); Matthews
correlation (CoLA). Plain numpy, written out so that each can be checked by hand."""

from __future__ import annotations

import numpy as np


def accuracy(pred, gold) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    return float((pred == gold).mean()) if len(gold) else float("nan")


def f1(pred, gold, positive: int = 1) -> float:
    """F1 of the positive class: 2PR / (P + R); 0 when nothing is predicted or gold positive."""
    pred, gold = np.asarray(pred) == positive, np.asarray(gold) == positive
    tp = int((pred & gold).sum())
    denom = int(pred.sum()) + int(gold.sum())
    return 2 * tp / denom if denom else 0.0


def matthews(pred, gold) -> float:
    """Matthews correlation of two binary labelings; 0 where it is undefined (a constant side)."""
    pred, gold = np.asarray(pred) == 1, np.asarray(gold) == 1
    tp, tn = int((pred & gold).sum()), int((~pred & ~gold).sum())
    fp, fn = int((pred & ~gold).sum()), int((~pred & gold).sum())
    denom = np.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    return pearson(_ranks(np.asarray(x, float)), _ranks(np.asarray(y, float)))


METRICS = {"accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson, "spearman": spearman}


def compute(names, pred, gold) -> dict[str, float]:
    return {n: METRICS[n](pred, gold) for n in names}
