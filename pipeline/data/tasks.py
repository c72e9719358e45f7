"""The paper's tasks: how each is read from its public release, its transformation, labels and
metrics.

Every reader returns Examples: `text` holds the segments the transformation joins (one for
classification, two for entailment and similarity, the context for multiple choice), `choices`
the candidates of multiple choice, `label` an index into the task's labels (a float for
regression; None on a test split), and `index` the row's id for a submission file.

A malformed input is a TaskError naming the file and line; nothing is guessed. GLUE files are
read by their header's column names, so a headerless copy of a file that has a header is
refused rather than misread; CoLA's train and dev files have no header in the release, and are
read by position with every row checked.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from model import TRANSFORMATIONS
from pipeline.data.text import normalize
from pipeline.errors import UserError

csv.field_size_limit(sys.maxsize)

# The longest text a row may hold. The model reads n_ctx tokens (a few thousand characters) of
# it; a longer text only costs memory in the tokenizer (~100 bytes a token), so a 50 MB row is
# refused by its line, not tokenized.
MAX_TEXT_CHARS = 1 << 20


class TaskError(UserError):
    """A task file that does not have the layout of its release: one line, exit status 2."""


@dataclass
class Example:
    text: tuple[str, ...]
    label: int | float | None
    index: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    name: str
    transformation: str  # classification, entailment, similarity, multiple_choice
    labels: tuple[str, ...]  # the label strings of the files, in index order; () for regression
    metrics: tuple[str, ...]
    splits: dict  # split name -> file name (or directory, for RACE)
    read: Callable[[Task, Path, str], list[Example]] = field(repr=False, compare=False, default=None)

    @property
    def regression(self) -> bool:
        return not self.labels and self.transformation != "multiple_choice"

    def load(self, directory, split: str) -> list[Example]:
        if split not in self.splits:
            raise TaskError(f"{self.name}: no split {split!r}; expected one of {', '.join(self.splits)}")
        path = Path(directory) / self.splits[split]
        if not path.exists():
            raise TaskError(f"{path}: no such file; expected the {self.name} {split} split there")
        try:
            examples = self.read(self, path, split)
        except UnicodeDecodeError as err:
            raise TaskError(
                f"{path}: not UTF-8 text (byte {err.object[err.start : err.start + 1]!r} at offset "
                f"{err.start:,}); convert it, e.g. `iconv -f latin1 -t utf-8`"
            ) from None
        if not examples:
            raise TaskError(f"{path}: holds no examples")
        return examples


def _label(task: Task, raw: str, where: str) -> int | float:
    if task.regression:
        try:
            return float(raw)
        except ValueError:
            raise TaskError(f"{where}: label {raw!r} is not a number") from None
    if raw not in task.labels:
        raise TaskError(f"{where}: label {raw!r} is not one of {', '.join(task.labels)}")
    return task.labels.index(raw)


def _text(raw: str, where: str, column: str) -> str:
    text = raw.strip()
    if len(text) > MAX_TEXT_CHARS:
        raise TaskError(
            f"{where}: {column} holds {len(text):,} characters; expected at most {MAX_TEXT_CHARS:,} "
            "(the model reads its first few thousand): is the row's quoting or line ending broken?"
        )
    if not normalize(text):  # control characters alone (NUL bytes, say) are nothing once normalised
        raise TaskError(f"{where}: {column} is empty" + (" (only control characters)" if text else ""))
    return text


def _tsv_rows(path: Path):
    """(line number, fields) of a TSV read as the GLUE files are written: tabs, no quoting."""
    with open(path, encoding="utf-8", newline="") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line:
                yield n, line.split("\t")


def _csv_rows(path: Path):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        for fields in reader:
            if fields:
                yield reader.line_num, fields


def read_with_header(
    text_columns: tuple[str, ...], label_column: str, index_column: str | None = None, rows=_tsv_rows
):
    """A reader for a TSV (or, with rows=_csv_rows, a CSV) with a header that names text_columns
    (and label_column, except on a test split). Rows must have as many fields as the header."""

    def read(task: Task, path: Path, split: str) -> list[Example]:
        rows_ = rows(path)
        try:
            _, header = next(rows_)
        except StopIteration:
            raise TaskError(f"{path}: empty file") from None
        test = split.startswith("test")
        need = list(text_columns) + ([] if test else [label_column])
        missing = [c for c in need if c not in header]
        if missing:
            raise TaskError(
                f"{path}:1: expected a header naming {', '.join(need)} (the {task.name} "
                f"release's layout); found {header[:6]}; a file without its header is not read"
            )
        cols = [header.index(c) for c in text_columns]
        lab = None if test else header.index(label_column)
        idx = header.index(index_column) if index_column and index_column in header else None
        out = []
        for n, fields in rows_:
            where = f"{path}:{n}"
            if len(fields) != len(header):
                raise TaskError(f"{where}: {len(fields)} fields; the header has {len(header)}")
            text = tuple(_text(fields[c], where, name) for c, name in zip(cols, text_columns, strict=True))
            label = None if lab is None else _label(task, fields[lab].strip(), where)
            out.append(Example(text, label, fields[idx] if idx is not None else str(len(out))))
        return out

    return read


def read_by_position(title: str, layout: tuple[str, ...], text_columns: tuple[str, ...], label_column: str):
    """A reader for a TSV without a header (CoLA's train/dev, SciTail's TSV release): every row
    must have the fields that layout names, in that order."""
    n_fields, cols = len(layout), [layout.index(c) for c in text_columns]

    def read(task: Task, path: Path, split: str) -> list[Example]:
        out = []
        for n, fields in _tsv_rows(path):
            where = f"{path}:{n}"
            if len(fields) != n_fields:
                raise TaskError(
                    f"{where}: {len(fields)} tab-separated fields; {title}'s {split} rows have "
                    f"{n_fields} ({', '.join(layout)}) and no header"
                )
            text = tuple(_text(fields[i], where, name) for i, name in zip(cols, text_columns, strict=True))
            out.append(Example(text, _label(task, fields[layout.index(label_column)], where), str(len(out))))
        return out

    return read


def read_cola(task: Task, path: Path, split: str) -> list[Example]:
    """CoLA's train/dev files have no header: source, label, original mark, sentence."""
    if split.startswith("test"):
        return read_with_header(("sentence",), "label", "index")(task, path, split)
    return _COLA(task, path, split)


_COLA = read_by_position("CoLA", ("source", "label", "original mark", "sentence"), ("sentence",), "label")


def read_jsonl(text_fields: tuple[str, ...], label_field: str, skip_labels: tuple[str, ...] = ()):
    """JSON Lines with one example per line (SNLI, SciTail's SNLI-format release). Rows whose
    label is in skip_labels (SNLI's '-': no annotator majority) are left out, as is usual, and
    counted by the caller from the file's length."""

    def read(task: Task, path: Path, split: str) -> list[Example]:
        out = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise TaskError(f"{where}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict) or any(k not in row for k in (*text_fields, label_field)):
                    raise TaskError(
                        f"{where}: expected an object with {', '.join((*text_fields, label_field))}"
                    )
                if row[label_field] in skip_labels:
                    continue
                text = tuple(_text(str(row[k]), where, k) for k in text_fields)
                out.append(
                    Example(
                        text, _label(task, str(row[label_field]), where), str(row.get("pairID", len(out)))
                    )
                )
        return out

    return read


def read_story_cloze(task: Task, path: Path, split: str) -> list[Example]:
    """The Story Cloze CSV: InputSentence1..4, RandomFifthSentenceQuiz1/2, AnswerRightEnding (1|2)."""
    need = [f"InputSentence{i}" for i in range(1, 5)] + [
        "RandomFifthSentenceQuiz1",
        "RandomFifthSentenceQuiz2",
        "AnswerRightEnding",
    ]
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or any(c not in header for c in need):
            raise TaskError(f"{path}:1: expected a header naming {', '.join(need)}")
        col = {c: header.index(c) for c in need}
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row:
                continue
            if len(row) != len(header):
                raise TaskError(f"{where}: {len(row)} fields; the header has {len(header)}")
            story = " ".join(
                _text(row[col[f"InputSentence{i}"]], where, f"InputSentence{i}") for i in range(1, 5)
            )
            endings = tuple(_text(row[col[c]], where, c) for c in need[4:6])
            answer = row[col["AnswerRightEnding"]].strip()
            if answer not in ("1", "2"):
                raise TaskError(f"{where}: AnswerRightEnding {answer!r}; expected 1 or 2")
            sid = row[header.index("InputStoryid")] if "InputStoryid" in header else str(len(out))
            out.append(Example((story,), int(answer) - 1, sid, endings))
    return out


def read_race(task: Task, path: Path, split: str) -> list[Example]:
    """RACE: a directory of middle/ and high/ articles, one JSON per file, each with article,
    questions, options (4 per question) and answers (A-D). Text = (article, question): the
    encoder cuts the article alone, so that the question stays whole."""
    files = sorted(p for level in ("middle", "high") for p in (path / level).glob("*") if p.is_file())
    if not files:
        raise TaskError(f"{path}: expected middle/ and high/ holding one JSON file per article")
    out = []
    for p in files:
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise TaskError(f"{p}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(doc, dict) or any(
            k not in doc for k in ("article", "questions", "options", "answers")
        ):
            raise TaskError(f"{p}: expected article, questions, options and answers")
        if not len(doc["questions"]) == len(doc["options"]) == len(doc["answers"]):
            raise TaskError(
                f"{p}: {len(doc['questions'])} questions, {len(doc['options'])} option lists "
                f"and {len(doc['answers'])} answers; expected one each per question"
            )
        article = _text(doc["article"], str(p), "article")
        for q, (question, options, answer) in enumerate(
            zip(doc["questions"], doc["options"], doc["answers"], strict=False)
        ):
            where = f"{p} (question {q + 1})"
            if len(options) != 4:
                raise TaskError(f"{where}: {len(options)} options; expected 4")
            out.append(
                Example(
                    (article, _text(question, where, "question")),
                    _label(task, answer, where),
                    f"{p.parent.name}/{p.name}/{q}",
                    tuple(_text(o, where, "option") for o in options),
                )
            )
    return out


_GLUE_TEST = {"test": "test.tsv"}
TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "cola",
            "classification",
            ("0", "1"),
            ("matthews", "accuracy"),
            {"train": "train.tsv", "dev": "dev.tsv", **_GLUE_TEST},
            read_cola,
        ),
        Task(
            "sst-2",
            "classification",
            ("0", "1"),
            ("accuracy",),
            {"train": "train.tsv", "dev": "dev.tsv", **_GLUE_TEST},
            read_with_header(("sentence",), "label", "index"),
        ),
        Task(
            "mrpc",
            "similarity",
            ("0", "1"),
            ("f1", "accuracy"),
            {"train": "train.tsv", "dev": "dev.tsv", **_GLUE_TEST},
            read_with_header(("#1 String", "#2 String"), "Quality", "index"),
        ),
        Task(
            "qqp",
            "similarity",
            ("0", "1"),
            ("f1", "accuracy"),
            {"train": "train.tsv", "dev": "dev.tsv", **_GLUE_TEST},
            read_with_header(("question1", "question2"), "is_duplicate", "id"),
        ),
        Task(
            "sts-b",
            "similarity",
            (),
            ("pearson", "spearman"),
            {"train": "train.tsv", "dev": "dev.tsv", **_GLUE_TEST},
            read_with_header(("sentence1", "sentence2"), "score", "index"),
        ),
        Task(
            "mnli",
            "entailment",
            ("contradiction", "entailment", "neutral"),
            ("accuracy",),
            {
                "train": "train.tsv",
                "dev": "dev_matched.tsv",
                "dev_mismatched": "dev_mismatched.tsv",
                "test": "test_matched.tsv",
                "test_mismatched": "test_mismatched.tsv",
            },
            read_with_header(("sentence1", "sentence2"), "gold_label", "index"),
        ),
        Task(
            "qnli",
            "entailment",
            ("entailment", "not_entailment"),
            ("accuracy",),
            {"train": "train.tsv", "dev": "dev.tsv", **_GLUE_TEST},
            read_with_header(("question", "sentence"), "label", "index"),
        ),
        Task(
            "rte",
            "entailment",
            ("entailment", "not_entailment"),
            ("accuracy",),
            {"train": "train.tsv", "dev": "dev.tsv", **_GLUE_TEST},
            read_with_header(("sentence1", "sentence2"), "label", "index"),
        ),
        Task(
            "wnli",
            "entailment",
            ("0", "1"),
            ("accuracy",),
            {"train": "train.tsv", "dev": "dev.tsv", **_GLUE_TEST},
            read_with_header(("sentence1", "sentence2"), "label", "index"),
        ),
        Task(
            "snli",
            "entailment",
            ("contradiction", "entailment", "neutral"),
            ("accuracy",),
            {"train": "snli_1.0_train.jsonl", "dev": "snli_1.0_dev.jsonl", "test": "snli_1.0_test.jsonl"},
            read_jsonl(("sentence1", "sentence2"), "gold_label", skip_labels=("-",)),
        ),
        Task(
            "scitail",
            "entailment",
            ("entails", "neutral"),
            ("accuracy",),
            {"train": "scitail_1.0_train.tsv", "dev": "scitail_1.0_dev.tsv", "test": "scitail_1.0_test.tsv"},
            # Its tsv_format release: premise, hypothesis, label (entails / neutral), no header.
            read_by_position(
                "SciTail", ("premise", "hypothesis", "label"), ("premise", "hypothesis"), "label"
            ),
        ),
        Task(
            "race",
            "multiple_choice",
            ("A", "B", "C", "D"),
            ("accuracy",),
            {"train": "train", "dev": "dev", "test": "test"},
            read_race,
        ),
        Task(
            "story-cloze",
            "multiple_choice",
            ("1", "2"),
            ("accuracy",),
            # The paper trains on the 2016 validation set; hold out part of it for model selection.
            {"train": "cloze_test_val__spring2016.csv", "test": "cloze_test_test__spring2016.csv"},
            read_story_cloze,
        ),
    ]
}
GLUE = ("cola", "sst-2", "mrpc", "qqp", "sts-b", "mnli", "qnli", "rte", "wnli")


def get(name: str) -> Task:
    key = name.lower()
    if key not in TASKS:
        raise TaskError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}, or a generic task")
    return TASKS[key]


def generic(
    name: str,
    transformation: str,
    text_columns: tuple[str, ...],
    label_column: str,
    labels: tuple[str, ...],
    files: dict[str, str],
) -> Task:
    """A task of the user's own, from TSV/CSV/JSONL files with the named columns."""
    if transformation not in TRANSFORMATIONS:
        raise TaskError(f"transformation {transformation!r}: expected one of {', '.join(TRANSFORMATIONS)}")
    expected = {"classification": 1, "entailment": 2, "similarity": 2}.get(transformation)
    if expected and len(text_columns) != expected:
        raise TaskError(f"{transformation} takes {expected} text column(s); got {len(text_columns)}")

    def read(task: Task, path: Path, split: str) -> list[Example]:
        if path.suffix == ".jsonl":
            examples = read_jsonl(text_columns, label_column)(task, path, split)
        else:
            examples = read_with_header(
                text_columns, label_column, rows=_csv_rows if path.suffix == ".csv" else _tsv_rows
            )(task, path, split)
        if transformation == "multiple_choice":  # the first column is the context, the rest the choices
            examples = [Example(e.text[:1], e.label, e.index, e.text[1:]) for e in examples]
        return examples

    return Task(
        name,
        transformation,
        tuple(labels),
        ("accuracy",) if labels else ("pearson", "spearman"),
        dict(files),
        read,
    )


def from_directory(name: str, directory) -> Task:
    """A task by name: a registered one (its files in directory), or a generic one that
    directory/task.yaml describes (transformation, text_columns, label_column, labels, files)."""
    if name.lower() in TASKS:
        return TASKS[name.lower()]
    spec_path = Path(directory) / "task.yaml"
    if not spec_path.exists():
        raise TaskError(
            f"unknown task {name!r}: not one of {', '.join(TASKS)}, and {spec_path} does not exist "
            f"(a task of your own needs a task.yaml naming its transformation, text_columns, "
            f"label_column, labels and files)"
        )
    import yaml

    try:
        spec = yaml.safe_load(spec_path.read_text())
    except yaml.YAMLError as err:
        raise TaskError(f"{spec_path}: not valid YAML ({str(err).splitlines()[0]})") from None
    keys = ("transformation", "text_columns", "label_column", "labels", "files")
    if not isinstance(spec, dict) or sorted(spec) != sorted(keys):
        raise TaskError(f"{spec_path}: expected exactly the keys {', '.join(keys)}")
    return generic(
        name,
        spec["transformation"],
        tuple(spec["text_columns"]),
        spec["label_column"],
        tuple(str(x) for x in spec["labels"]),
        spec["files"],
    )
