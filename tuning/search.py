"""Stage 3, sweep: Ray Tune over the fine-tuning hyperparameters and λ of a task, from a checkpoint.

    gpt1 sweep --task T --data DIR --checkpoint CKPT [--samples N] [--space YAML] [--set key=value ...]
               [--ablations] [--max-concurrent N] [--seed N] [--storage DIR] [--device auto|cpu|cuda]
               [--wait-minutes M] [--lstm-checkpoint CKPT]
    gpt1 sweep --task glue --data GLUE_DIR --checkpoint CKPT ...     every GLUE task under GLUE_DIR

The search space is tuning/configs/<task>.yaml (default.yaml where a task has none) or --space;
--set fixes a key. ASHA stops the trials that trail at each rung of evaluations, each task's
apart (one evaluation per epoch, or every --eval-every steps: 1,000 by default where an epoch is
over 2,000 steps). The checkpoint's weights go into Ray's object store once, and so do the tasks'
examples, read and checked before any trial starts. Each trial takes --gpus-per-trial of a GPU
(a fraction shares one) on a cluster with GPUs, or --cpus-per-trial cores. All the tasks' trials
run in one Tune run, their ablation rows in another, so no GPU idles while a task's last trials
end. A trial uploads its model only where it beats the task's best so far in the sweep.

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
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import cluster, configio, errors, remote
from pipeline.console import script
from pipeline.data.tasks import from_directory, get
from pipeline.model_source import CHECKPOINT_HELP, local_model
from pipeline.runtime import add_wait_option, check_device, check_wait, ray_init, storage_path
from pipeline.tracking import TRAINING_VIEW, check_store, checkpoint_lineage, finish_run, tracking_uri
from tuning.finetune_config import FinetuneConfig
from tuning.trials import best_of, draw, interleave, rows_of, run_tuner, trial


@dataclass
class SweepOptions:
    """How to sweep a task: what `gpt1 sweep` takes besides the task, its data and the checkpoint."""

    samples: int = 8  # trials drawn from the search space; 0 with ablations: the ablation rows alone
    space: str | None = None  # a search-space YAML (default: tuning/configs/<task>.yaml)
    sets: list[str] = field(default_factory=list)  # KEY=VALUE: keys fixed over the whole sweep
    ablations: bool = False  # add the paper's rows: full, λ = 0, no pretraining
    seeds: int = 1  # each ablation row with this many seeds (0, 1, ...): mean ± std in the tables
    max_concurrent: int = 0  # trials at a time; 0 = as many as gpus_per_trial / cpus_per_trial allow
    # A fraction shares a GPU (0.5 runs two trials on each); 0 = by task (gpu_share): a quarter
    # a sequence an example feeds the model, so RACE's 4 choices take a whole GPU, SST-2 a quarter.
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 0.0  # on CPU (fractions allowed); 0 = 2, or the CPUs / max_concurrent
    eval_every: int = -1  # steps between a trial's evaluations (ASHA's rungs); -1 = auto (run_length)
    grace_period: int = 1  # ASHA: evaluations before a trial can be stopped
    reduction_factor: int = 2  # ASHA: 1 / fraction of trials kept at each rung
    seed: int = 0  # the search space's draws, and the trials' seed unless a --set fixes it
    storage: str | None = None  # Ray Tune storage (default: $GPT1_STORAGE, else ./runs)
    device: str = "auto"  # auto (GPUs where the cluster has them or can add them), cpu or cuda
    wait_minutes: float = 30  # on a cluster with an autoscaler: how long to wait for the first trial's node
    lstm_checkpoint: str | None = None  # a pretrained LSTM: adds Table 5's lstm row to the ablations


# The options `gpt1 sweep` makes from SweepOptions' fields (configio.add_field_options).
OPTIONS = [
    "samples",
    "space",
    "ablations",
    "seeds",
    "max_concurrent",
    "gpus_per_trial",
    "cpus_per_trial",
    "eval_every",
    "grace_period",
    "reduction_factor",
    "storage",
    "device",
    "lstm_checkpoint",
]

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


def trials_at_once(fits: int, trials: int, max_concurrent: int, grows: bool) -> int:
    """How many trials Tune runs at a time: max_concurrent where given; on a cluster that can grow,
    every trial (each declares its resources, so the pending ones ask the autoscaler for nodes:
    capped by the GPUs up at the start, a 144-trial sweep ran 16 at a time and never grew);
    else as many as the cluster holds now."""
    if max_concurrent:
        return max_concurrent
    return max(fits, trials, 1) if grows else fits


GPU_PER_SEQUENCE = 0.25  # of a GPU, a trial's share for each sequence an example feeds the model


def gpu_share(task, examples: list) -> float:
    """The GPU a trial of `task` takes where --gpus-per-trial is 0: a quarter for each sequence
    an example feeds the model (classification and entailment 1, similarity 2, its orders; a
    multiple-choice task its choices), at most one. Four 117 M-parameter trials of single
    sequences share a GPU; RACE's 4 choices of up to 512 tokens take it whole."""
    if task.transformation == "multiple_choice":
        k = max((len(e.choices) for e in examples), default=1)
    else:
        k = 2 if task.transformation == "similarity" else 1
    return min(1.0, GPU_PER_SEQUENCE * k)


def resources(
    device: str, opts: SweepOptions, trials: int = 1, shares: dict | None = None
) -> tuple[dict, int]:
    """(resources per trial, by task, concurrent trials) for a device already chosen (cuda or
    cpu): each task's `shares` of a GPU a trial (gpus_per_trial where given; a fraction shares
    one), as many at a time as the cluster's GPUs hold at the smallest share, or, where an
    autoscaler can add nodes, all `trials` (trials_at_once); else cpus_per_trial cores, or the
    CPUs split between max_concurrent trials, so that they never oversubscribe the cores (again
    all `trials` at once where an autoscaler can add nodes for them). On a
    cluster with an autoscaler, the first trial's node is asked for and waited for; the
    autoscaler adds the others' as the trials ask for them."""
    import ray

    have = ray.cluster_resources()
    gpus, cpus, grows = have.get("GPU", 0), int(have.get("CPU", 0)), cluster.can_grow()
    if device == "cuda":
        shares = {t: opts.gpus_per_trial or f for t, f in (shares or {"": 1.0}).items()}
        fits = int(gpus / min(shares.values()) + 1e-9)
        concurrent = trials_at_once(fits, trials, opts.max_concurrent, grows)
        if not concurrent:
            raise errors.ConfigError(
                "--device cuda: the cluster has no GPUs, nor an autoscaler to add them; use --device cpu or auto"
            )
        per_trial = {t: {"GPU": f, "CPU": 1} for t, f in shares.items()}
        cluster.wait_for("GPU", max(shares.values()), 1, "the sweep's trials", opts.wait_minutes)
        return per_trial, concurrent
    else:
        # Two cores a trial by default: a trial's matrix products use them well, and the rest of
        # the machine stays free for other trials (and Ray's own work).
        each = opts.cpus_per_trial or (max(1, cpus // opts.max_concurrent) if opts.max_concurrent else 2)
        concurrent = max(1, trials_at_once(int(cpus / each + 1e-9), trials, opts.max_concurrent, grows))
        # A trial runs on one node: never more cores than the largest node has.
        widest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
        one = {"CPU": min(each, max(int(widest), 1))}
    cluster.wait_for("CPU", one["CPU"], 1, "the sweep's trials", opts.wait_minutes)
    return {t: one for t in shares or {"": 1.0}}, concurrent


def trial_resources(per_trial: dict, config: dict):
    """What a trial of config["task"] asks Ray for (resources)."""
    from ray.tune import PlacementGroupFactory

    return PlacementGroupFactory([per_trial[config["task"]]])


@dataclass
class TaskSweep:
    """One task's part of a sweep: its inputs, its search space and its MLflow parent run."""

    task: object
    data_dir: Path
    splits: dict
    space: dict
    varying: list  # the keys its space varies: trials are named by them (lr=2.1e-4 λ=0.5)
    pid: str  # its parent run
    stamp: str  # its parent run's, which names its Tune experiments
    callback: object  # its TrialRuns
    rows: list = field(default_factory=list)
    ablation_rows: list = field(default_factory=list)
    best_result: object = None
    best_config: dict = field(default_factory=dict)


def sweep_task(
    task, data_dir: Path, checkpoint: Path, opts: SweepOptions, uri: str, where=None, lstm_checkpoint=None
):
    """One task's sweep (sweep_tasks of one)."""
    return sweep_tasks([(task, data_dir)], checkpoint, opts, uri, where, lstm_checkpoint)[task.name]


def run_length(task, splits: dict, space: dict, opts: SweepOptions) -> dict:
    """The space with eval_every set for ASHA's rungs: --eval-every where given; by default, where
    an epoch is over 2,000 steps at the paper's batch of 32 (MNLI, QQP, QNLI, SNLI), every 1,000
    steps, so that trailing trials stop within the first epoch; else the space's own."""
    if opts.eval_every >= 0:
        return {**space, "eval_every": opts.eval_every}
    if space.get("eval_every") == 0 and len(splits["train"]) > 2_000 * 32:
        return {**space, "eval_every": 1_000}
    return space


def start_task(task, data_dir: Path, checkpoint: Path, opts: SweepOptions, uri: str, where, lstm_checkpoint):
    """A task's inputs read and checked, its parent run started (or found, for a resumed sweep)."""
    from ray.tune.search.sample import Domain

    from tuning import tracking
    from tuning.finetune import check_config, load_splits
    from tuning.space import describe, load_space

    # --seed is the sweep's seed: its draws', and every trial's default (the space or a --set may fix another).
    defaults = dataclasses.replace(FinetuneConfig(), seed=opts.seed)
    space = load_space(defaults, task.name, opts.space, opts.sets, check=check_config)
    max_train = space["max_train"] if isinstance(space["max_train"], int) else 0
    splits = load_splits(task, data_dir, max_train)  # bad input ends here, before any trial
    space = run_length(task, splits, space, opts)
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
            if k
            not in ("max_concurrent", "storage", "device", "wait_minutes", "gpus_per_trial", "cpus_per_trial")
        },
    }
    parent = tracking.start_parent(
        uri,
        task.name,
        f"sweep-{task.name}-{stamp}",
        checkpoint,
        files,
        {"samples": str(opts.samples), "ablations": str(opts.ablations)},
        where,
        settings,
    )
    stamp = parent.name.rsplit(f"sweep-{task.name}-", 1)[-1]  # a resumed sweep's own
    varying = [k for k, v in space.items() if isinstance(v, (dict, Domain))]
    grids = math.prod(
        len(v["grid_search"]) for v in space.values() if isinstance(v, dict) and "grid_search" in v
    )
    rows_of_table = table_rows(opts)
    total = opts.samples * grids + (len(rows_of_table) * opts.seeds if opts.ablations else 0)
    row_tags = {}
    if lstm_checkpoint is not None:
        data_tags = {k: v for k, v in parent.lineage.items() if k.startswith("data_sha256.")}
        row_tags["lstm"] = {
            **data_tags,
            **checkpoint_lineage(parent.client, lstm_checkpoint, opts.lstm_checkpoint),
        }
    callback = tracking.TrialRuns(
        uri,
        parent.experiment,
        parent.run_id,
        parent.lineage,
        [*task.metrics, "train_loss", "epoch"],
        varying,
        total,
        row_tags=row_tags,
    )
    print(
        f"sweep {task.name}: {opts.samples * grids} trial(s) over {describe(space) or 'a fixed config'}"
        f"{f' + {len(rows_of_table)} ablation rows' if opts.ablations else ''}; {len(splits['train']):,} train / "
        f"{len(splits['dev']):,} dev examples"
        + (f"; evaluated every {space['eval_every']:,} steps" if space.get("eval_every") else "")
        + f"; MLflow parent run {parent.run_id}{' (resumed)' if parent.resumed else ''}",
        flush=True,
    )
    return TaskSweep(task, data_dir, splits, space, varying, parent.run_id, stamp, callback)


def ablation_points(ts: TaskSweep, opts: SweepOptions) -> list[dict]:
    """The paper's rows for a task at its best trial's settings (each row's λ, seeds N, N+1, ...)."""
    from ray import tune

    rows_of_table = table_rows(opts)
    base = {**dataclasses.asdict(FinetuneConfig()), **ts.best_config, "task": ts.task.name}
    base_lm = base["lm_coef"]
    ab_space = {
        **base,
        "ablation": tune.grid_search(list(rows_of_table)),
        "lm_coef": tune.sample_from(
            lambda config: (
                base_lm if rows_of_table[config["ablation"]] is None else rows_of_table[config["ablation"]]
            )
        ),
    }
    if opts.seeds > 1:  # the seed of the weights drawn, the data order and the dropout masks
        ab_space["seed"] = tune.grid_search(list(range(base["seed"], base["seed"] + opts.seeds)))
    return draw(ab_space, 1, opts.seed)


def sweep_tasks(
    jobs: list,
    checkpoint: Path,
    opts: SweepOptions,
    uri: str,
    where: str | None = None,
    lstm_checkpoint: Path | None = None,
) -> dict:
    """Sweep the tasks of `jobs` ((task, its directory) pairs) in one Tune run, their ablation
    rows in another, so that no GPU idles while a task's last trials end; returns each task's
    parent run id, best row and ablation rows. `where` is the checkpoint's own address (an s3://
    URI, say) where `checkpoint` is a copy of it; lstm_checkpoint, a local copy of
    opts.lstm_checkpoint."""
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.search.sample import Domain

    from tuning import tracking
    from tuning.finetune import Pretrained
    from tuning.schedule import PerTaskASHA, SweepBest

    pretrained = Pretrained.load(checkpoint)
    lstm = Pretrained.load(lstm_checkpoint) if lstm_checkpoint else None
    if lstm is not None and lstm.config.get("arch") != "lstm":
        raise errors.ConfigError(
            f"--lstm-checkpoint {opts.lstm_checkpoint}: holds a {lstm.config.get('arch', 'transformer')}; "
            "expected a pretrained LSTM (gpt1 pretrain --config lstm)"
        )
    device = opts.device  # chosen once for the whole sweep (_sweep)
    # The most trials one Tune run holds: the samples of every task, or their ablation rows.
    rows = len(table_rows(opts)) * opts.seeds if opts.ablations else 0
    trials = len(jobs) * max(opts.samples, rows, 1)
    sweeps = {}
    statuses = {}
    try:
        for task, data_dir in jobs:
            ts = start_task(task, data_dir, checkpoint, opts, uri, where, lstm_checkpoint)
            sweeps[task.name], statuses[task.name] = ts, "FAILED"
        shares = {name: gpu_share(ts.task, ts.splits["train"]) for name, ts in sweeps.items()}
        per_trial, concurrent = resources(device, opts, trials, shares)
        each = (
            str(next(iter(per_trial.values())))
            if len({str(r) for r in per_trial.values()}) == 1
            else ", ".join(f"{t} {r}" for t, r in per_trial.items())
        )
        print(f"{len(sweeps)} task(s) in one Tune run: {concurrent} trial(s) at a time, each with {each}")
        by_task = tracking.ByTask({name: ts.callback for name, ts in sweeps.items()})
        best = ray.remote(num_cpus=0)(SweepBest).remote()
        # with_parameters puts each object into Ray's object store once; every trial reads it there.
        trainable = tune.with_resources(
            tune.with_parameters(
                trial,
                tasks={name: (ts.task, ts.splits) for name, ts in sweeps.items()},
                pretrained=pretrained,
                lstm=lstm,
                best=best,
                device=device,
                threads=0 if device == "cuda" else max(1, int(next(iter(per_trial.values()))["CPU"])),
            ),
            # Each trial its task's share (a callable of the trial's config, as Tune takes it).
            functools.partial(trial_resources, per_trial),
        )
        storage = storage_path(opts.storage)
        first = next(iter(sweeps.values()))
        names = "+".join(sweeps)
        keys = ["lr", "batch_size", "epochs", "warmup", "clf_dropout", "lm_coef", "n_transfer"]
        if opts.samples:
            points = interleave(
                [
                    [{**c, "task": name} for c in draw(ts.space, opts.samples, opts.seed)]
                    for name, ts in sweeps.items()
                ]
            )
            scheduler = PerTaskASHA(opts.grace_period, opts.reduction_factor)
            grid = run_tuner(
                f"sweep-{names}-{first.stamp}", trainable, points, scheduler, storage, [by_task], concurrent
            )
        for name, ts in sweeps.items():
            # Without trials, the ablations run at the defaults and the fixed keys.
            ts.best_config = {k: v for k, v in ts.space.items() if not isinstance(v, (dict, Domain))}
            if opts.samples:
                mine = [r for r in grid if r.config.get("task") == name]
                ts.rows = rows_of(mine, ts.task.metrics[0], keys, ts.callback.runs)
                ts.best_result = best_of(mine, ts.task.metrics[0])
                ts.best_config = {k: v for k, v in ts.best_result.config.items() if k != "task"}
        if opts.ablations:
            points = interleave([ablation_points(ts, opts) for ts in sweeps.values()])
            ab = run_tuner(
                f"ablations-{names}-{first.stamp}", trainable, points, None, storage, [by_task], concurrent
            )
            for name, ts in sweeps.items():
                mine = [r for r in ab if r.config.get("task") == name]
                metric = ts.task.metrics[0]
                ts.ablation_rows = rows_of(mine, metric, ["ablation", "seed", *keys], ts.callback.runs)
                if ts.best_result is None:
                    ts.best_result = best_of(mine, metric)
        out = {}
        for name, ts in sweeps.items():
            out[name] = tracking.log_parent(
                MlflowClient(uri),
                ts.pid,
                ts.task,
                ts.task.metrics[0],
                ts.rows,
                ts.ablation_rows,
                ts.best_result,
                ts.callback.runs,
            )
            statuses[name] = "FINISHED"
        return out
    except KeyboardInterrupt:
        statuses = {name: "KILLED" for name in statuses}
        pids = ", ".join(ts.pid for ts in sweeps.values())
        raise errors.Interrupted(
            f"sweep {'+'.join(sweeps) or 'of ' + str(len(jobs)) + ' task(s)'} interrupted; the trials so far "
            f"are in MLflow under parent run(s) {pids} (marked KILLED); the same command resumes the sweep"
        ) from None
    finally:
        for name, status in statuses.items():
            finish_run(uri, sweeps[name].pid, status)


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
        help=CHECKPOINT_HELP,
    )
    # The sweep's own options, from SweepOptions: names, types, defaults and help in one place.
    configio.add_field_options(p, SweepOptions, OPTIONS, metavars={"lstm_checkpoint": "CKPT"})
    p.add_argument(
        "--seed",
        type=int,
        default=SweepOptions.seed,
        metavar="N",
        help=f"the run's seed (default: {SweepOptions.seed}): the search space's draws, and every trial's "
        "(ablation rows: N, N+1, ...); a --set seed=M fixes the trials' alone",
    )
    # Then the fine-tuning keys it fixes for every trial: --set KEY=VALUE, or --KEY VALUE where the
    # sweep has no option of that name (its own --seed and --eval-every stand).
    configio.add_set_option(p, FinetuneConfig, "fix a key")
    add_wait_option(p)


def sweep(task_name: str, data, checkpoint, opts: SweepOptions) -> dict[str, dict]:
    """Sweep a task (or, for task_name glue, every GLUE task under data); returns each task's
    sweep_task result. Every input and every search space is checked before Ray, MLflow or
    Tune writes anything. data and checkpoint may be directories or URIs on object storage."""
    if opts.samples < 0 or (opts.samples == 0 and not opts.ablations):
        raise errors.ConfigError("--samples: expected at least 1 (or 0 with --ablations)")
    if opts.seeds < 1:
        raise errors.ConfigError(f"--seeds {opts.seeds}: expected at least 1")
    if not 0 <= opts.gpus_per_trial <= 1 and opts.gpus_per_trial != int(opts.gpus_per_trial):
        raise errors.ConfigError(
            f"--gpus-per-trial {opts.gpus_per_trial}: expected a fraction of one GPU (0.5) or a whole number"
        )
    if opts.gpus_per_trial < 0 or opts.cpus_per_trial < 0 or opts.eval_every < -1:
        raise errors.ConfigError(
            "--gpus-per-trial: expected >= 0 (0: by task); --cpus-per-trial: >= 0; --eval-every: >= 0 (or -1, auto)"
        )
    if opts.lstm_checkpoint and not opts.ablations:
        raise errors.ConfigError("--lstm-checkpoint adds a row to the ablations: add --ablations")
    check_device(opts.device)
    check_wait(opts.wait_minutes)
    # On object storage (or MLflow, or the hub), each is copied to this machine once; the trials
    # read them from Ray's object store, so no node needs a shared file system.
    lstm = opts.lstm_checkpoint
    with (
        remote.fetched(data, "a task's directory") as data,
        local_model(checkpoint) as (local_checkpoint, where),
        local_model(lstm, "--lstm-checkpoint") if lstm else contextlib.nullcontext((None, None)) as (
            local_lstm,
            _,
        ),
    ):
        return _sweep(task_name, data, local_checkpoint, where, opts, local_lstm)


def _sweep(
    task_name: str, data: Path, checkpoint: Path, where: str, opts: SweepOptions, lstm: Path | None = None
) -> dict[str, dict]:
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
    return sweep_tasks(jobs, checkpoint, opts, uri, where, lstm)


def run(args: argparse.Namespace) -> None:
    from tuning.tracking import PARALLEL

    if args.print_config:  # the fixed keys every trial starts from; the space draws the rest
        print(configio.dump(configio.load(FinetuneConfig(), sets=args.set)), end="")
        return
    opts = SweepOptions(
        **{name: getattr(args, name) for name in OPTIONS},
        sets=args.set,
        seed=args.seed,
        wait_minutes=args.wait_minutes,
    )
    results = sweep(args.task, args.data, args.checkpoint, opts)
    print()
    print("| task | metric | best dev | trials | parent run |")
    print("|---|---|---:|---:|---|")
    for name, r in results.items():
        print(f"| {name} | {r['metric']} | {r['best']:.4f} | {len(r['rows'])} | {r['parent_run_id']} |")

    uri = tracking_uri()
    server = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    if server == "http://127.0.0.1:5000":  # a tracking server has its own UI; a file store needs one
        print(f"\nthe MLflow UI: {script('mlflow')} ui --backend-store-uri {uri}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for name, r in results.items():
        exp = client.get_run(r["parent_run_id"]).info.experiment_id
        runs = f"{server}/#/experiments/{exp}"
        # The trials side by side (each row's lr, λ and dev metric as columns), and the sweep's
        # own chart of the dev metric over λ and lr.
        print(f"{name}: its trials {runs}{TRAINING_VIEW}")
        charts = f"{runs}/runs/{r['parent_run_id']}/artifactPath"
        print(f"{name}: lr, λ and dev {r['metric']}, trial by trial {charts}/{PARALLEL}{TRAINING_VIEW}")
        print(f"{name}: dev {r['metric']} over λ and lr {charts}/metric_vs_lambda_and_lr.png{TRAINING_VIEW}")


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("sweep", __doc__, add_arguments, run, argv)
