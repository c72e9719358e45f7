"""What a fine-tuned model reads and says, outside its task's files: one row of named fields (a
table's, or a request's JSON) to the Example the task's transformation takes, and a prediction
back to columns. Shared by `gpt1 predict` and `gpt1 serve`, so that both encode a row exactly
as fine-tuning encoded its examples (tuning/encode.py).

    classification   sentence
    entailment       premise, hypothesis
    similarity       sentence1, sentence2
    multiple choice  context, candidates (a list; in a CSV or TSV cell, a JSON list)

--columns names other fields, in that order. A row that lacks a field, or whose candidates are
not a list of texts, is a BadRow naming the field: the caller decides what becomes of it.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.data.tasks import MAX_TEXT_CHARS, Example, Task

FIELDS = {
    "classification": ("sentence",),
    "entailment": ("premise", "hypothesis"),
    "similarity": ("sentence1", "sentence2"),
    "multiple_choice": ("context", "candidates"),
}


class BadRow(ValueError):
    """A row the task's transformation cannot read; its text says which field and why."""


def fields_of(transformation: str, columns: list[str] | None = None) -> tuple[str, ...]:
    """The row fields a transformation reads: --columns where given (as many as it needs)."""
    want = FIELDS[transformation]
    if columns:
        if len(columns) != len(want):
            raise ValueError(
                f"--columns {','.join(columns)}: a {transformation} task reads {len(want)} field(s) "
                f"({', '.join(want)}); name that many"
            )
        return tuple(columns)
    return want


def visible(c: str) -> bool:
    """Whether c is text a model reads: not a space and not a control, format or unassigned
    character (which normalisation drops, leaving a row of them nothing to classify)."""
    return not c.isspace() and unicodedata.category(c)[0] != "C"


def _text(row: dict, field: str) -> str:
    value = row.get(field)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise BadRow(f"no {field!r}")
    if not isinstance(value, str):
        raise BadRow(f"{field!r} is a {type(value).__name__}, expected text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate, as JSON's "\\ud800" gives
        raise BadRow(f"{field!r} is not valid Unicode (character {err.start} is a lone surrogate)") from None
    if not value.strip():
        raise BadRow(f"{field!r} is empty")
    if not any(visible(c) for c in value):
        raise BadRow(f"{field!r} is empty (control characters only)")
    if len(value) > MAX_TEXT_CHARS:
        raise BadRow(f"{field!r} holds {len(value):,} characters, more than {MAX_TEXT_CHARS:,}")
    return value


def example_of(
    row: dict, transformation: str, fields: tuple[str, ...], n_choices: int | None = None
) -> Example:
    """The Example of one row; BadRow where a field is missing or not what it should be (for
    multiple choice, n_choices candidates where the model was trained on that many)."""
    if transformation != "multiple_choice":
        return Example(tuple(_text(row, f) for f in fields), None, "")
    context, candidates = _text(row, fields[0]), row.get(fields[1])
    if isinstance(candidates, str):  # a CSV or TSV cell
        try:
            candidates = json.loads(candidates)
        except ValueError:
            raise BadRow(f"{fields[1]!r} is not a JSON list of texts") from None
    if isinstance(candidates, np.ndarray):  # Parquet and pandas give lists as arrays
        candidates = candidates.tolist()
    if not isinstance(candidates, list) or len(candidates) < 2:
        raise BadRow(f"{fields[1]!r}: expected a list of at least two candidate texts")
    if n_choices and len(candidates) != n_choices:
        raise BadRow(
            f"{fields[1]!r} holds {len(candidates)} candidates; the model was fine-tuned on {n_choices}"
        )
    texts = tuple(_text({f"{fields[1]}[{i}]": c}, f"{fields[1]}[{i}]") for i, c in enumerate(candidates))
    return Example((context,), None, "", texts)


@dataclass
class Prediction:
    label: str | int | float  # the label's string; the chosen candidate's index; the score
    probabilities: list[float] | None  # per class, or per candidate; None for regression


def predictions(task: Task, logits: torch.Tensor) -> list[Prediction]:
    """A batch of the head's outputs as what a user reads."""
    if task.regression:
        return [Prediction(float(v), None) for v in logits.float().reshape(-1).tolist()]
    probs = logits.float().softmax(-1).tolist()
    if task.transformation == "multiple_choice":
        return [Prediction(int(np.argmax(p)), p) for p in probs]
    return [Prediction(task.labels[int(np.argmax(p))], p) for p in probs]


def task_of(model_dir: Path) -> Task:
    """The Task a fine-tuned model directory was trained on, from its task.json."""
    meta = json.loads((Path(model_dir) / "task.json").read_text())
    return Task(meta["task"], meta["transformation"], tuple(meta["labels"]), (), {})
