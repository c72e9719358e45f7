"""A registered model's card: what it is, how good, where it came from, and how to feed it. Written
as README.md beside the model and as the MLflow model version's description, by the sweep that
registers it.

It holds the task, the dev metric (with the ablation rows' mean ± std over their seeds), the
lineage (corpus -> dataset -> pretrain run -> trial, from the runs' tags), the input fields
`gpt1 predict` and `gpt1 serve` read, and the deliberate deviations from the released code (the
ledger in docs/finetune.md, as `gpt1 report` ends with).
"""

from __future__ import annotations

import json

from tuning.inputs import FIELDS

# The lineage a card lists, by the tag that holds each link, in the order the data flowed.
LINEAGE = (
    ("prepare run (its manifest.json names the corpus)", "prepare_run_id"),
    ("dataset", "dataset"),
    ("dataset fingerprint", "data_fingerprint"),
    ("pretrain run", "pretrain_run_id"),
    ("checkpoint", "checkpoint"),
    ("checkpoint sha256", "checkpoint_sha256"),
    ("tokenizer sha256", "tokenizer_sha256"),
)


def model_card(
    name: str,
    version: str,
    task,
    metric: str,
    value: float,
    trial_run_id: str,
    tags: dict,
    ablations: list[dict],
    deviations: list[str],
) -> str:
    """The card as markdown. `tags`: the trial run's (and its pretrain run's) lineage tags;
    `ablations`: ablation_summary's rows (ablation, mean, std, seeds)."""
    fields = FIELDS[task.transformation]
    # The best trial's score is selected on the dev set it is measured on: its settings' spread
    # over seeds (the ablations' full row) says how much of it is luck.
    full = next((r for r in ablations if r["ablation"] == "full"), None)
    spread = (
        f" Its settings over {full['seeds']} seeds: {full['mean']:.4f} ± {full['std']:.4f} (mean ± std)."
        if full
        else ""
    )
    lines = [
        f"# {name} version {version}",
        "",
        f"GPT-1 (Radford et al. 2018) fine-tuned on **{task.name}** ({task.transformation}), the best "
        f"trial of its sweep: dev {metric} **{value:.4f}**, chosen on that same dev set.{spread}",
        "",
        "## Lineage",
        "",
        *[f"- {what}: `{tags[key]}`" for what, key in LINEAGE if tags.get(key)],
        f"- trial run: `{trial_run_id}`",
        *[
            f"- data sha256 ({k.split('.', 1)[1]}): `{v}`"
            for k, v in sorted(tags.items())
            if k.startswith("data_sha256.")
        ],
    ]
    if ablations:
        lines += [
            "",
            f"## Ablations (dev {metric}, mean ± std over seeds)",
            "",
            "| row | mean | std | seeds |",
            "|---|---:|---:|---:|",
            *[f"| {r['ablation']} | {r['mean']:.4f} | {r['std']:.4f} | {r['seeds']} |" for r in ablations],
        ]
    example = json.dumps(
        {"context": "the story so far", "candidates": ["one ending", "another ending"]}
        if task.transformation == "multiple_choice"
        else {f: f"the {f}" for f in fields}
    )
    lines += [
        "",
        "## Input",
        "",
        f"Each row (a table's for `gpt1 predict`, a request's JSON for `gpt1 serve`) holds the fields "
        f"{', '.join(f'`{f}`' for f in fields)}, e.g. `{example}`; the model encodes them with the "
        f"paper's {task.transformation} transformation, exactly as it was fine-tuned.",
        "",
        "```bash",
        f"gpt1 predict --model models:/{name}/{version} --input rows.parquet --out labels.parquet",
        f"gpt1 serve --model models:/{name}/{version} --port 8000",
        f"curl -s -X POST http://127.0.0.1:8000/predict -d '{example}'",
        "```",
        "",
        "Labels: " + (", ".join(f"`{x}`" for x in task.labels) if task.labels else "a score (regression)")
        if task.transformation != "multiple_choice"
        else "Label: the index of the chosen candidate.",
        "",
        "## Known deviations from the released code",
        "",
        *deviations,  # docs/finetune.md's list as it stands: items and their indented continuations
        "",
    ]
    return "\n".join(lines)
