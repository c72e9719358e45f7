"""The sweep's trials on Ray Tune: what runs in each trial, and the run that holds them.

- trial: one fine-tuning run of a task's config, reporting every evaluation to Tune, with its
  model only where it beats the task's best so far in the sweep (a SweepBest actor).
- draw / interleave: the configs of a run, drawn beforehand as a pure function of (space,
  samples, seed), several tasks' taken in turn.
- run_tuner: one Tune run over those configs, resumed where its driver was cut off.
- rows_of / best_of: a run's results as the sweep's table rows, and its best result.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

from pipeline import configio, env
from tuning.finetune_config import FinetuneConfig


def trial(config: dict, *, tasks, pretrained, lstm, best, device: str, threads: int) -> None:
    """One Tune trial: a fine-tuning run of config["task"] (one of `tasks`: name -> (task, its
    splits)) that reports every evaluation, with `objective` (the task's dev metric, NaN ranked
    last) for the scheduler. Its model goes with a report only where the evaluation beats every
    earlier one of the task in the sweep (`best`, a SweepBest actor): the best trial's best model
    is then among the uploads, and a model no better than one already kept is never uploaded. The
    lstm row fine-tunes `lstm`, the pretrained LSTM, in place of the Transformer."""
    import ray
    import torch
    from ray import tune

    from tuning.finetune import finetune, rank

    if threads:
        torch.set_num_threads(threads)
    task, splits = tasks[config["task"]]
    ablation = config.get("ablation")
    cfg = configio.apply(
        FinetuneConfig(), {k: v for k, v in config.items() if k not in ("ablation", "task")}, "trial config"
    )
    if ablation == "lstm":  # the whole LSTM: transferring some layers is the Transformer's ablation
        pretrained, cfg = lstm, dataclasses.replace(cfg, n_transfer=-1)
    key, mine = task.metrics[0], None
    with tempfile.TemporaryDirectory(prefix="gpt1-trial-") as tmp:
        out = Path(tmp) / "model"

        def report(metrics: dict, step: int) -> None:
            nonlocal mine
            metrics = {**metrics, "step": step, "objective": rank(metrics[key])}
            # finetune's own rule for a new best, when it has just saved the model to out
            if (mine is None or rank(metrics[key]) > rank(mine)) and ray.get(
                best.offer.remote(task.name, rank(metrics[key]))
            ):
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(out)))
            else:
                tune.report(metrics)
            if mine is None or rank(metrics[key]) > rank(mine):
                mine = metrics[key]

        finetune(
            task,
            splits,
            pretrained,
            cfg,
            from_scratch=ablation == "no_pretraining",
            report=report,
            out=out,
            device=device,
        )


def draw(space: dict, samples: int, seed: int) -> list[dict]:
    """`samples` configs drawn from a search space (each with every value of its grids), as Tune
    draws them: a pure function of (space, samples, seed)."""
    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    state = np.random.RandomState(seed)
    return [spec for _ in range(samples) for _, spec in generate_variants(space, random_state=state)]


def interleave(per_task: list[list[dict]]) -> list[dict]:
    """Every task's configs, taken in turn: each task's first trials start first, so that none
    waits for another's to end."""
    out = []
    for i in range(max(map(len, per_task), default=0)):
        out += [configs[i] for configs in per_task if i < len(configs)]
    return out


def run_tuner(
    name: str,
    trainable,
    points: list[dict],
    scheduler,
    storage: str,
    callbacks: list,
    concurrent: int,
):
    """Tune's experiment storage/name over the trials' configs (`points`, drawn beforehand, of
    one task or several): run, or, where one of that name was cut off (its driver killed),
    restored from its own experiment state and run to its end: the trials that ended are not
    run again. Trials are judged on `objective`, each task's dev metric."""
    import os

    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Each trial checkpoints whenever its dev metric improves, which makes Tune warn, at every
    # few evaluations, that experiment snapshots are frequent; they are small here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ctrl-C reaches the sweep as KeyboardInterrupt: Tune's own handler would end the run early and
    # hand back a half-empty result that the tables cannot be made from.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    path = f"{storage}/{name}"
    if tune.Tuner.can_restore(path):
        print(f"{name}: resuming Tune's experiment at {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        # The restored RunConfig holds the callbacks pickled when the experiment started, whose
        # MLflow runs are the dead driver's: this driver's own take their place.
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner.fit()
    # Every key a constant, each trial's values from its point: configs of several tasks (each
    # with its own space) in one run. The limit goes to the generator itself: Tune ignores
    # max_concurrent_trials beside a search_alg like this one.
    keys = sorted({k for p in points for k in p})
    tuner = tune.Tuner(
        trainable,
        param_space={k: points[0].get(k) for k in keys},
        tune_config=tune.TuneConfig(
            metric="objective",
            mode="max",
            num_samples=len(points),
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(
                points_to_evaluate=[{k: p.get(k) for k in keys} for p in points], max_concurrent=concurrent
            ),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=callbacks,
            # Tune's status tables only where asked for (gpt1 --verbose): the trials' own lines
            # (TrialRuns) say what a user follows.
            verbose=1 if env.verbose() else 0,
            # Each trial keeps only its best model (the one reported with the highest metric).
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="objective", checkpoint_score_order="max"
            ),
        ),
    )
    return tuner.fit()


def rows_of(grid, metric: str, keys: list[str], runs: dict[str, str]) -> list[dict]:
    """One row per trial: its run, settings, best dev metric (and the task's other evaluations at
    that best: MNLI's mismatched, RACE's parts, public test labels), evaluations and end."""
    from tuning.finetune import is_extra

    rows = []
    for r in grid:
        df = r.metrics_dataframe
        scored = df is not None and metric in df and df[metric].notna().any()
        best = df[metric].max() if scored else float("nan")
        at_best = df.loc[df[metric].idxmax()] if scored else {}
        trial_id = r.metrics.get("trial_id") if r.metrics else None
        rows.append(
            {
                "trial": trial_id,
                "run_id": runs.get(trial_id, ""),
                **{k: r.config.get(k) for k in keys},
                metric: float(best),
                **{c: float(at_best[c]) for c in (df.columns if scored else ()) if is_extra(c, [metric])},
                "evaluations": 0 if df is None else len(df),
                "status": "error" if r.error else "done",
            }
        )
    return rows


def best_of(results: list, metric: str):
    """The result whose best evaluation is the highest (NaN last), as Tune's scope="all" picks it,
    among those that kept a model: a trial uploads its model only where it beats the task's best
    so far (SweepBest), so of trials that tie at the top, the first to reach it holds the model."""
    from tuning.finetune import rank

    def top(r) -> float:
        df = r.metrics_dataframe
        return -math.inf if df is None or metric not in df else max(map(rank, df[metric]))

    return max([r for r in results if r.best_checkpoints] or results, key=top)
