"""gpt1 report: the paper's tables and Figure 2, ours beside the paper's, from what MLflow holds.

    gpt1 report [--out DIR] [--experiment NAME ...] [--tag KEY=VALUE ...] [--no-mlflow]

For each task, the newest finished sweep (a parent run of gpt1-finetune-<task>; --experiment and
--tag choose among others) gives Tables 2-4 (its best trial's dev metric, best_<metric>) and
Table 5 (its ablation rows, ablation_<row>_<metric> with _std over seeds). Figure 2: on the left,
the train and dev metric of each trial of the newest sweep over n_transfer; on the right, the
newest pretraining run of each network that logged zero-shot curves (zero_shot_<task>_<metric>),
each heuristic normalised between random guessing and the state of the art (tuning/paper.py),
the Transformer solid, the LSTM dashed.

Every cell reads `ours ± std | paper | Δ` (percentages), or says that no run has it. The report
ends with the ledger of this project's deliberate deviations from the paper and the released code.
Written to DIR (default ./report) as report.md and figure2.png, and logged to the experiment
gpt1-report.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from pipeline import errors
from pipeline.tracking import artifact_root, check_store, experiment_id, finish_run, tracking_uri
from tuning import paper

EXPERIMENT = "gpt1-report"
NO_RUN = "no run"
RANDOM = {"sst-2": 0.5, "cola": 0.0, "race": 0.25, "wsc": 0.5, "dprd": 0.5}


def newest_sweeps(client, experiments: list[str] | None = None, tags: dict | None = None) -> dict:
    """task -> the newest FINISHED sweep parent run among the experiments (default: every
    gpt1-finetune-<task>) whose tags hold every KEY=VALUE in tags."""
    names = experiments or [
        e.name for e in client.search_experiments() if e.name.startswith("gpt1-finetune-")
    ]
    ids = []
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise errors.ConfigError(f"--experiment {name}: no such MLflow experiment")
        ids.append(exp.experiment_id)
    if not ids:
        return {}
    filters = ["attributes.status = 'FINISHED'", *(filter_value(k, v) for k, v in (tags or {}).items())]
    newest: dict = {}
    for run in client.search_runs(ids, " and ".join(filters), order_by=["attributes.start_time DESC"]):
        t = run.data.tags
        if "mlflow.parentRunId" in t or "task" not in t or "sweep_key" not in t:
            continue  # trials, and runs that are not sweeps
        newest.setdefault(t["task"], run)
    return newest


def cell(ours: float | None, paper_value: float | None, std: float | None = None) -> str:
    """`ours ± std | paper | Δ`, ours a fraction (as the runs log it), the paper's a percentage."""
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        return f"{NO_RUN} \\| {paper_value}" if paper_value is not None else NO_RUN
    value = 100 * ours
    text = f"{value:.1f}" + (f" ± {100 * std:.1f}" if std else "")
    if paper_value is None:
        return text
    return f"{text} \\| {paper_value} \\| {value - paper_value:+.1f}"


def metric_of(run, column: paper.Column, prefix: str = "best") -> float | None:
    key = f"{prefix}_{column.part + '_' if column.part else ''}{column.metric}"
    return run.data.metrics.get(key) if run is not None else None


def results_table(title: str, table: dict, sweeps: dict) -> list[str]:
    """One row: each column's test metric where the task's test labels are public and the sweep
    scored them (the model chosen on dev, marked "test", its dev metric beside it), else its dev
    metric."""
    cells = []
    for c, p in table.items():
        test = metric_of(
            sweeps.get(c.task), paper.Column(c.label, c.task, c.metric, f"test_{c.part}".rstrip("_"))
        )
        dev = metric_of(sweeps.get(c.task), c)
        if test is not None:
            cells.append(cell(test, p) + " (test" + (f"; dev {100 * dev:.1f})" if dev is not None else ")"))
        else:
            cells.append(cell(dev, p))
    lines = [
        f"### {title}",
        "",
        "Ours: the best trial's dev score, the trial chosen on that same dev set; marked test, the"
        " test score of that trial's model (the dev score beside it).",
        "",
        "| " + " | ".join(c.label for c in table) + " |",
    ]
    lines.append("|" + "---:|" * len(table))
    lines.append("| " + " | ".join(cells) + " |")
    return lines


def table5(sweeps: dict) -> tuple[list[str], dict]:
    """Table 5's rows, each task's cell the row's mean ± std over seeds, and the average over the
    tasks that have one, beside the paper's average over the same tasks. Returns the lines and
    {row: (our average, the paper's over the same tasks, tasks)}."""
    cols = paper.TABLE5_COLUMNS
    lines = [
        "### Table 5: ablations",
        "",
        "The paper's rows name no split (its full row equals its test-server figures in Tables 2-4;"
        " MNLI is the mean of matched and mismatched); ours are each row's dev scores, mean ± std"
        " over seeds, at the settings the sweep chose on the same dev sets (MNLI: the mean of matched"
        " and mismatched where the sweep scored both, else matched alone).",
        "",
        "| Method | Avg. Score | " + " | ".join(c.label for c in cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    averages = {}
    for row, (name, paper_avg, cells) in paper.TABLE5_ROWS.items():
        ours, theirs, out = [], [], []
        for c, p in zip(cols, cells, strict=True):
            run = sweeps.get(c.task)
            key = f"ablation_{row}_{c.metric}"
            if (
                c.task == "mnli"
                and run is not None
                and f"ablation_{row}_{paper.MEAN_M_MM}_{c.metric}" in run.data.metrics
            ):
                key = f"ablation_{row}_{paper.MEAN_M_MM}_{c.metric}"  # as the paper's cell: m and mm averaged
            value = run.data.metrics.get(key) if run is not None else None
            std = run.data.metrics.get(f"{key}_std") if run is not None else None
            out.append(cell(value, p, std))
            if value is not None and not math.isnan(value):
                ours.append(100 * value)
                theirs.append(p)
        if len(ours) == len(cols):
            avg = f"{sum(ours) / len(ours):.1f} \\| {paper_avg} \\| {sum(ours) / len(ours) - paper_avg:+.1f}"
        elif ours:
            # The paper's average over the same tasks: the only fair comparison for part of a row.
            mine, same = sum(ours) / len(ours), sum(theirs) / len(theirs)
            avg = f"{mine:.1f} \\| {same:.1f} ({len(ours)} of {len(cols)} tasks; all 8: {paper_avg}) \\| {mine - same:+.1f}"
        else:
            avg = f"{NO_RUN} \\| {paper_avg}"
        averages[row] = (sum(ours) / len(ours) if ours else None, paper_avg, len(ours))
        lines.append(f"| {name} | {avg} | " + " | ".join(out) + " |")
    return lines, averages


def other_tasks(sweeps: dict) -> list[str]:
    """The swept tasks none of the paper's tables has (your own, the demo's): ours alone, the best
    trial and each ablation row."""
    in_tables = {c.task for t in (paper.TABLE2, paper.TABLE3, paper.TABLE4) for c in t} | {
        c.task for c in paper.TABLE5_COLUMNS
    }
    rows = list(paper.TABLE5_ROWS)
    lines = []
    for task, run in sorted(sweeps.items()):
        if task in in_tables:
            continue
        m = run.data.metrics
        best = [k for k in m if k.startswith("best_")]
        if not best:
            continue
        metric = best[0].removeprefix("best_")
        cells = [
            cell(m.get(f"ablation_{r}_{metric}"), None, m.get(f"ablation_{r}_{metric}_std")) for r in rows
        ]
        lines.append(f"| {task} | {metric} | {cell(m[best[0]], None)} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    head = [
        "### Other tasks (in none of the paper's tables)",
        "",
        "| task | metric | best trial | " + " | ".join(paper.TABLE5_ROWS[r][0] for r in rows) + " |",
        "|---|---|---:|" + "---:|" * len(rows),
    ]
    return head + lines + [""]


def zero_shot_runs(client) -> dict:
    """arch -> the newest pretraining run of that network with zero-shot curves."""
    exp = client.get_experiment_by_name("gpt1-pretrain")
    if exp is None:
        return {}
    out: dict = {}
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]):
        if any(k.startswith("zero_shot_") and k != "zero_shot_examples" for k in run.data.metrics):
            out.setdefault(run.data.params.get("model_config.arch", "transformer"), run)
    return out


def transfer_curves(client, experiments: list[str] | None = None) -> dict:
    """task -> [(blocks transferred, best train metric, best dev metric, metric)] from the newest
    finished sweep whose trials vary n_transfer (Figure 2, left)."""
    names = experiments or [
        e.name for e in client.search_experiments() if e.name.startswith("gpt1-finetune-")
    ]
    out: dict = {}
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            continue
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
        for parent in (
            r for r in runs if "mlflow.parentRunId" not in r.data.tags and "sweep_key" in r.data.tags
        ):
            if parent.info.status != "FINISHED" or parent.data.tags.get("task") in out:
                continue
            trials = [
                r
                for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                and r.data.tags.get("row") == "trial"
            ]
            if len({t.data.params.get("n_transfer") for t in trials}) < 2:
                continue
            points = []
            for t in trials:
                best = [k for k in t.data.metrics if k.startswith("best_train_")]
                if best:
                    metric = best[0].removeprefix("best_train_")
                    m = t.data.metrics
                    points.append((n_transfer(t), m[best[0]], m.get(f"best_{metric}"), metric))
            if points:
                out[parent.data.tags["task"]] = sorted(points)
    return out


def n_transfer(trial) -> int:
    """A trial's n_transfer parameter: a damaged one (edited by hand, logged by another tool) is
    one line naming the run, not a traceback."""
    value = trial.data.params.get("n_transfer", "")
    try:
        return int(value)
    except ValueError:
        raise errors.ConfigError(
            f"MLflow run {trial.info.run_id}: its n_transfer parameter is {value!r}, not a whole number; "
            "delete the run or read other experiments with --experiment"
        ) from None


def filter_value(key: str, value: str) -> str:
    """`tags.`key` = 'value'` for MLflow's search filter, quoted so that a quote in the value is
    matched, never read as the filter's syntax."""
    if "`" in key:
        raise errors.ConfigError(f"--tag {key}={value}: a tag name cannot hold a backquote")
    if "'" not in value:
        return f"tags.`{key}` = '{value}'"
    if '"' not in value:
        return f'tags.`{key}` = "{value}"'
    raise errors.ConfigError(
        f"--tag {key}={value}: MLflow's filter cannot match a value holding both ' and \"; "
        "choose a tag without one of them"
    )


def figure2(client, runs: dict, curves: dict, path: Path) -> list[str]:
    """Figure 2. Left: train and dev metric against the blocks transferred (-1: all of them).
    Right: each heuristic's curve over pretraining updates, normalised between random guessing
    (0) and the state of the art (1). Returns the lines that describe it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    said = []
    for task, points in sorted(curves.items()):
        xs = [p[0] for p in points]
        (line,) = left.plot(xs, [p[2] for p in points], marker="o", label=f"{task} dev")
        left.plot(
            xs,
            [p[1] for p in points],
            marker="o",
            linestyle="--",
            color=line.get_color(),
            label=f"{task} train",
        )
        left.set_ylabel(points[0][3])
    said.append(
        f"Figure 2 (left): {', '.join(sorted(curves))}, dev solid and train dashed."
        if curves
        else f"Figure 2 (left): {NO_RUN} (a sweep over n_transfer draws it)."
    )
    drawn = []
    for arch, run in sorted(runs.items(), reverse=True):  # transformer first, then lstm
        for key in sorted(run.data.metrics):
            m = re.fullmatch(r"zero_shot_(.+)_(accuracy|matthews)", key)
            if not m or (m[1], m[2]) not in paper.ZERO_SHOT_SOTA:
                continue
            lo, hi = RANDOM[m[1]], paper.ZERO_SHOT_SOTA[(m[1], m[2])]
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda p: p.step)
            right.plot(
                [p.step for p in history],
                [(p.value - lo) / (hi - lo) for p in history],
                linestyle="--" if arch == "lstm" else "-",
                label=f"{m[1]} ({arch})",
            )
            drawn.append(f"{m[1]} ({arch}, run {run.info.run_id})")
    said.append(
        f"Figure 2 (right): Transformer solid, LSTM dashed: {', '.join(drawn)}."
        if drawn
        else f"Figure 2 (right): {NO_RUN} (pretrain with --set 'zero_shot=[...]' to draw it)."
    )
    tasks = sorted({d.split(" (", 1)[0] for d in drawn})
    if tasks:  # the bounds each curve is normalised by, and where the upper one comes from
        said.append(
            "Normalised from random guessing (0) to the best earlier result (1): "
            + "; ".join(
                f"{t} {RANDOM[t]:.3g} to {hi:.3g} ({paper.ZERO_SHOT_SOTA_FROM[t]})"
                for t in tasks
                for (task, _), hi in paper.ZERO_SHOT_SOTA.items()
                if task == t
            )
            + "."
        )
    if not (curves or drawn):
        plt.close(fig)
        return said
    left.set_xlabel("blocks transferred (-1: all)")
    right.set_xlabel("pretraining updates")
    right.set_ylabel("zero-shot, normalised (0 random, 1 best earlier result)")
    for ax in (left, right):
        if ax.lines:
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [f"`{path.name}`:", "", *(f"- {line}" for line in said)]


def deviations() -> list[str]:
    """The list of deliberate differences from the released code in docs/finetune.md: one
    ledger, kept in one place."""
    ledger = Path(__file__).resolve().parent.parent / "docs" / "finetune.md"
    if not ledger.is_file():
        return ["See the project's docs/finetune.md, 'Where this differs from the released code'."]
    text = ledger.read_text(encoding="utf-8")
    m = re.search(r"- Where this differs from the released code[^\n]*\n((?:  .*\n)+)", text)
    if not m:
        return ["See the project's docs/finetune.md, 'Where this differs from the released code'."]
    return [line[2:] for line in m[1].splitlines()]


# The only files a report writes, and so the only ones --out may already hold (an earlier
# report's) and the only ones logged to MLflow.
FILES = ("report.md", "figure2.png")
TITLE = "# GPT-1: this reproduction beside the paper"


def check_out(out: Path, uri: str) -> None:
    """Raise ConfigError unless out is a new directory or one holding only an earlier report:
    never the working directory or one above it, never inside the MLflow store's artifacts, never
    a folder of the user's (whose report.md, .ssh or anything else the report would replace or
    upload)."""
    here = out.absolute().resolve()
    if here == Path.cwd().resolve() or here in Path.cwd().resolve().parents:
        raise errors.ConfigError(
            f"--out {out}: is the working directory or holds it; the report needs a directory of its own, "
            "e.g. --out report"
        )
    root = artifact_root(uri)
    if root and root.startswith("file://"):
        store = Path(root.removeprefix("file://")).resolve()
        if here == store or store in here.parents or here in store.parents:
            raise errors.ConfigError(
                f"--out {out}: is inside MLflow's artifact store ({store}) or holds it; choose a directory "
                "outside it"
            )
    if not out.exists():
        return
    if not out.is_dir() or out.is_symlink():
        raise errors.ConfigError(f"--out {out}: exists and is not a directory; choose a new directory")
    names = sorted(p.name for p in out.iterdir())
    others = [n for n in names if n not in FILES or not (out / n).is_file() or (out / n).is_symlink()]
    if others:
        raise errors.ConfigError(
            f"--out {out}: holds {', '.join(others[:3])}{' and more' if len(others) > 3 else ''}, which no "
            "report wrote; it is never replaced or uploaded: choose a new directory"
        )
    if "report.md" in names and not _is_report(out / "report.md"):
        raise errors.ConfigError(
            f"--out {out}: its report.md is not one gpt1 report wrote; it is never replaced: "
            "choose a new directory"
        )


def _is_report(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\n") == TITLE
    except (OSError, UnicodeDecodeError):
        return False


def report(client, out: Path, experiments: list[str] | None = None, tags: dict | None = None) -> dict:
    """Write report.md (and figure2.png where there are curves) into out, replacing an earlier
    report's (check_out says out may be written); returns what it found and the files written."""
    sweeps = newest_sweeps(client, experiments, tags)
    lines = [
        TITLE,
        "",
        "Each cell: ours (± std over seeds, where a row has seeds) \\| the paper's \\| the difference, in "
        "percentage points. Ours are dev metrics; the paper's Tables 2-4 are test metrics where the test "
        f"labels are public or the GLUE server scored them. `{NO_RUN}`: no sweep logged that metric.",
        "",
        "Sweeps read: "
        + (", ".join(f"{t} ({r.info.run_id})" for t, r in sorted(sweeps.items())) or "none")
        + ".",
        "",
    ]
    lines += results_table("Table 2: natural language inference", paper.TABLE2, sweeps) + [""]
    lines += results_table("Table 3: question answering and commonsense reasoning", paper.TABLE3, sweeps) + [
        ""
    ]
    lines += results_table("Table 4: semantic similarity and classification", paper.TABLE4, sweeps)
    lines += ["", f"GLUE score: {NO_RUN} here (the GLUE server's) \\| {paper.GLUE_SCORE}", ""]
    t5, averages = table5(sweeps)
    lines += t5 + [""]
    lines += other_tasks(sweeps)
    lines += ["### Figure 2", ""]
    # Everything is read before anything is written: a bad run or experiment leaves nothing behind.
    runs, curves = zero_shot_runs(client), transfer_curves(client, experiments)
    out.mkdir(parents=True, exist_ok=True)
    (out / "figure2.png").unlink(missing_ok=True)  # an earlier report's, which this one may not draw
    lines += figure2(client, runs, curves, out / "figure2.png")
    lines += [
        "",
        "### Deliberate deviations from the paper and the released code",
        "",
        *deviations(),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return {
        "sweeps": {t: r.info.run_id for t, r in sweeps.items()},
        "table5_averages": averages,
        "files": [out / n for n in FILES if (out / n).is_file()],
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default="report", help="directory for report.md and figure2.png (default ./report)"
    )
    p.add_argument(
        "--experiment",
        action="append",
        metavar="NAME",
        help="read sweeps from this MLflow experiment only (repeatable; default: every gpt1-finetune-<task>)",
    )
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only sweeps whose parent run has this tag",
    )
    p.add_argument("--no-mlflow", action="store_true", help="write the files without logging them to MLflow")


def run(args: argparse.Namespace) -> None:
    from mlflow.tracking import MlflowClient

    tags = {}
    for spec in args.tag:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise errors.ConfigError(f"--tag {spec}: expected KEY=VALUE, e.g. --tag task=sst-2")
        tags[key] = value
    uri = tracking_uri()
    out = Path(args.out)
    check_out(out, uri)
    check_store(uri)
    client = MlflowClient(uri)
    found = report(client, out, args.experiment, tags)
    print((out / "report.md").read_text())
    if not args.no_mlflow:
        rid = client.create_run(experiment_id(client, EXPERIMENT), run_name="report").info.run_id
        status = "FAILED"
        try:
            for t, r in found["sweeps"].items():
                client.set_tag(rid, f"sweep.{t}", r)
            for path in found["files"]:  # by name: nothing else in --out is ever uploaded
                client.log_artifact(rid, str(path))
            status = "FINISHED"
        finally:
            finish_run(uri, rid, status)
        print(f"MLflow run {rid} (experiment {EXPERIMENT})")


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("report", __doc__, add_arguments, run, argv)
