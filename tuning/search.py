"""Stage 3, sweep: Ray Tune over the fine-tuning hyperparameters and λ of a task, from a checkpoint.

    gpt1 sweep --task T --data DIR --checkpoint CKPT [--samples N] [--space YAML] [--set key=value ...]
               [--ablations] [--max-concurrent N] [--seed N] [--storage DIR] [--device auto|cpu|cuda]
               [--wait-minutes M] [--lstm-checkpoint CKPT]
    gpt1 sweep --task glue --data GLUE_DIR --checkpoint CKPT ...     every GLUE task under GLUE_DIR

The search space is tuning/configs/<task>.yaml (default.yaml where a task has none) or --space;
--set fixes a key. ASHA stops the trials that trail at each rung of evaluations (one evaluation
per epoch, or every eval_every steps). The checkpoint's weights go into Ray's object store once,
and so do the task's examples, read and checked before any trial starts. Each trial takes one GPU
on a cluster with GPUs, or a share of the CPUs.

--ablations adds the paper's rows, at the best trial's settings (the defaults, with --samples 0):
full (λ = 0.5), no auxiliary LM (λ = 0) and no pretraining (random weights, at the best trial's
own λ, so that it differs from the best trial in the pretraining alone). With --lstm-checkpoint,
Table 5's fourth row too: lstm, the pretrained LSTM (model/lstm.py) fine-tuned with the auxiliary
LM (λ = 0.5) at the best trial's other settings.

MLflow: a parent run per task in gpt1-finetune-<task> with the results table (CSV, Markdown), a
plot of the metric against λ and lr, and the best config; one child run per trial. The best
model is registered as gpt1-<task>.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import configio, errors, remote
from pipeline.runtime import add_wait_option, check_device, check_wait
from tuning.finetune import FinetuneConfig


@dataclass
class SweepOptions:
    """How to sweep a task: what `gpt1 sweep` takes besides the task, its data and the checkpoint."""

    samples: int = 8  # trials drawn from the search space; 0 with ablations: the ablation rows alone
    space: str | None = None  # a search-space YAML (default: tuning/configs/<task>.yaml)
    sets: list[str] = field(default_factory=list)  # KEY=VALUE: keys fixed over the whole sweep
    ablations: bool = False  # add the paper's rows: full, λ = 0, no pretraining
    seeds: int = 1  # each ablation row with this many seeds (0, 1, ...): mean ± std in the tables
    max_concurrent: int = 0  # trials at a time; 0 = one per GPU, or CPUs / 2
    grace_period: int = 1  # ASHA: evaluations before a trial can be stopped
    reduction_factor: int = 2  # ASHA: 1 / fraction of trials kept at each rung
    seed: int = 0  # the search space's draws, and the trials' seed unless a --set fixes it
    storage: str | None = None  # Ray Tune storage (default: $GPT1_STORAGE, else ./runs)
    device: str = "auto"  # auto (GPUs where the cluster has them or can add them), cpu or cuda
    wait_minutes: float = 30  # on a cluster with an autoscaler: how long to wait for the first trial's node
    lstm_checkpoint: str | None = None  # a pretrained LSTM: adds Table 5's lstm row to the ablations


# The paper's ablation rows: the λ each sets in the base config (None: the base config's own).
ABLATIONS = {"full": 0.5, "no_aux_lm": 0.0, "no_pretraining": None}
LSTM_ROW = {"lstm": 0.5}  # Table 5's LSTM row fine-tunes with the auxiliary LM, as the full row


def table_rows(opts: SweepOptions) -> dict:
    """The ablation rows this sweep runs, each with the λ it sets (None: the base config's own)."""
    return {**ABLATIONS, **(LSTM_ROW if opts.lstm_checkpoint else {})}


GLUE_DIRS = {
    "cola": "CoLA",
    "sst-2": "SST-2",
    "mrpc": "MRPC",
    "qqp": "QQP",
    "sts-b": "STS-B",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
    "wnli": "WNLI",
}


def trial(config: dict, *, task, splits, pretrained, lstm, device: str, threads: int) -> None:
    """One Tune trial: a fine-tuning run that reports every evaluation, with the model whenever
    it is the trial's best so far (so the best trial's best model can be registered). The lstm
    row fine-tunes `lstm`, the pretrained LSTM, in place of the Transformer."""
    import torch
    from ray import tune

    from tuning.finetune import finetune, rank

    if threads:
        torch.set_num_threads(threads)
    ablation = config.get("ablation")
    cfg = configio.apply(
        FinetuneConfig(), {k: v for k, v in config.items() if k != "ablation"}, "trial config"
    )
    if ablation == "lstm":  # the whole LSTM: transferring some layers is the Transformer's ablation
        pretrained, cfg = lstm, dataclasses.replace(cfg, n_transfer=-1)
    key, best = task.metrics[0], None
    with tempfile.TemporaryDirectory(prefix="gpt1-trial-") as tmp:
        out = Path(tmp) / "model"

        def report(metrics: dict, step: int) -> None:
            nonlocal best
            # finetune's own rule for a new best, when it has just saved the model to out
            if best is None or rank(metrics[key]) > rank(best):
                best = metrics[key]
                tune.report({**metrics, "step": step}, checkpoint=tune.Checkpoint.from_directory(str(out)))
            else:
                tune.report({**metrics, "step": step})

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


def resources(device: str, opts: SweepOptions) -> tuple[dict, int]:
    """(resources per trial, concurrent trials) for a device already chosen (cuda or cpu): a GPU
    per trial, as many at a time as the cluster has GPUs; else the CPUs split between the trials,
    so that they never oversubscribe the cores. On a cluster with an autoscaler, the first trial's
    node is asked for and waited for; the autoscaler adds the others' as the trials ask for them."""
    import ray

    from pipeline import cluster

    have = ray.cluster_resources()
    gpus, cpus, grows = int(have.get("GPU", 0)), int(have.get("CPU", 0)), cluster.can_grow()
    if device == "cuda":
        concurrent = opts.max_concurrent or gpus or (max(opts.samples, 1) if grows else 0)
        if not concurrent:
            raise errors.ConfigError(
                "--device cuda: the cluster has no GPUs, nor an autoscaler to add them; use --device cpu or auto"
            )
        per_trial = {"GPU": 1, "CPU": 1}
    else:
        # Two cores a trial by default: a trial's matrix products use them well, and the rest of
        # the machine stays free for other trials (and Ray's own work).
        concurrent = opts.max_concurrent or max(1, cpus // 2)
        # A trial runs on one node: never more cores than the largest node has.
        widest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
        per_trial = {"CPU": max(1, min(cpus // concurrent, int(widest)))}
    kind = "GPU" if device == "cuda" else "CPU"
    cluster.wait_for(kind, per_trial[kind], 1, "the sweep's trials", opts.wait_minutes)
    return per_trial, concurrent


def run_tuner(
    name: str,
    trainable,
    space: dict,
    samples: int,
    metric: str,
    scheduler,
    storage: str,
    callbacks: list,
    concurrent: int,
    seed: int,
):
    """Tune's experiment storage/name: run, or, where one of that name was cut off (its driver
    killed), restored from its own experiment state and run to its end: the trials that ended are
    not run again."""
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
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="max",
            num_samples=samples,
            scheduler=scheduler,
            # Seeded draws: the same command samples the same trials. The limit goes to the
            # generator itself: Tune ignores max_concurrent_trials beside a search_alg like this one.
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=concurrent),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=callbacks,
            # Tune's status tables only where asked for (gpt1 --verbose): the trials' own lines
            # (TrialRuns) say what a user follows.
            verbose=1 if os.environ.get("GPT1_VERBOSE") else 0,
            # Each trial keeps only its best model (the one reported with the highest metric).
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=metric, checkpoint_score_order="max"
            ),
        ),
    )
    return tuner.fit()


def rows_of(grid, metric: str, keys: list[str], runs: dict[str, str]) -> list[dict]:
    """One row per trial: its run, settings, best dev metric, evaluations and end."""
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        best = df[metric].max() if df is not None and metric in df else float("nan")
        trial_id = r.metrics.get("trial_id") if r.metrics else None
        rows.append(
            {
                "trial": trial_id,
                "run_id": runs.get(trial_id, ""),
                **{k: r.config.get(k) for k in keys},
                metric: float(best),
                "evaluations": 0 if df is None else len(df),
                "status": "error" if r.error else "done",
            }
        )
    return rows


def sweep_task(
    task,
    data_dir: Path,
    checkpoint: Path,
    opts: SweepOptions,
    uri: str,
    where: str | None = None,
    lstm_checkpoint: Path | None = None,
) -> dict:
    """Sweep one task; returns the parent run id, the best row and the ablation rows. `where` is
    the checkpoint's own address (an s3:// URI, say) where `checkpoint` is a copy of it;
    lstm_checkpoint, a local copy of opts.lstm_checkpoint."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.sample import Domain

    from pipeline.runtime import storage_path
    from pipeline.tracking import finish_run
    from tuning import tracking
    from tuning.finetune import Pretrained, check_config, load_splits
    from tuning.space import describe, load_space

    # --seed is the sweep's seed: its draws', and every trial's default (the space or a --set may fix another).
    defaults = dataclasses.replace(FinetuneConfig(), seed=opts.seed)
    space = load_space(defaults, task.name, opts.space, opts.sets, check=check_config)
    max_train = space["max_train"] if isinstance(space["max_train"], int) else 0
    splits = load_splits(task, data_dir, max_train)  # bad input ends here, before any trial
    pretrained = Pretrained.load(checkpoint)
    lstm = Pretrained.load(lstm_checkpoint) if lstm_checkpoint else None
    if lstm is not None and lstm.config.get("arch") != "lstm":
        raise errors.ConfigError(
            f"--lstm-checkpoint {opts.lstm_checkpoint}: holds a {lstm.config.get('arch', 'transformer')}; "
            "expected a pretrained LSTM (gpt1 pretrain --config lstm)"
        )
    device = opts.device  # chosen once for the whole sweep (_sweep)
    per_trial, concurrent = resources(device, opts)
    metric = task.metrics[0]
    rows_of_table = table_rows(opts)
    files = {
        s: data_dir / f
        for s, f in task.splits.items()
        if (data_dir / f).is_file() and not s.startswith("test")
    }

    stamp = f"{datetime.datetime.now():%Y%m%d-%H%M%S}"
    # What makes two sweeps the same sweep, besides their inputs: a rerun of a command whose
    # driver was killed resumes it (its parent run and Tune's experiments), not a second one.
    stable = {
        k: f"{type(v.get_sampler()).__name__} {v.domain_str}" if isinstance(v, Domain) else v
        for k, v in space.items()
    }  # a sampler's repr holds its address: its kind and range instead
    settings = {
        "space": stable,
        **{
            k: v
            for k, v in dataclasses.asdict(opts).items()
            if k not in ("max_concurrent", "storage", "device", "wait_minutes")
        },
    }
    client, exp, pid, tags, parent_name, resumed = tracking.start_parent(
        uri,
        task.name,
        f"sweep-{task.name}-{stamp}",
        checkpoint,
        files,
        {"samples": str(opts.samples), "ablations": str(opts.ablations)},
        where,
        settings,
    )
    stamp = parent_name.rsplit(f"sweep-{task.name}-", 1)[-1]  # a resumed sweep's own
    grids = math.prod(
        len(v["grid_search"]) for v in space.values() if isinstance(v, dict) and "grid_search" in v
    )
    print(
        f"sweep {task.name}: {opts.samples * grids} trial(s) over {describe(space) or 'a fixed config'}"
        f"{f' + {len(rows_of_table)} ablation rows' if opts.ablations else ''}; {len(splits['train']):,} train / "
        f"{len(splits['dev']):,} dev examples; {concurrent} at a time, each with {per_trial}; "
        f"MLflow parent run {pid}{' (resumed)' if resumed else ''}",
        flush=True,
    )
    # Trials are named by the keys the space varies (lr=2.1e-4 λ=0.5 ep=3), ablation rows by row and seed.
    varying = [k for k, v in space.items() if isinstance(v, (dict, Domain))]
    total = opts.samples * grids + (len(rows_of_table) * opts.seeds if opts.ablations else 0)
    row_tags = {}
    if lstm_checkpoint is not None:
        from pipeline.tracking import checkpoint_lineage

        data_tags = {k: v for k, v in tags.items() if k.startswith("data_sha256.")}
        row_tags["lstm"] = {**data_tags, **checkpoint_lineage(client, lstm_checkpoint, opts.lstm_checkpoint)}
    callback = tracking.TrialRuns(
        uri, exp, pid, tags, [*task.metrics, "train_loss", "epoch"], varying, total, row_tags=row_tags
    )
    # with_parameters puts each object into Ray's object store once; every trial reads it there.
    trainable = tune.with_resources(
        tune.with_parameters(
            trial,
            task=task,
            splits=splits,
            pretrained=pretrained,
            lstm=lstm,
            device=device,
            threads=0 if device == "cuda" else per_trial["CPU"],
        ),
        per_trial,
    )
    storage = storage_path(opts.storage)
    keys = ["lr", "batch_size", "epochs", "warmup", "clf_dropout", "lm_coef", "n_transfer"]
    status = "FAILED"
    try:
        # Without trials, the ablations run at the defaults and the fixed keys.
        rows, best_result = [], None
        best_config = {k: v for k, v in space.items() if not isinstance(v, (dict, Domain))}
        if opts.samples:
            asha = ASHAScheduler(
                time_attr="training_iteration",
                grace_period=opts.grace_period,
                reduction_factor=opts.reduction_factor,
                max_t=10_000,
            )
            grid = run_tuner(
                f"sweep-{task.name}-{stamp}",
                trainable,
                space,
                opts.samples,
                metric,
                asha,
                storage,
                [callback],
                concurrent,
                opts.seed,
            )
            rows = rows_of(grid, metric, keys, callback.runs)
            best_result = grid.get_best_result(metric=metric, mode="max", scope="all")
            best_config = dict(best_result.config)
        ablation_rows = []
        if opts.ablations:
            base = {**dataclasses.asdict(FinetuneConfig()), **best_config}
            base_lm = base["lm_coef"]
            ab_space = {
                **base,
                "ablation": tune.grid_search(list(rows_of_table)),
                "lm_coef": tune.sample_from(
                    lambda config: (
                        base_lm
                        if rows_of_table[config["ablation"]] is None
                        else rows_of_table[config["ablation"]]
                    )
                ),
            }
            if opts.seeds > 1:  # the seed of the weights drawn, the data order and the dropout masks
                ab_space["seed"] = tune.grid_search(list(range(base["seed"], base["seed"] + opts.seeds)))
            ab = run_tuner(
                f"ablations-{task.name}-{stamp}",
                trainable,
                ab_space,
                1,
                metric,
                None,
                storage,
                [callback],
                concurrent,
                opts.seed,
            )
            ablation_rows = rows_of(ab, metric, ["ablation", "seed", *keys], callback.runs)
            if best_result is None:
                best_result = ab.get_best_result(metric=metric, mode="max", scope="all")
        out = tracking.log_parent(client, pid, task, metric, rows, ablation_rows, best_result, callback.runs)
        status = "FINISHED"
        return out
    except KeyboardInterrupt:
        status = "KILLED"
        raise errors.Interrupted(
            f"sweep {task.name} interrupted; the trials so far are in MLflow under parent "
            f"run {pid} (marked KILLED); the same command resumes the sweep"
        ) from None
    finally:
        finish_run(uri, pid, status)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        required=True,
        help="a task name (sst-2, rte, mnli, race, ...), glue for all nine, or any name for a --data directory holding a task.yaml",
    )
    p.add_argument(
        "--data",
        required=True,
        help="the task's directory (for glue: the directory holding CoLA/, SST-2/, ...)",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a model directory with tokenizer.json (a pretraining checkpoint), or a pretraining run's "
        "directory (its newest checkpoint); local or s3://",
    )
    p.add_argument("--samples", type=int, default=8, help="trials drawn from the search space (default 8)")
    p.add_argument("--space", help="a search-space YAML (default: tuning/configs/<task>.yaml)")
    configio.add_set_option(p, FinetuneConfig, "fix a key")
    p.add_argument(
        "--ablations", action="store_true", help="add the paper's rows: full, λ = 0, no pretraining"
    )
    p.add_argument(
        "--seeds", type=int, default=1, help="run each ablation row with N seeds; the tables give mean ± std"
    )
    p.add_argument(
        "--max-concurrent", type=int, default=0, help="trials at a time (default: one per GPU, or CPUs / 2)"
    )
    p.add_argument(
        "--grace-period", type=int, default=1, help="ASHA: evaluations before a trial can be stopped"
    )
    p.add_argument(
        "--reduction-factor", type=int, default=2, help="ASHA: 1 / fraction of trials kept at each rung"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="the run's seed (default: 0): the search space's draws, and every trial's (ablation rows: "
        "N, N+1, ...); a --set seed=M fixes the trials' alone",
    )
    p.add_argument(
        "--storage",
        help="Ray Tune storage: a directory, NFS, or s3://... (default: $GPT1_STORAGE, else ./runs)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (GPUs where the cluster has them or its autoscaler adds them), cpu, or cuda (never CPU)",
    )
    p.add_argument(
        "--lstm-checkpoint",
        metavar="CKPT",
        help="a pretrained LSTM (gpt1 pretrain --config lstm), or its run's directory: adds Table 5's "
        "lstm row to --ablations",
    )
    add_wait_option(p)


def newest_of_run(checkpoint) -> str:
    """--checkpoint as given, or, where it names a pretraining run (a directory or a URI holding
    checkpoint_NNNNNNNNN directories), the run's newest complete checkpoint."""
    from pipeline.train.checkpoint import latest_checkpoint

    newest = latest_checkpoint(str(checkpoint).rstrip("/"))
    if newest is None:
        return checkpoint
    print(f"--checkpoint {checkpoint}: a pretraining run; its newest checkpoint is {newest[0]}", flush=True)
    return newest[0]


def sweep(task_name: str, data, checkpoint, opts: SweepOptions) -> dict[str, dict]:
    """Sweep a task (or, for task_name glue, every GLUE task under data); returns each task's
    sweep_task result. Every input and every search space is checked before Ray, MLflow or
    Tune writes anything. data and checkpoint may be directories or URIs on object storage."""
    if opts.samples < 0 or (opts.samples == 0 and not opts.ablations):
        raise errors.ConfigError("--samples: expected at least 1 (or 0 with --ablations)")
    if opts.seeds < 1:
        raise errors.ConfigError(f"--seeds {opts.seeds}: expected at least 1")
    if opts.lstm_checkpoint and not opts.ablations:
        raise errors.ConfigError("--lstm-checkpoint adds a row to the ablations: add --ablations")
    check_device(opts.device)
    check_wait(opts.wait_minutes)
    checkpoint = newest_of_run(checkpoint)
    # On object storage, each is copied to this machine once; the trials read them from Ray's
    # object store, so no node needs a shared file system.
    lstm = newest_of_run(opts.lstm_checkpoint) if opts.lstm_checkpoint else None
    with (
        remote.fetched(data, "a task's directory") as data,
        remote.fetched(checkpoint, "a model directory") as local_checkpoint,
        remote.fetched(lstm, "a model directory") if lstm else contextlib.nullcontext() as local_lstm,
    ):
        return _sweep(task_name, data, local_checkpoint, str(checkpoint).rstrip("/"), opts, local_lstm)


def _sweep(
    task_name: str, data: Path, checkpoint: Path, where: str, opts: SweepOptions, lstm: Path | None = None
) -> dict[str, dict]:
    from pipeline import cluster
    from pipeline.data.tasks import from_directory, get
    from pipeline.runtime import ray_init
    from pipeline.tracking import check_store, tracking_uri
    from tuning.finetune import check_config
    from tuning.space import load_space

    for option, d in (("--checkpoint", checkpoint), ("--lstm-checkpoint", lstm)):
        if d is not None and not d.is_dir():
            raise errors.ConfigError(f"{option} {d}: no such model directory")
    if task_name.lower() == "glue":
        jobs = [(get(t), data / d) for t, d in GLUE_DIRS.items() if (data / d).is_dir()]
        missing = [d for d in GLUE_DIRS.values() if not (data / d).is_dir()]
        if not jobs:
            raise errors.ConfigError(
                f"{data}: holds none of the GLUE task directories ({', '.join(GLUE_DIRS.values())})"
            )
        if missing:
            print(f"{data}: no {', '.join(missing)}; sweeping the other {len(jobs)} GLUE task(s)", flush=True)
    else:
        jobs = [(from_directory(task_name, data), data)]
    for task, _ in jobs:
        load_space(FinetuneConfig(), task.name, opts.space, opts.sets, check=check_config)
    uri = tracking_uri()
    check_store(uri, skippable=False)
    ray_init()
    errors.sigterm_as_interrupt()  # again: ray.init put its own handler in place
    opts = dataclasses.replace(opts, device="cuda" if cluster.wants_gpus(opts.device) else "cpu")
    return {task.name: sweep_task(task, d, checkpoint, opts, uri, where, lstm) for task, d in jobs}


def run(args: argparse.Namespace) -> None:
    from pipeline.tracking import TRAINING_VIEW, tracking_uri

    opts = SweepOptions(
        samples=args.samples,
        space=args.space,
        sets=args.set,
        ablations=args.ablations,
        max_concurrent=args.max_concurrent,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        seed=args.seed,
        storage=args.storage,
        device=args.device,
        seeds=args.seeds,
        wait_minutes=args.wait_minutes,
        lstm_checkpoint=args.lstm_checkpoint,
    )
    results = sweep(args.task, args.data, args.checkpoint, opts)
    print()
    print("| task | metric | best dev | trials | parent run |")
    print("|---|---|---:|---:|---|")
    for name, r in results.items():
        print(f"| {name} | {r['metric']} | {r['best']:.4f} | {len(r['rows'])} | {r['parent_run_id']} |")
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):  # a tracking server: its own UI
        print(f"\ncompare them: {uri.rstrip('/')}/#/experiments{TRAINING_VIEW}")
    else:
        print(
            f"\ncompare them: mlflow ui --backend-store-uri {uri}, then "
            f"http://127.0.0.1:5000/#/experiments{TRAINING_VIEW}"
        )


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("sweep", __doc__, add_arguments, run, argv)
