"""The paper's numbers (Radford et al., 2018), in one place, with the table and row each comes from:
what `gpt1 report` sets ours beside. Percentages, as the paper prints them; test-set numbers except
where the paper says otherwise (Table 4's GLUE tasks are test-server scores). Table 5 names no
split; its full row equals Tables 2-4's test-server figures (its MNLI 81.8 the mean of matched
82.1 and mismatched 81.4), so its numbers are read as those, not as dev scores.

A column is (task, metric): the task as pipeline/data/tasks.py names it, the metric as the
sweep logs it (best_<metric>, ablation_<row>_<metric>), and `split` for the MNLI and RACE
columns that score one part of a task's evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    label: str  # the paper's column heading
    task: str
    metric: str
    part: str = ""  # a part of the task's evaluation: MNLI's mismatched dev, RACE's middle or high


# Table 2: natural language inference. Ours: "Finetuned Transformer LM (ours)".
TABLE2 = {
    Column("MNLI-m", "mnli", "accuracy"): 82.1,
    Column("MNLI-mm", "mnli", "accuracy", "mismatched"): 81.4,
    Column("SNLI", "snli", "accuracy"): 89.9,
    Column("SciTail", "scitail", "accuracy"): 88.3,
    Column("QNLI", "qnli", "accuracy"): 88.1,
    Column("RTE", "rte", "accuracy"): 56.0,
}
# Table 3: question answering and commonsense reasoning.
TABLE3 = {
    Column("Story Cloze", "story-cloze", "accuracy"): 86.5,
    Column("RACE-m", "race", "accuracy", "middle"): 62.9,
    Column("RACE-h", "race", "accuracy", "high"): 57.4,
    Column("RACE", "race", "accuracy"): 59.0,
}
# Table 4: semantic similarity and classification (GLUE test server), and the GLUE score.
TABLE4 = {
    Column("CoLA (mc)", "cola", "matthews"): 45.4,
    Column("SST2 (acc)", "sst-2", "accuracy"): 91.3,
    Column("MRPC (F1)", "mrpc", "f1"): 82.3,
    Column("STSB (pc)", "sts-b", "pearson"): 82.0,
    Column("QQP (F1)", "qqp", "f1"): 70.3,
}
GLUE_SCORE = 72.8  # Table 4's last column: over all nine GLUE tasks, from the test server

# Table 5: "Analysis of various model ablations on different tasks", each row the paper's, keyed as
# the sweep names its rows. The paper names no split; its full row is Tables 2-4's test figures.
TABLE5_COLUMNS = (
    Column("CoLA (mc)", "cola", "matthews"),
    Column("SST2 (acc)", "sst-2", "accuracy"),
    Column("MRPC (F1)", "mrpc", "f1"),
    Column("STSB (pc)", "sts-b", "pearson"),
    Column("QQP (F1)", "qqp", "f1"),
    Column("MNLI (acc)", "mnli", "accuracy"),
    Column("QNLI (acc)", "qnli", "accuracy"),
    Column("RTE (acc)", "rte", "accuracy"),
)
# The sweep's key for MNLI's dev metric averaged over matched and mismatched, as Table 5's cell is
# (ablation_<row>_matched_mismatched_accuracy on a sweep's parent).
MEAN_M_MM = "matched_mismatched"
TABLE5_ROWS = {
    # row: (the paper's name, its Avg. Score, its eight cells in TABLE5_COLUMNS order)
    "full": ("Transformer w/ aux LM (full)", 74.7, (45.4, 91.3, 82.3, 82.0, 70.3, 81.8, 88.1, 56.0)),
    "no_pretraining": (
        "Transformer w/o pre-training",
        59.9,
        (18.9, 84.0, 79.4, 30.9, 65.5, 75.7, 71.2, 53.8),
    ),
    "no_aux_lm": ("Transformer w/o aux LM", 75.0, (47.9, 92.0, 84.9, 83.2, 69.8, 81.1, 86.9, 54.4)),
    # The paper prints 69.1 as this row's average; its eight cells average 69.16.
    "lstm": ("LSTM w/ aux LM", 69.1, (30.3, 90.5, 83.2, 71.8, 68.1, 73.7, 81.1, 54.6)),
}

# Figure 2 (right) normalises each zero-shot heuristic between random guessing (0) and the state
# of the art (1). The state of the art is the best earlier result in the paper's own tables
# (Table 4: CoLA's single-task BiLSTM + ELMo + Attn, SST-2's sparse byte mLSTM; Table 3: RACE's
# BiAttention MRU, an ensemble of 9, not a single model); for DPRD the paper names none, so it is
# drawn against perfect accuracy (1.0). ZERO_SHOT_SOTA_FROM says so where the figure is drawn.
ZERO_SHOT_SOTA = {
    ("cola", "matthews"): 0.350,
    ("sst-2", "accuracy"): 0.932,
    ("race", "accuracy"): 0.533,
    ("wsc", "accuracy"): 1.0,
    ("dprd", "accuracy"): 1.0,
}
ZERO_SHOT_SOTA_FROM = {
    "cola": "Table 4's BiLSTM + ELMo + Attn, single task",
    "sst-2": "Table 4's sparse byte mLSTM",
    "race": "Table 3's BiAttention MRU, an ensemble of 9",
    "wsc": "perfect accuracy: the paper names none",
    "dprd": "perfect accuracy: the paper names none",
}
