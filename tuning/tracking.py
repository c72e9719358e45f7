"""What a sweep logs to MLflow: a parent run per task in gpt1-finetune-<task>, a nested child run
per trial, the results table and plots on the parent, the best model in the Model Registry.

The child runs are made by a Tune Callback on the driver, so each trial is logged exactly once,
however often its worker reports, and a restarted trial keeps its run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from pipeline import errors
from pipeline.console import eta
from pipeline.data.tasks import get
from pipeline.errors import ConfigError
from pipeline.files import sha256_file
from pipeline.outdir import alive
from pipeline.tracking import RunLogger, checkpoint_lineage, experiment_id, weights_sha256
from tuning.paper import MEAN_M_MM
from tuning.report import deviations

PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by


def lineage(client, checkpoint: Path, files: dict[str, Path], where: str | None = None) -> dict[str, str]:
    """Tags linking a run to its inputs: the checkpoint's (pipeline.tracking.checkpoint_lineage)
    and the sha256 of each data file."""
    tags = checkpoint_lineage(client, checkpoint, where)
    for split, path in files.items():
        tags[f"data_sha256.{split}"] = sha256_file(path)
    return tags


class FinetuneRun:
    """A standalone `gpt1 finetune`'s run in gpt1-finetune-<task>, logged as a sweep's trial is:
    its settings as params, every evaluation's metrics by step, best_<metric> and best_step, the
    model as an artifact (its weights' sha256 as a tag, so an evaluation of any copy finds the
    run), and the lineage of the checkpoint and the data files. As a context manager, the run ends
    FINISHED, or KILLED on Ctrl-C / SIGTERM, or FAILED."""

    def __init__(self, uri: str, run_id: str, out: Path):

        self.logger, self.run_id, self.out = RunLogger(uri, run_id), run_id, out
        self.client = self.logger.client

    @classmethod
    def start(cls, uri: str, task, data: Path, checkpoint: Path, where: str, cfg, out: Path) -> FinetuneRun:
        import dataclasses

        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = experiment_id(client, f"gpt1-finetune-{task.name}")
        files = {
            s: data / f for s, f in task.splits.items() if (data / f).is_file() and not s.startswith("test")
        }
        tags = {**lineage(client, checkpoint, files, where), "task": task.name, "row": "gpt1 finetune"}
        run = client.create_run(exp, run_name=f"finetune {Path(out).name}", tags=tags)
        params = dataclasses.asdict(cfg)
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return cls(uri, run.info.run_id, Path(out))

    def log(self, metrics: dict, step: int) -> None:
        self.logger.log({k: v for k, v in metrics.items() if finite(v)}, step)

    def finish(self, best: dict, metric: str) -> None:

        self.client.log_metric(self.run_id, f"best_{metric}", float(best[metric]))
        self.client.log_metric(self.run_id, "best_step", float(best["step"]))
        self.client.log_artifacts(self.run_id, str(self.out), "model")
        self.client.set_tag(self.run_id, "model_sha256", weights_sha256(self.out))

    def __enter__(self) -> FinetuneRun:
        return self

    def __exit__(self, kind, err, tb) -> None:

        stopped = kind is not None and issubclass(kind, (KeyboardInterrupt, errors.Interrupted))
        self.client.set_terminated(
            self.run_id, "FINISHED" if kind is None else "KILLED" if stopped else "FAILED"
        )


@dataclass(frozen=True)
class Parent:
    """A sweep's parent run, as start_parent found or made it."""

    client: object  # the MlflowClient it was made with
    experiment: str  # the experiment id, gpt1-finetune-<task>
    run_id: str
    lineage: dict[str, str]  # the checkpoint's and the data's tags, which every trial run carries
    name: str  # a resumed sweep's own, so its Tune experiments are found again
    resumed: bool


def start_parent(
    uri: str,
    task: str,
    name: str,
    checkpoint: Path,
    files: dict[str, Path],
    tags: dict[str, str],
    where: str | None = None,
    settings: dict | None = None,
) -> Parent:
    """The sweep's parent run in gpt1-finetune-<task>, tagged with its lineage and a key of its
    inputs and settings (sweep_key). Where an earlier sweep with the same key never finished (its
    driver was killed, or interrupted), that parent is taken up again instead: its name, and so
    its Tune experiments, are the resumed sweep's, and its trial runs left RUNNING are marked
    KILLED. A parent still RUNNING under a live driver of this machine is another sweep: refused.
    """
    import hashlib
    import json
    import os
    import socket

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = experiment_id(client, f"gpt1-finetune-{task}")
    lineage_tags = lineage(client, checkpoint, files, where)
    key = hashlib.sha256(
        json.dumps(
            {
                "lineage": {k: v for k, v in lineage_tags.items() if k != "checkpoint"},
                "task": task,
                "settings": settings or {},
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:16]
    driver = {"driver_host": socket.gethostname(), "driver_pid": str(os.getpid())}
    found = client.search_runs(
        [exp], f"tags.sweep_key = '{key}'", order_by=["attributes.start_time DESC"], max_results=1
    )
    old = found[0] if found and found[0].info.status != "FINISHED" else None
    if old is not None:
        t = old.data.tags
        if (
            old.info.status == "RUNNING"
            and t.get("driver_host") == driver["driver_host"]
            and t.get("driver_pid", "").isdigit()
            and alive(int(t["driver_pid"]))
        ):
            raise ConfigError(
                f"sweep {task}: the same sweep is running (pid {t['driver_pid']}, MLflow run "
                f"{old.info.run_id}); wait for it to end"
            )
        pid = old.info.run_id
        for child in client.search_runs(
            [exp], f"tags.`{PARENT_TAG}` = '{pid}' and attributes.status = 'RUNNING'"
        ):
            client.set_terminated(child.info.run_id, "KILLED")  # its driver is gone; Tune runs it again
        client.update_run(pid, status="RUNNING")
        for k, v in driver.items():
            client.set_tag(pid, k, v)
        return Parent(client, exp, pid, lineage_tags, old.info.run_name, True)
    parent = client.create_run(
        exp, run_name=name, tags={**lineage_tags, "task": task, "sweep_key": key, **driver, **tags}
    )
    return Parent(client, exp, parent.info.run_id, lineage_tags, name, False)


def log_parent(client, pid: str, task, metric: str, rows, ablation_rows, best_result, runs) -> dict:
    """The parent run's table, plot, best config and metrics; the best model registered."""
    best_trial = best_result.metrics["trial_id"]
    best_ckpt = best_result.get_best_checkpoint(metric=metric, mode="max")
    with tempfile.TemporaryDirectory(prefix="gpt1-sweep-") as tmp:
        tmp = Path(tmp)
        if rows:
            ranked = sorted(rows, key=lambda r: -r[metric] if finite(r[metric]) else math.inf)
            for f in results_table(ranked, tmp / "results"):
                client.log_artifact(pid, str(f))
            client.log_artifact(
                pid,
                str(
                    plot(
                        [r for r in rows if finite(r[metric])],
                        metric,
                        tmp / "metric_vs_lambda_and_lr.png",
                        f"{task.name}: {len(rows)} trials",
                    )
                ),
            )
            scored = [r for r in rows if finite(r[metric])]
            if scored:
                client.log_artifact(
                    pid,
                    str(
                        plot_parallel(scored, metric, tmp / PARALLEL, f"{task.name}: lr, λ and dev {metric}")
                    ),
                )
            if len({r.get("n_transfer") for r in rows}) > 1:  # Figure 2 (left)
                client.log_artifact(
                    pid,
                    str(
                        plot_transfer(
                            rows,
                            metric,
                            tmp / "metric_vs_transferred_layers.png",
                            f"{task.name}: transferred layers",
                        )
                    ),
                )
        if ablation_rows:
            for f in results_table(ablation_rows, tmp / "ablations"):
                client.log_artifact(pid, str(f))
            summary = ablation_summary(ablation_rows, metric)
            for f in results_table(summary, tmp / "ablations_summary"):
                client.log_artifact(pid, str(f))
            for r in summary:
                client.log_metric(pid, f"ablation_{r['ablation']}_{metric}", r["mean"])
                client.log_metric(pid, f"ablation_{r['ablation']}_{metric}_std", r["std"])
            both = matched_and_mismatched(ablation_rows, metric)
            if both:  # MNLI: Table 5's cell is the mean of the two, as the paper's 81.8 is
                for r in ablation_summary(both, f"{MEAN_M_MM}_{metric}"):
                    client.log_metric(pid, f"ablation_{r['ablation']}_{MEAN_M_MM}_{metric}", r["mean"])
                    client.log_metric(pid, f"ablation_{r['ablation']}_{MEAN_M_MM}_{metric}_std", r["std"])
        log_json(client, pid, dict(best_result.config), tmp / "best_config.json")
    df = best_result.metrics_dataframe
    best_value = max(df[metric])
    client.log_metric(pid, f"best_{metric}", best_value)
    # The parent's row in the runs table shows what its trials' rows do, with the best trial's
    # values: its settings (lr, λ = lm_coef, ...) as the same params, the dev metric under the
    # same key. A resumed sweep's parent keeps the params it already has (MLflow's are immutable).
    from mlflow.entities import Param

    client.log_metric(pid, metric, best_value)
    have = client.get_run(pid).data.params
    best = {"ablation": "best of the sweep", **dict(best_result.config)}
    new = [Param(k, str(v)) for k, v in best.items() if k not in have]
    if new:
        client.log_batch(pid, params=new)
    client.set_tag(pid, "row", "best of the sweep")
    # The best evaluation's other columns (MNLI mismatched, RACE-m / -h, public test labels).
    from tuning.finetune import is_extra

    at_best = df.loc[df[metric].idxmax()]
    for col in df.columns:
        if is_extra(col, task.metrics) and finite(at_best[col]):
            client.log_metric(pid, f"best_{col}", float(at_best[col]))
    client.set_tag(pid, "best_trial_run_id", runs[best_trial])
    with best_ckpt.as_directory() as d:
        version = register_best(
            client,
            task,
            runs[best_trial],
            Path(d),
            metric,
            float(best_value),
            ablation_summary(ablation_rows, metric) if ablation_rows else (),
        )
    client.set_tag(pid, "registered_model", f"gpt1-{task.name}/{version}")
    print(
        f"sweep {task.name}: best dev {metric} {best_value:.4f} (trial {best_trial}); registered "
        f"gpt1-{task.name} version {version}",
        flush=True,
    )
    return {
        "parent_run_id": pid,
        "metric": metric,
        "best": best_value,
        "best_config": best_result.config,
        "rows": rows,
        "ablations": ablation_rows,
        "ablation_summary": ablation_summary(ablation_rows, metric) if ablation_rows else [],
        "model_version": version,
    }


def matched_and_mismatched(rows: list[dict], metric: str) -> list[dict]:
    """Each row with the mean of its dev metric and its mismatched one (MNLI), where every row has
    both; [] otherwise."""
    key = f"mismatched_{metric}"
    if not rows or not all(key in r for r in rows):
        return []
    return [{**r, f"{MEAN_M_MM}_{metric}": (r[metric] + r[key]) / 2} for r in rows]


def ablation_summary(rows: list[dict], metric: str) -> list[dict]:
    """One row per ablation: the mean and standard deviation (ddof 1; 0 for one seed) of its
    seeds' best dev metric, and the table's "mean ± std"."""
    import numpy as np

    out = []
    for name in dict.fromkeys(r["ablation"] for r in rows):
        values = np.array([r[metric] for r in rows if r["ablation"] == name], dtype=float)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(
            {
                "ablation": name,
                "seeds": len(values),
                "mean": float(values.mean()),
                "std": std,
                metric: f"{values.mean():.4f} ± {std:.4f}",
            }
        )
    return out


class TrialRuns(tune.Callback):
    """One nested MLflow run per trial: its config as params, its evaluations as metrics at their
    training step, its end as the run's status. Beside each evaluation's metrics, the best
    evaluation's (by the first of `metrics`, the task's dev metric) as best_<metric> and
    best_step: the model a trial keeps, and what the tables report, is its best evaluation, not
    its last, and MLflow's Compare shows a metric's last value.

    It also prints the sweep's progress, a line per trial as it ends and, while one runs, a line
    at most every `every` seconds: `trial 3/8 lr=2.1e-4 λ=0.5: step 120/450, accuracy 0.61, ETA 1m10s`,
    numbered in the order the trials start out of `total`. row_tags: an ablation row's tags in
    place of `tags` (the lstm row's checkpoint lineage)."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        parent_run_id: str,
        tags: dict[str, str],
        metrics: list[str],
        varying: list[str] = (),
        total: int = 0,
        every: float = 30.0,
        row_tags: dict[str, dict] | None = None,
    ):
        from mlflow.tracking import MlflowClient

        self.uri, self.client, self.experiment = uri, MlflowClient(uri), experiment
        self.parent, self.tags, self.metrics, self.varying = parent_run_id, tags, metrics, list(varying)
        self.loggers: dict = {}  # trial id -> RunLogger of its run
        self.best: dict = {}  # trial id -> its best dev metric so far (compared by finetune.rank)
        self.total, self.every = total, every
        # An ablation row's own lineage where it differs (the lstm row's checkpoint).
        self.row_tags = row_tags or {}
        self.shown: dict = {}  # trial id -> (its number, when it started, when its last line was)
        # A resumed sweep: the trials that ended before its driver was lost keep their runs (those
        # it left RUNNING were marked KILLED, and their trials get new runs when Tune runs them again).
        for run in self.client.search_runs(
            [experiment], f"tags.`{PARENT_TAG}` = '{parent_run_id}' and attributes.status != 'KILLED'"
        ):
            self.loggers[run.data.tags["trial_id"]] = RunLogger(uri, run.info.run_id)
            if f"best_{metrics[0]}" in run.data.metrics:
                self.best[run.data.tags["trial_id"]] = run.data.metrics[f"best_{metrics[0]}"]

    @property
    def runs(self) -> dict[str, str]:
        """trial id -> run id"""
        return {t: logger.run_id for t, logger in self.loggers.items()}

    def say(self, trial, text: str) -> None:
        number = self.shown[trial.trial_id][0]
        name = trial_name(trial.config, self.varying, trial.trial_id)
        print(f"trial {number}/{max(self.total, number)} {name}: {text}", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        import time

        if trial.trial_id not in self.shown:
            now = time.monotonic()
            self.shown[trial.trial_id] = (len(self.shown) + 1, now, now)
        if trial.trial_id in self.loggers:  # a restarted trial goes on in its run
            return
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment,
            run_name=trial_name(trial.config, self.varying, trial.trial_id),
            tags={
                PARENT_TAG: self.parent,
                "trial_id": trial.trial_id,
                "row": row_of(trial.config),
                **self.row_tags.get(trial.config.get("ablation"), self.tags),
            },
        )
        self.loggers[trial.trial_id] = RunLogger(self.uri, run.info.run_id)
        params = {
            "ablation": SEARCH,
            **trial.config,
        }  # the search's trials too: Compare plots every run's row
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from tuning.finetune import is_extra, rank

        # Only the evaluation's own metrics: Tune adds its bookkeeping (times, pids) to results.
        values = {k: result[k] for k in self.metrics if k in result}
        # At a new best, finetune scores the task's other evaluations (test, mismatched, RACE's parts).
        values.update({k: v for k, v in result.items() if is_extra(k, self.metrics)})
        step, key, seen = int(result["step"]), self.metrics[0], self.best.get(trial.trial_id)
        if key in values and (seen is None or rank(values[key]) > rank(seen)):
            self.best[trial.trial_id] = values[key]
            values.update({f"best_{k}": v for k, v in values.items()}, best_step=step)
        self.loggers[trial.trial_id].log(values, step)
        self.progress(trial, result, step, key)

    def progress(self, trial, result: dict, step: int, key: str) -> None:
        import time

        number, started, last = self.shown.setdefault(
            trial.trial_id, (len(self.shown) + 1,) + (time.monotonic(),) * 2
        )
        now, total = time.monotonic(), int(result.get("total_steps") or 0)
        if now - last < self.every or not total or step >= total:
            return
        self.shown[trial.trial_id] = (number, started, now)
        left = (total - step) * (now - started) / step
        self.say(
            trial, f"step {step:,}/{total:,}, {key} {result.get(key, float('nan')):.4f}, ETA {eta(left)}"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.client.set_terminated(self.runs[trial.trial_id], "FINISHED")
        if trial.trial_id in self.shown:
            best = self.best.get(trial.trial_id, float("nan"))
            took = time_since(self.shown[trial.trial_id][1])
            self.say(trial, f"done in {took}, best {self.metrics[0]} {best:.4f}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.client.set_terminated(self.runs[trial.trial_id], "FAILED")
        if trial.trial_id in self.shown:
            self.say(trial, f"failed; its error is in {trial.local_path}")


class ByTask(tune.Callback):
    """Each trial's events to its task's TrialRuns (trial.config["task"]): one Tune run of
    several tasks, each logged under its own parent run."""

    def __init__(self, runs: dict[str, TrialRuns]):
        self.by_task = runs

    def of(self, trial) -> TrialRuns:
        return self.by_task[trial.config["task"]]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.of(trial).on_trial_start(iteration, trials, trial, **info)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.of(trial).on_trial_result(iteration, trials, trial, result, **info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.of(trial).on_trial_complete(iteration, trials, trial, **info)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.of(trial).on_trial_error(iteration, trials, trial, **info)


def time_since(start: float) -> str:
    import time

    seconds = time.monotonic() - start
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# The `ablation` param of the search's own trials (the ablation rows name theirs).
SEARCH = "search"


def row_of(config: dict) -> str:
    """The table row a trial's run belongs to: "trial" (the search), or "ablation: <row>"."""
    return f"ablation: {config['ablation']}" if "ablation" in config else "trial"


SHORT = {"lm_coef": "λ", "epochs": "ep", "batch_size": "bs", "n_transfer": "layers", "clf_dropout": "drop"}


def trial_name(config: dict, varying: list[str], trial_id: str) -> str:
    """What a trial's run is called in the MLflow UI: what differs between the trials
    (lr=2.1e-4 λ=0.5 ep=3), or its ablation row and seed (ablation: no_pretraining (seed 1))."""
    if "ablation" in config:
        return f"ablation: {config['ablation']} (seed {config.get('seed', 0)})"

    def fmt(v):
        return f"{v:.2g}" if isinstance(v, float) else str(v)

    return " ".join(f"{SHORT.get(k, k)}={fmt(config[k])}" for k in varying if k in config) or trial_id


def plot_transfer(rows: list[dict], metric: str, path: Path, title: str) -> Path:
    """The best dev metric against the number of transferred blocks (Figure 2, left): each trial,
    and the mean at each count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((int(r["n_transfer"]), r[metric]) for r in rows if finite(r[metric]))
    ks = sorted({k for k, _ in pts})
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([k for k, _ in pts], [v for _, v in pts], alpha=0.5)
    ax.plot(
        ks, [sum(v for k2, v in pts if k2 == k) / sum(1 for k2, _ in pts if k2 == k) for k in ks], marker="o"
    )
    ax.set_xlabel("transferred layers (n_transfer; -1: all)")
    ax.set_ylabel(f"best dev {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def results_table(rows: list[dict], path: Path) -> tuple[Path, Path]:
    """rows as CSV and as a Markdown table (for the MLflow UI's artifact view). The columns are
    every row's keys, in the order they first appear: a trial never scored has no extra columns."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return path.with_suffix(".csv"), path.with_suffix(".md")


def plot(rows: list[dict], metric: str, path: Path, title: str) -> Path:
    """The best dev metric of each trial against λ and against lr, side by side."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node or in CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    y = [r[metric] for r in rows]
    for ax, key, label in ((axes[0], "lm_coef", "λ (auxiliary LM weight)"), (axes[1], "lr", "learning rate")):
        ax.scatter([r[key] for r in rows], y)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].set_ylabel(f"best dev {metric}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


PARALLEL = "parallel_lr_lambda_metric.png"  # the parent's parallel-coordinates chart


def plot_parallel(rows: list[dict], metric: str, path: Path, title: str) -> Path:
    """Parallel coordinates of the trials: lr (log scale), λ and the best dev metric, one line per
    trial coloured by its metric, each axis spanning its own range, labelled with its ends. What
    MLflow's Compare would show once its axes are chosen by hand."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = [("lr", "learning rate", True), ("lm_coef", "λ", False), (metric, f"best dev {metric}", False)]
    columns = []
    for key, _, log in axes:
        values = [math.log10(r[key]) if log else float(r[key]) for r in rows]
        low, high = min(values), max(values)
        columns.append(([(v - low) / (high - low) if high > low else 0.5 for v in values], low, high, log))
    fig, ax = plt.subplots(figsize=(8, 4))
    worst, best = min(r[metric] for r in rows), max(r[metric] for r in rows)
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(rows):
        shade = (r[metric] - worst) / (best - worst) if best > worst else 1.0
        ax.plot(range(len(axes)), [c[0][i] for c in columns], color=cmap(shade), marker="o", alpha=0.8)
    for x, ((_, _label, _), (_, low, high, log)) in enumerate(zip(axes, columns, strict=True)):
        ax.axvline(x, color="0.6", lw=0.8)
        ends = [10**low, 10**high] if log else [low, high]
        ax.text(x, -0.08, f"{ends[0]:.3g}", ha="center", va="top", fontsize=8)
        ax.text(x, 1.08, f"{ends[1]:.3g}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(axes)), [label for _, label, _ in axes])
    ax.set_yticks([])
    ax.set_ylim(-0.2, 1.2)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


CHAMPION = "champion"  # the alias on the registered version with the best dev metric so far


def register_best(
    client, task, run_id: str, model_dir: Path, metric: str = "", value: float = math.nan, ablations=()
) -> str:
    """The best trial's model as an artifact of its run, with its model card (tuning/card.py) as
    README.md and as the version's description, and a new version of gpt1-<task>. The version
    takes the alias `champion` where its dev metric beats the current champion's (or there is
    none), and the line says which. The run is tagged with the model's weights' sha256: where
    the model goes, an evaluation of it finds its run by that (pipeline.tracking.checkpoint_lineage)."""
    import shutil

    from mlflow.exceptions import MlflowException

    from tuning.card import model_card
    from tuning.inputs import task_of

    task = get(task) if isinstance(task, str) else task
    name = f"gpt1-{task.name}"
    try:
        client.create_registered_model(
            name, description=f"GPT-1 fine-tuned on {task.name}: the best trial of each sweep"
        )
    except MlflowException as err:
        if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise
    tags = dict(client.get_run(run_id).data.tags)
    if tags.get("pretrain_run_id"):  # the dataset and prepare run it was pretrained from
        with contextlib.suppress(MlflowException):
            pre = client.get_run(tags["pretrain_run_id"]).data.tags
            tags.update({k: pre[k] for k in ("dataset", "data_fingerprint", "prepare_run_id") if k in pre})
    version = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    card = model_card(
        name,
        version.version,
        task_of(model_dir) if (Path(model_dir) / "task.json").exists() else task,
        metric or task.metrics[0],
        value,
        run_id,
        tags,
        list(ablations),
        deviations(),
    )
    with tempfile.TemporaryDirectory(prefix="gpt1-card-") as tmp:
        # The model directory and its card, logged as one artifact directory.
        local = Path(tmp) / "model"
        shutil.copytree(model_dir, local)
        (local / "README.md").write_text(card)
        client.log_artifacts(run_id, str(local), "model")
    client.set_tag(run_id, "model_sha256", weights_sha256(Path(model_dir)))
    client.update_model_version(name, version.version, description=card)
    key = f"dev_{metric or task.metrics[0]}"
    if math.isfinite(value):
        client.set_model_version_tag(name, version.version, key, str(value))
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    held = float(champ.tags.get(key, "nan")) if champ else math.nan
    best = crown_best(client, name, key)
    if best == str(version.version):
        was = f" (was version {champ.version}, {held:.4f})" if champ else ""
        print(
            f"{name} version {version.version} is the {CHAMPION}: dev {key[4:]} {value:.4f}{was}", flush=True
        )
    else:
        best_value = float(client.get_model_version(name, best).tags.get(key, "nan"))
        print(
            f"{name} version {version.version} (dev {key[4:]} {value:.4f}) does not beat the {CHAMPION}, "
            f"version {best} ({best_value:.4f}): the alias stays",
            flush=True,
        )
    return str(version.version)


def crown_best(client, name: str, key: str, tries: int = 20) -> str:
    """Set the champion alias of registered model `name` to its best version by the tag `key`
    (the earliest among equals), and return that version. A compare-and-set without a lock: it
    reads every version, sets the alias, then reads again and corrects it where another writer
    (a sweep finishing at the same moment) tagged a better version meanwhile. Whoever sets last
    reads after its set, so the alias ends on the best version either writer saw."""
    from mlflow.exceptions import MlflowException

    from tuning.finetune import rank

    chosen = None
    for attempt in range(tries):
        versions = client.search_model_versions(f"name='{name}'")
        best = max(versions, key=lambda v: (rank(float(v.tags.get(key, "nan"))), -int(v.version)))
        if str(best.version) == chosen:
            return chosen
        try:
            client.set_registered_model_alias(name, CHAMPION, best.version)
        except MlflowException:
            # Two writers creating the first alias at once: the store's unique key refuses the
            # second insert. The other writer's alias now exists, so read again and correct it.
            if attempt == tries - 1:
                raise
            chosen = None
            continue
        chosen = str(best.version)
    return str(chosen)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def log_json(client, run_id: str, obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    client.log_artifact(run_id, str(path))
