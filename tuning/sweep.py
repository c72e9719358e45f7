"""Stage 3, sweep: Ray Tune over the fine-tuning hyperparameters and λ of a task, from a checkpoint.

    gpt1 sweep --task T --data DIR --checkpoint CKPT [--samples N] [--space YAML] [--set key=value ...]
               [--ablations] [--max-concurrent N] [--seed N] [--storage DIR] [--device auto|cpu|cuda]
    gpt1 sweep --task glue --data GLUE_DIR --checkpoint CKPT ...     every GLUE task under GLUE_DIR

The search space is tuning/configs/<task>.yaml (default.yaml where a task has none) or --space;
--set fixes a key. ASHA stops the trials that trail at each rung of evaluations (one evaluation
per epoch, or every eval_every steps). The checkpoint's weights go into Ray's object store once,
and so do the task's examples, read and checked before any trial starts. Each trial takes one GPU
on a cluster with GPUs, or a share of the CPUs.

--ablations adds the paper's rows, at the best trial's settings (the defaults, with --samples 0):
full (λ = 0.5), no auxiliary LM (λ = 0) and no pretraining (random weights, at the best trial's
own λ, so that it differs from the best trial in the pretraining alone).

MLflow: a parent run per task in gpt1-finetune-<task> with the results table (CSV, Markdown), a
plot of the metric against λ and lr, and the best config; one child run per trial. The best
model is registered as gpt1-<task>.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: `ray job submit ... -- python tuning/sweep.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import config as configlib
from tuning.finetune import FinetuneConfig

# The paper's ablation rows: the λ each sets in the base config (None: the base config's own).
ABLATIONS = {"full": 0.5, "no_aux_lm": 0.0, "no_pretraining": None}
GLUE_DIRS = {"cola": "CoLA", "sst-2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "sts-b": "STS-B",
             "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}


def trial(config: dict, *, task, splits, pretrained, device: str, threads: int) -> None:
    """One Tune trial: a fine-tuning run that reports every evaluation, with the model whenever
    it is the trial's best so far (so the best trial's best model can be registered)."""
    import torch
    from ray import tune

    from tuning.finetune import finetune

    if threads:
        torch.set_num_threads(threads)
    ablation = config.get("ablation")
    cfg = configlib.apply(FinetuneConfig(), {k: v for k, v in config.items() if k != "ablation"}, "trial config")
    key, best = task.metrics[0], -math.inf
    with tempfile.TemporaryDirectory(prefix="gpt1-trial-") as tmp:
        out = Path(tmp) / "model"

        def report(metrics: dict, step: int) -> None:
            nonlocal best
            if metrics[key] > best:  # finetune saved it to out just before
                best = metrics[key]
                tune.report({**metrics, "step": step}, checkpoint=tune.Checkpoint.from_directory(str(out)))
            else:
                tune.report({**metrics, "step": step})

        finetune(task, splits, pretrained, cfg, from_scratch=ablation == "no_pretraining", report=report,
                 out=out, device=device)


def resources(device: str, max_concurrent: int) -> tuple[dict, int, str]:
    """(resources per trial, concurrent trials, device): a GPU per trial where the cluster has
    GPUs; else the CPUs split between the trials, so that they never oversubscribe the cores."""
    import ray

    have = ray.cluster_resources()
    gpus, cpus = int(have.get("GPU", 0)), int(have.get("CPU", 1))
    if device == "cuda" or (device == "auto" and gpus):
        concurrent = max_concurrent or gpus
        if not concurrent:
            raise configlib.ConfigError("--device cuda: the cluster has no GPUs now; pass --max-concurrent N "
                                        "and the autoscaler starts GPU nodes for the trials")
        return {"GPU": 1, "CPU": 1}, concurrent, "cuda"
    if device not in ("auto", "cpu"):
        raise configlib.ConfigError(f"--device {device!r}: expected auto, cpu or cuda")
    # Two cores a trial by default: a trial's matrix products use them well, and the rest of
    # the machine stays free for other trials (and Ray's own work).
    concurrent = max_concurrent or max(1, cpus // 2)
    return {"CPU": max(1, cpus // concurrent)}, concurrent, "cpu"


def run_tuner(name: str, trainable, space: dict, samples: int, metric: str, scheduler, storage: str,
              callbacks: list, concurrent: int, seed: int):
    import os

    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Each trial checkpoints whenever its dev metric improves, which makes Tune warn, at every
    # few evaluations, that experiment snapshots are frequent; they are small here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ctrl-C reaches the sweep as KeyboardInterrupt: Tune's own handler would end the run early and
    # hand back a half-empty result that the tables cannot be made from.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=samples, scheduler=scheduler,
                                    max_concurrent_trials=concurrent,
                                    # Seeded draws: the same command samples the same trials.
                                    search_alg=BasicVariantGenerator(random_state=seed)),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, callbacks=callbacks, verbose=1,
            # Each trial keeps only its best model (the one reported with the highest metric).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric,
                                                    checkpoint_score_order="max")))
    return tuner.fit()


def rows_of(grid, metric: str, keys: list[str], runs: dict[str, str]) -> list[dict]:
    """One row per trial: its run, settings, best dev metric, evaluations and end."""
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        best = df[metric].max() if df is not None and metric in df else float("nan")
        trial_id = r.metrics.get("trial_id") if r.metrics else None
        rows.append({"trial": trial_id, "run_id": runs.get(trial_id, ""), **{k: r.config.get(k) for k in keys},
                     metric: float(best), "evaluations": 0 if df is None else len(df),
                     "status": "error" if r.error else "done"})
    return rows


def sweep_task(task, data_dir: Path, checkpoint: Path, args, uri: str) -> dict:
    """Sweep one task; returns the parent run id, the best row and the ablation rows."""
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.sample import Domain
    from tokenizers import Tokenizer

    from pipeline.runtime import storage_path
    from pipeline.tracking import experiment_id
    from tuning import tracking
    from tuning.encode import Encoder
    from tuning.finetune import Pretrained, load_splits
    from tuning.space import describe, load_space

    from tuning.finetune import check_config
    space = load_space(FinetuneConfig(), task.name, args.space, args.set, check=check_config)
    max_train = space["max_train"] if isinstance(space["max_train"], int) else 0
    splits = load_splits(task, data_dir, max_train)  # bad input ends here, before any trial
    pretrained = Pretrained.load(checkpoint)
    # A vocabulary without the special tokens is refused here, not in every trial.
    Encoder(Tokenizer.from_str(pretrained.tokenizer), task.transformation, 1, pretrained.config["vocab_size"])
    per_trial, concurrent, device = resources(args.device, args.max_concurrent)
    metric = task.metrics[0]
    files = {s: data_dir / f for s, f in task.splits.items() if (data_dir / f).is_file() and not s.startswith("test")}

    client = MlflowClient(uri)
    exp = experiment_id(client, f"gpt1-finetune-{task.name}")
    tags = tracking.lineage(client, checkpoint, files)
    stamp = f"{datetime.datetime.now():%Y%m%d-%H%M%S}"
    parent = client.create_run(exp, run_name=f"sweep-{task.name}-{stamp}",
                               tags={**tags, "task": task.name, "samples": str(args.samples),
                                     "ablations": str(args.ablations)})
    pid = parent.info.run_id
    grids = math.prod(len(v["grid_search"]) for v in space.values() if isinstance(v, dict) and "grid_search" in v)
    print(f"sweep {task.name}: {args.samples * grids} trial(s) over {describe(space) or 'a fixed config'}"
          f"{' + 3 ablation rows' if args.ablations else ''}; {len(splits['train']):,} train / "
          f"{len(splits['dev']):,} dev examples; {concurrent} at a time, each with {per_trial}; "
          f"MLflow parent run {pid}", flush=True)
    callback = tracking.TrialRuns(uri, exp, pid, tags, [*task.metrics, "train_loss", "epoch"])
    # By module name, also when this file runs as a script, so workers import it rather than
    # unpickle a copy of __main__.
    from tuning.sweep import trial as trial_fn
    # with_parameters puts each object into Ray's object store once; every trial reads it there.
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, task=task, splits=splits, pretrained=pretrained, device=device,
                             threads=0 if device == "cuda" else per_trial["CPU"]), per_trial)
    storage = storage_path(args.storage)
    keys = ["lr", "batch_size", "epochs", "warmup", "clf_dropout", "lm_coef"]
    status = "FAILED"
    try:
        # Without trials, the ablations run at the defaults and the fixed keys.
        rows, best_result = [], None
        best_config = {k: v for k, v in space.items() if not isinstance(v, (dict, Domain))}
        if args.samples:
            asha = ASHAScheduler(time_attr="training_iteration", grace_period=args.grace_period,
                                 reduction_factor=args.reduction_factor, max_t=10_000)
            grid = run_tuner(f"sweep-{task.name}-{stamp}", trainable, space, args.samples, metric, asha,
                             storage, [callback], concurrent, args.seed)
            rows = rows_of(grid, metric, keys, callback.runs)
            best_result = grid.get_best_result(metric=metric, mode="max", scope="all")
            best_config = dict(best_result.config)
        ablation_rows = []
        if args.ablations:
            base = {**dataclasses.asdict(FinetuneConfig()), **best_config}
            base_lm = base["lm_coef"]
            ab_space = {**base, "ablation": tune.grid_search(list(ABLATIONS)), "lm_coef": tune.sample_from(
                lambda spec: base_lm if ABLATIONS[spec.config["ablation"]] is None else ABLATIONS[spec.config["ablation"]])}
            ab = run_tuner(f"ablations-{task.name}-{stamp}", trainable, ab_space, 1, metric, None, storage,
                           [callback], concurrent, args.seed)
            ablation_rows = rows_of(ab, metric, ["ablation", *keys], callback.runs)
            if best_result is None:
                best_result = ab.get_best_result(metric=metric, mode="max", scope="all")
        out = _log_parent(client, pid, task, metric, rows, ablation_rows, best_result, callback.runs)
        status = "FINISHED"
        return out
    except KeyboardInterrupt:
        status = "KILLED"
        raise configlib.Interrupted(f"sweep {task.name} interrupted; the trials so far are in MLflow under parent "
                                    f"run {pid} (marked KILLED); running the command again starts a new sweep") from None
    finally:
        client.set_terminated(pid, status)


def _log_parent(client, pid: str, task, metric: str, rows, ablation_rows, best_result, runs) -> dict:
    """The parent run's table, plot, best config and metrics; the best model registered."""
    from tuning import tracking

    best_trial = best_result.metrics["trial_id"]
    best_ckpt = best_result.get_best_checkpoint(metric=metric, mode="max")
    with tempfile.TemporaryDirectory(prefix="gpt1-sweep-") as tmp:
        tmp = Path(tmp)
        if rows:
            ranked = sorted(rows, key=lambda r: -r[metric] if tracking.finite(r[metric]) else math.inf)
            for f in tracking.results_table(ranked, tmp / "results"):
                client.log_artifact(pid, str(f))
            client.log_artifact(pid, str(tracking.plot([r for r in rows if tracking.finite(r[metric])], metric,
                                                       tmp / "metric_vs_lambda_and_lr.png",
                                                       f"{task.name}: {len(rows)} trials")))
        if ablation_rows:
            for f in tracking.results_table(ablation_rows, tmp / "ablations"):
                client.log_artifact(pid, str(f))
            for r in ablation_rows:
                client.log_metric(pid, f"ablation_{r['ablation']}_{metric}", r[metric])
        tracking.log_json(client, pid, dict(best_result.config), tmp / "best_config.json")
    best_value = max(best_result.metrics_dataframe[metric])
    client.log_metric(pid, f"best_{metric}", best_value)
    client.set_tag(pid, "best_trial_run_id", runs[best_trial])
    with best_ckpt.as_directory() as d:
        version = tracking.register_best(client, task.name, runs[best_trial], Path(d))
    client.set_tag(pid, "registered_model", f"gpt1-{task.name}/{version}")
    print(f"sweep {task.name}: best dev {metric} {best_value:.4f} (trial {best_trial}); registered "
          f"gpt1-{task.name} version {version}", flush=True)
    return {"parent_run_id": pid, "metric": metric, "best": best_value, "best_config": best_result.config, "rows": rows,
            "ablations": ablation_rows, "model_version": version}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="a task name (sst-2, rte, mnli, race, ...), glue for all nine, or any name for a --data directory holding a task.yaml")
    p.add_argument("--data", required=True, help="the task's directory (for glue: the directory holding CoLA/, SST-2/, ...)")
    p.add_argument("--checkpoint", required=True, help="a model directory with tokenizer.json (a pretraining checkpoint)")
    p.add_argument("--samples", type=int, default=8, help="trials drawn from the search space (default 8)")
    p.add_argument("--space", help="a search-space YAML (default: tuning/configs/<task>.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"fix a key; keys: {', '.join(f.name for f in dataclasses.fields(FinetuneConfig))}")
    p.add_argument("--ablations", action="store_true", help="add the paper's rows: full, λ = 0, no pretraining")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at a time (default: one per GPU, or CPUs / 2)")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: evaluations before a trial can be stopped")
    p.add_argument("--reduction-factor", type=int, default=2, help="ASHA: 1 / fraction of trials kept at each rung")
    p.add_argument("--seed", type=int, default=0, help="seed of the search space's draws (default 0)")
    p.add_argument("--storage", help="Ray Tune storage: a directory, NFS, or s3://... (default: $GPT1_STORAGE, else ./runs)")
    p.add_argument("--device", default="auto", help="auto (GPUs when the cluster has them), cpu, or cuda")


def run(args: argparse.Namespace) -> None:
    from pipeline.runtime import ray_init
    from pipeline.tracking import tracking_uri
    from tuning.tasks import from_directory, get

    if args.samples < 0 or (args.samples == 0 and not args.ablations):
        raise configlib.ConfigError("--samples: expected at least 1 (or 0 with --ablations)")
    data, checkpoint = Path(args.data).absolute(), Path(args.checkpoint).absolute()
    if not checkpoint.is_dir():
        raise configlib.ConfigError(f"--checkpoint {checkpoint}: no such model directory")
    if args.task.lower() == "glue":
        jobs = [(get(t), data / d) for t, d in GLUE_DIRS.items() if (data / d).is_dir()]
        missing = [d for d in GLUE_DIRS.values() if not (data / d).is_dir()]
        if not jobs:
            raise configlib.ConfigError(f"{data}: holds none of the GLUE task directories ({', '.join(GLUE_DIRS.values())})")
        if missing:
            print(f"{data}: no {', '.join(missing)}; sweeping the other {len(jobs)} GLUE task(s)", flush=True)
    else:
        jobs = [(from_directory(args.task, data), data)]
    from tuning.finetune import check_config
    from tuning.space import load_space
    for task, _ in jobs:  # every space in range before Ray, MLflow or Tune writes anything
        load_space(FinetuneConfig(), task.name, args.space, args.set, check=check_config)
    from pipeline.tracking import check_store
    uri = tracking_uri()
    check_store(uri)
    ray_init()
    configlib.sigterm_as_interrupt()  # again: ray.init put its own handler in place
    results = {task.name: sweep_task(task, d, checkpoint, args, uri) for task, d in jobs}
    print()
    print("| task | metric | best dev | trials | parent run |")
    print("|---|---|---:|---:|---|")
    for name, r in results.items():
        print(f"| {name} | {r['metric']} | {r['best']:.4f} | {len(r['rows'])} | {r['parent_run_id']} |")
    print(f"\ncompare them: mlflow ui --backend-store-uri {uri}")


def main(argv: list[str] | None = None) -> int:
    return configlib.stage_main("sweep", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
