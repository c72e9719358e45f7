"""Stage 2, pretrain: a prepared dataset -> a GPT pretrained on L1, data parallel on Ray Train.

    gpt1 pretrain --config PRESET_OR_YAML --data DIR [--workers N] [--name RUN]
                  [--storage PATH_OR_URI] [--set key=value ...]
    python pipeline/pretrain.py ...     the same options, as a `ray job submit` entrypoint

Everything is checked before a worker starts: the dataset against its manifest (shard and
tokenizer hashes), the model against the data (vocabulary, block length), the batch against the
workers. Checkpoints go to STORAGE/RUN; running the same command again resumes the run from its
newest complete checkpoint (the default RUN is derived from the data and the config). A killed
worker is replaced and the run goes on from the newest checkpoint, up to max_failures times. A
non-finite loss or a full disk stops the run with one line, not retried; Ctrl-C or SIGTERM stops
it with one line naming the checkpoint the same command resumes from (pipeline/train/ray_train.py).

MLflow: experiment gpt1-pretrain, one run per RUN, logged by rank 0 only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from model import GPTConfig
from pipeline import configio, errors, remote
from pipeline.data.dataset import BlockOrder, check_fits, check_tokenizer, open_dataset, read_dataset
from pipeline.data.stage import stage_on_nodes
from pipeline.runtime import add_wait_option, check_accelerator, check_device, check_wait, storage_path
from pipeline.tracking import check_store, finish_run, start_pretrain_run, tracking_uri
from pipeline.train.config import (
    NOT_IN_IDENTITY,
    PretrainConfig,
    check_config,
    check_run_name,
    default_run_name,
    micro_batch,
    parse_workers,
    scale_batch,
    total_steps,
)

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"
RUN_FILE = "gpt1_run.json"  # in STORAGE/RUN: what the run was started with


def model_config(cfg: PretrainConfig, manifest: dict | None, data) -> GPTConfig:
    """The model preset with the overrides; vocab_size is the tokenizer's unless overridden (the
    preset's where there is no dataset: a plan)."""
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(cfg.model_overrides) - fields)
    if unknown:
        raise errors.ConfigError(
            f"model_overrides: unknown key {unknown[0]!r}; valid keys are {', '.join(sorted(fields))}"
        )
    try:
        vocab = {"vocab_size": manifest["tokenizer"]["vocab_size"]} if manifest else {}
        gcfg = GPTConfig.preset(cfg.model, **{**vocab, **cfg.model_overrides})
    except (ValueError, TypeError) as err:
        raise errors.ConfigError(f"model {cfg.model!r}: {err}") from None
    if gcfg.arch == "lstm" and "n_head" in cfg.model_overrides:
        raise errors.ConfigError(
            f"model_overrides: n_head {cfg.model_overrides['n_head']!r}: the {cfg.model} preset is an LSTM, "
            "which has no attention heads; leave n_head out (its width is lstm_units)"
        )
    if manifest:
        check_fits(manifest, data, gcfg.vocab_size, gcfg.n_ctx)
    return gcfg


def identity(cfg: PretrainConfig, gcfg: GPTConfig, manifest: dict) -> dict:
    """What makes two runs the same run: the options that change results, the model, the data."""
    opts = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_IDENTITY}
    return {
        "pretrain": opts,
        "model": gcfg.to_dict(),
        "data_fingerprint": manifest["fingerprint"],
        "block_order": BlockOrder.VERSION,
    }


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _run_file(run_path: str):
    fs, path = remote.filesystem(run_path)
    return fs, path, f"{path}/{RUN_FILE}"


def recorded_run(run_path: str) -> dict | None:
    """What the run at run_path was started with (its identity), or None for a new run."""
    import pyarrow.fs as pafs

    fs, _, file = _run_file(run_path)
    if fs.get_file_info(file).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(file) as f:
        return json.loads(f.read())


def claim_run(run_path: str, ident: dict, old: dict | None) -> None:
    """Record what the run at run_path is, or check that an existing one (`old`) is this one. A
    run cannot be resumed with other data or other results-changing options."""
    if old is not None:
        diff = _differences(old, ident)
        if diff:
            raise errors.ConfigError(
                f"{run_path}: this run was started with other settings "
                f"({'; '.join(diff[:3])}); to start a new run, pass another --name"
            )
        return
    fs, path, file = _run_file(run_path)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(file) as f:
        f.write((json.dumps(ident, indent=2, sort_keys=True) + "\n").encode())


@dataclass(frozen=True)
class RunPlan:
    """What a run is launched with, decided before any worker starts (plan_run)."""

    cfg: PretrainConfig  # batch resized (scale_batch); its micro_batch fixed at launch, from the run's record
    asked: PretrainConfig  # as given: a resumed run resizes its batch from its own record
    model: GPTConfig
    data: str
    workers: int  # the most; elastic between min_workers and workers where min_workers is set
    use_gpu: bool
    cpus_per_worker: int  # on CPU: the cores each worker's torch uses; on GPU: 1
    accelerator: str | None  # every worker on nodes of this accelerator type (A100, A10G, H100, ...)
    total_steps: int
    steps_per_epoch: int
    name: str
    storage: str
    min_workers: int | None = None

    @property
    def run_path(self) -> str:
        return f"{self.storage}/{self.name}"


def plan_run(
    cfg: PretrainConfig,
    gcfg: GPTConfig,
    manifest: dict,
    data: str,
    resources: dict,
    workers: int | None = None,
    name: str | None = None,
    storage: str | None = None,
    use_gpu: bool = False,
    can_grow: bool = False,
    accelerator: str | None = None,
    min_workers: int | None = None,
    fitted_micro: int | None = None,
) -> RunPlan:
    """The run's plan from its settings, its dataset's manifest and the cluster: its resources now
    (ray.cluster_resources()) and whether an autoscaler can add nodes; with micro_batch auto, the
    micro-batch measured on a GPU (fitted_micro; without one, each worker's share). A pure
    function, so tests call it without Ray. Raises ConfigError where the cluster cannot run it."""
    workers = workers or (int(resources.get("GPU", 0)) if use_gpu else 1)
    if workers == 0:  # an autoscaling cluster whose GPU nodes are not up yet
        raise errors.ConfigError(
            "--device cuda: the cluster has no GPUs now; "
            + (
                "pass --workers N, and its autoscaler starts GPU nodes for them"
                if can_grow
                else "nor an autoscaler to add them; use --device cpu or auto"
            )
        )
    check_config(cfg, workers)
    asked, cfg = cfg, scale_batch(with_micro(cfg, workers, fitted_micro), workers, gcfg.n_ctx)
    check_config(cfg, workers)
    # On CPU, split the machine's cores between the workers; torch uses that many threads. On a
    # cluster that grows, a worker takes one core of the nodes the autoscaler adds.
    cpus = 1 if use_gpu or can_grow else max(int(resources.get("CPU", 1)) // workers, 1)
    kind, per_worker = ("GPU", 1) if use_gpu else ("CPU", cpus)
    have = int(resources.get(kind, 0))
    if (min_workers or workers) * per_worker > have and not can_grow:
        # Ray would wait for the resources for ever, retrying every minute.
        raise errors.ConfigError(
            f"--workers {workers}: the cluster has {have} {kind}(s) and each worker takes {per_worker}, "
            f"and it has no autoscaler to add nodes; ask for at most {have // per_worker}"
        )
    steps_per_epoch = BlockOrder(
        cfg.seed, manifest["splits"]["train"]["blocks"], cfg.batch_size
    ).steps_per_epoch
    # The default name comes from the settings as given, so that a resume on another worker
    # count (another micro-batch or batch for a new run) finds the same run.
    digest = hashlib.sha256(json.dumps(identity(asked, gcfg, manifest), sort_keys=True).encode()).hexdigest()
    return RunPlan(
        cfg=cfg,
        asked=asked,
        model=gcfg,
        data=data,
        workers=workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus,
        accelerator=accelerator,
        total_steps=total_steps(cfg, steps_per_epoch, gcfg.n_ctx),
        steps_per_epoch=steps_per_epoch,
        name=name or default_run_name(data, cfg.model, digest[:8]),
        storage=storage_path(storage),
        min_workers=min_workers,
    )


def with_micro(cfg: PretrainConfig, workers: int, fitted: int | None) -> PretrainConfig:
    """cfg with micro_batch auto replaced by the size measured on the GPU (`fitted`), or, with
    none measured, by each worker's share of the batch (as micro_batch 0)."""
    if cfg.micro_batch != "auto":
        return cfg
    return dataclasses.replace(cfg, micro_batch=fitted or max(cfg.batch_size // workers, 1))


PLAN_ACCELERATOR = "A100"
SMALL_MICRO = 8  # below this many sequences a GPU, a plan says the GPUs will wait on launches  # --plan's node type where --accelerator is not given: p4d, the scale review's


def run_plan(
    asked: PretrainConfig,
    gcfg: GPTConfig,
    workers: int,
    min_workers: int | None = None,
    accelerator: str | None = None,
    manifest: dict | None = None,
    use_gpu: bool = True,
) -> dict:
    """`gpt1 pretrain --plan`: what a run on `workers` GPUs of `accelerator` (or, without use_gpu,
    CPU workers) would do and, by the model in pipeline/train/estimate.py, cost (GPUs only). The
    run's length needs the dataset's manifest, or max_steps or max_tokens; without them the
    totals are None."""
    import torch

    from model import build
    from pipeline.train import memory
    from pipeline.train.estimate import NODE_TYPES, est_micro_batch, estimate

    check_config(asked, workers)
    with torch.device("meta"):  # the network's shape, without its memory
        net = build(gcfg)
    accelerator = (accelerator or PLAN_ACCELERATOR) if use_gpu else "CPU"
    fitted = None
    if asked.micro_batch == "auto" and accelerator in NODE_TYPES:
        share = max(asked.batch_size // workers, 1)
        sizes = memory.sizes(share, asked.batch_tokens is not None)
        fitted = est_micro_batch(accelerator, gcfg, net.num_params(), sizes)
    cfg = scale_batch(with_micro(asked, workers, fitted), workers, gcfg.n_ctx)
    check_config(cfg, workers)
    micro = micro_batch(cfg, workers)
    accum = cfg.batch_size // (micro * workers)
    tokens = cfg.batch_size * gcfg.n_ctx
    spe = (
        BlockOrder(cfg.seed, manifest["splits"]["train"]["blocks"], cfg.batch_size).steps_per_epoch
        if manifest
        else 0
    )
    total = total_steps(cfg, spe, gcfg.n_ctx) or None
    out = {
        "workers": workers,
        "min_workers": min_workers,
        "micro_batch": micro,
        # auto: the memory model's size here; the run measures its own on the GPU at the start.
        "micro_batch_estimated": fitted is not None,
        "accumulation": accum,
        "global_batch_sequences": cfg.batch_size,
        "tokens_per_step": tokens,
        "lr": cfg.lr,
        "lr_scaling": asked.lr_scaling if asked.batch_tokens is not None else None,
        "warmup_steps": cfg.warmup_steps,
        "warmup_tokens": cfg.warmup_steps * tokens,
        "total_steps": total,
        "total_tokens": total * tokens if total else None,
        "compile": use_gpu if cfg.compile is None else cfg.compile,  # loop.py: by default on GPU only
        "grad_compression": cfg.grad_compression,
        "accelerator": accelerator,
        "n_params": net.num_params(),
    }
    if not use_gpu:
        return {
            **out,
            "est_note": "on CPU workers: no time or cost estimate (the model knows GPU nodes: "
            f"{', '.join(NODE_TYPES)}); pass --accelerator or --device cuda to plan a GPU cluster",
        }
    if accelerator not in NODE_TYPES:
        return {**out, "est_note": f"no estimate for {accelerator}: the model knows {', '.join(NODE_TYPES)}"}
    return {
        **out,
        **estimate(
            accelerator,
            workers,
            micro,
            accum,
            gcfg.n_ctx,
            net.flops_per_token(gcfg.n_ctx),
            net.num_params(),
            2 if cfg.grad_compression == "bf16" else 4,
            total,
        ),
    }


def measured_micro(plan: RunPlan) -> int:
    """micro_batch auto: the run's own where it is recorded (a resume keeps its micro-batches),
    else the largest that fits, measured by a task on one of the run's GPUs (train/memory.py)."""
    import ray

    from pipeline.train import memory

    old = recorded_run(plan.run_path)
    if old and isinstance(old["pretrain"].get("micro_batch"), int) and old["pretrain"]["micro_batch"] > 0:
        return old["pretrain"]["micro_batch"]
    share = max(plan.asked.batch_size // plan.workers, 1)
    sizes = memory.sizes(share, plan.asked.batch_tokens is not None)
    probe = ray.remote(num_gpus=1, accelerator_type=plan.accelerator)(memory.fit_micro_batch)
    got = ray.get(probe.remote(plan.model, plan.asked, sizes))
    peaks = ", ".join(f"{m}: {p:.1f}" for m, p in got["peak_gib"].items())
    print(
        f"micro_batch auto: {got['micro_batch']} sequences a GPU, the most of {sizes} that fit "
        f"{memory.HEADROOM:.0%} of its {got['total_gib']:.0f} GiB (peak GiB by size: {peaks})",
        flush=True,
    )
    return got["micro_batch"]


def plan_lines(plan: dict) -> list[str]:
    """The plan as a person reads it; every est_ figure says it is an estimate."""
    w = f"{plan['min_workers']}-{plan['workers']} (elastic)" if plan["min_workers"] else str(plan["workers"])
    lines = [
        f"workers          {w}",
        f"micro-batch      {plan['micro_batch']} sequences, {plan['accumulation']} accumulated per step"
        + (
            " (auto: by a memory model here; the run measures it on its GPU)"
            if plan["micro_batch_estimated"]
            else ""
        ),
        f"global batch     {plan['global_batch_sequences']:,} sequences, {plan['tokens_per_step']:,} tokens",
        f"lr               {plan['lr']:.3g}"
        + (f" (scaled by the batch, {plan['lr_scaling']} rule)" if plan["lr_scaling"] else ""),
        f"warm-up          {plan['warmup_steps']:,} steps, {plan['warmup_tokens']:,} tokens",
        "length           "
        + (
            f"{plan['total_steps']:,} steps, {plan['total_tokens']:,} tokens"
            if plan["total_steps"]
            else "unknown: pass --data, or --set max_tokens=N or max_steps=N"
        ),
        f"workers run on   {plan['accelerator']}{'' if plan['accelerator'] == 'CPU' else ' GPUs'}",
        f"compile          {'on' if plan['compile'] else 'off'}; gradients all-reduced in "
        + ("bf16" if plan["grad_compression"] == "bf16" else "fp32"),
    ]
    if plan["accelerator"] != "CPU" and plan["micro_batch"] < SMALL_MICRO:
        lines.append(
            f"note             {plan['micro_batch']} sequence(s) a GPU a step: kernel launches, not "
            "matmuls, bound such a step; --set batch_tokens=auto (or a larger batch_size) keeps each GPU busy"
        )
    if "est_step_ms" not in plan:
        return [*lines, plan["est_note"]]
    lines += [
        f"estimated on     {plan['est_nodes']} x {plan['est_node_type']} ({plan['accelerator']}), "
        f"MFU {plan['est_mfu']:.0%} of peak (as measured at micro-batch "
        f"{plan['est_mfu_measured_at_micro_batch']})",
        f"estimated step   {plan['est_step_ms']:.1f} ms = compute {plan['est_compute_ms']:.1f} + "
        f"all-reduce {plan['est_allreduce_ms']:.1f}; {plan['est_tokens_per_s']:,.0f} tokens/s",
    ]
    if plan["est_hours"] is not None:
        lines.append(
            f"estimated run    {plan['est_hours']:,.1f} hours, ${plan['est_cost_usd']:,.0f} on demand"
        )
    return [*lines, f"estimates, not measurements ({plan['est_sources']})"]


@contextlib.contextmanager
def run_status(uri: str | None, run_id: str | None):
    """The MLflow run's status, set in this one place: KILLED on Ctrl-C or SIGTERM, FAILED on any
    other error (a run that stopped itself too), FINISHED when the block ends."""
    if not run_id:
        yield
        return
    try:
        yield
    except (KeyboardInterrupt, errors.Interrupted):
        finish_run(uri, run_id, "KILLED")
        raise
    except BaseException:
        finish_run(uri, run_id, "FAILED")
        raise
    finish_run(uri, run_id, "FINISHED")


def pretrain(
    data,
    cfg: PretrainConfig,
    workers: int | None = None,
    name: str | None = None,
    storage: str | None = None,
    device: str = "auto",
    track: bool = True,
    wait_minutes: float = 30,
    accelerator: str | None = None,
    min_workers: int | None = None,
) -> dict:
    """Run (or resume) the stage: check every input, plan the run, launch it. Returns the final
    metrics, the newest checkpoint's path and the MLflow run id. Raises DataError / ConfigError
    before any worker starts, StopRun's line as a UserError when the run stops itself (a
    non-finite loss, a full disk), and Interrupted on Ctrl-C or SIGTERM, naming the checkpoint
    that the same command resumes from. On a cluster with an autoscaler, waits up to wait_minutes
    for the workers' nodes."""
    if name is not None:
        check_run_name(name)
    # Object storage: the manifest and a listing here (sizes only); every node's first worker
    # stages the shards and verifies them as they arrive (pipeline/data/stage.py). A local
    # directory: verified here, once per machine.
    if remote.is_remote(data):
        data = str(data).rstrip("/")
        manifest = read_dataset(data)
        check_tokenizer(data, manifest)
    else:
        data = remote.local_path(data)
        manifest = open_dataset(data)
    gcfg = model_config(cfg, manifest, data)
    check_device(device)
    check_accelerator(accelerator)
    check_config(cfg, workers or 1)  # before Ray starts: a bad setting costs a line, not a start-up
    if cfg.zero_shot:  # read by rank 0: checked here, before any worker starts, and made absolute
        from pipeline.eval.zero_shot import parse_tasks

        cfg = dataclasses.replace(cfg, zero_shot=[f"{t}={d}" for t, d in parse_tasks(cfg.zero_shot)])
    uri = tracking_uri() if track else None
    if uri:  # the store is checked before the work, not after it
        check_store(uri)
    check_wait(wait_minutes)
    done = completed_run(cfg, gcfg, manifest, str(data), name, storage, uri)
    if done:
        return done
    import ray

    from pipeline import cluster
    from pipeline.runtime import ray_init

    ray_init()
    use_gpu = cluster.wants_gpus("cuda" if accelerator and device == "auto" else device)
    plan = plan_run(
        cfg,
        gcfg,
        manifest,
        str(data),
        ray.cluster_resources(),
        workers,
        name,
        storage,
        use_gpu,
        cluster.can_grow(),
        accelerator,
        min_workers,
    )
    kind, each = ("GPU", 1) if plan.use_gpu else ("CPU", plan.cpus_per_worker)
    need = plan.min_workers or plan.workers
    what = f"--workers {f'{need}-' if plan.min_workers else ''}{plan.workers}"
    cluster.wait_for(kind, need * each, need, what, wait_minutes, plan.accelerator)
    if cfg.micro_batch == "auto" and plan.use_gpu:
        fitted = measured_micro(plan)
        plan = plan_run(
            cfg,
            gcfg,
            manifest,
            str(data),
            ray.cluster_resources(),
            plan.workers,
            plan.name,
            storage,
            use_gpu,
            cluster.can_grow(),
            accelerator,
            min_workers,
            fitted,
        )
    # Before the workers start: a rank that waited in a collective for another node's download
    # would time out on a large dataset.
    stage_on_nodes(plan.data, kind)
    return launch(plan, manifest, uri)


def completed_run(
    cfg: PretrainConfig,
    gcfg: GPTConfig,
    manifest: dict,
    data: str,
    name: str | None,
    storage: str | None,
    uri: str | None,
) -> dict | None:
    """A run already trained to its last step, found from its record and its newest checkpoint
    alone, before Ray starts: pretrain's result for it, or None where there is work left. A
    time-limited run counts only once its budget is decided (loop.py); a record that differs from
    these settings is the ConfigError a resume would raise."""
    from pipeline.train.checkpoint import STATE_FILE, latest_checkpoint

    digest = hashlib.sha256(json.dumps(identity(cfg, gcfg, manifest), sort_keys=True).encode()).hexdigest()
    name = name or default_run_name(data, cfg.model, digest[:8])
    run_path = f"{storage_path(storage)}/{name}"
    old = recorded_run(run_path)
    newest = latest_checkpoint(run_path) if old else None
    if not newest:
        return None
    fs, path = remote.filesystem(newest[0])
    state = remote.read_json(fs, f"{path}/{STATE_FILE}")
    if state["step"] < state["total_steps"] or not state.get("budget_decided", True):
        return None
    # The settings the run trained with, as launch() settles them: its own batch and micro-batch.
    ran = scale_batch(cfg, 1, gcfg.n_ctx, batch=old["pretrain"]["batch_size"])
    ran = dataclasses.replace(ran, micro_batch=old["pretrain"].get("micro_batch", ran.micro_batch))
    claim_run(run_path, identity(ran, gcfg, manifest), old)
    from pipeline.train.ray_train import remove_orphan_staging

    remove_orphan_staging(run_path)  # a killed writer's leftovers go, as a resume removes them
    metrics, run_id = {"step": state["step"]}, None
    if uri:
        from mlflow.tracking import MlflowClient

        from pipeline.tracking import PRETRAIN_EXPERIMENT, find_run

        found = find_run(MlflowClient(uri), PRETRAIN_EXPERIMENT, "run_path", run_path)
        if found is not None:
            run_id = found.info.run_id
            metrics.update({k: v for k, v in found.data.metrics.items() if k.startswith("val_")})
    print(
        f"run {name} is complete: step {state['step']:,} of {state['total_steps']:,}, nothing to do; "
        f"newest checkpoint {newest[0]}" + (f"; MLflow run {run_id}" if run_id else ""),
        flush=True,
    )
    return {"metrics": metrics, "checkpoint": newest[0], "run_id": run_id, "name": name, "run_path": run_path}


STAGE_RATE = 50e6  # bytes/s: the slowest staging a collective's timeout allows for


def collective_timeout(data: str, manifest: dict) -> int:
    """Seconds a rank waits in a collective: Ray Train's 30 minutes, plus, for a dataset on
    object storage, the time a node that joins mid-run (a replacement, or an elastic run growing)
    takes to stage it at STAGE_RATE, while the other ranks wait for it at the first collective."""
    if not remote.is_remote(data):
        return 1800
    size = sum(s["tokens"] for s in manifest["shards"].values()) * (4 if manifest["dtype"] == "uint32" else 2)
    return 1800 + int(size / STAGE_RATE)


def settle(plan: RunPlan, manifest: dict, old: dict | None) -> RunPlan:
    """The plan with the batch and micro-batch the run trains with: a new run's, or, for a run
    already started (`old`, its record), its own, whatever the workers now: a resized batch and
    the micro-batches (so the dropout masks) stay; only the accumulation follows the workers."""
    cfg = plan.cfg
    if old and plan.asked.batch_tokens is not None:
        cfg = scale_batch(plan.asked, plan.workers, plan.model.n_ctx, batch=old["pretrain"]["batch_size"])
        spe = BlockOrder(cfg.seed, manifest["splits"]["train"]["blocks"], cfg.batch_size).steps_per_epoch
        plan = dataclasses.replace(
            plan, steps_per_epoch=spe, total_steps=total_steps(cfg, spe, plan.model.n_ctx)
        )
    recorded = old["pretrain"].get("micro_batch") if old else None
    return dataclasses.replace(
        plan, cfg=dataclasses.replace(cfg, micro_batch=micro_batch(cfg, plan.workers, recorded))
    )


def launch(plan: RunPlan, manifest: dict, uri: str | None) -> dict:
    """Hold the run, record it, and run it on Ray Train; the result as pretrain returns it."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.train.checkpoint import latest_checkpoint
    from pipeline.train.loop import LoopSpec
    from pipeline.train.ray_train import (
        Outcome,
        fit,
        remove_orphan_staging,
        repair_ray_index,
        run_lock,
        worker,
    )

    cfg, gcfg, name, run_path = plan.cfg, plan.model, plan.name, plan.run_path
    if not remote.is_remote(plan.storage):
        from pipeline import outdir

        outdir.check_writable(Path(run_path) / RUN_FILE)
    with run_lock(run_path):
        old = recorded_run(run_path)
        plan = settle(plan, manifest, old)
        cfg = plan.cfg
        claim_run(run_path, identity(cfg, gcfg, manifest), old)
        remove_orphan_staging(run_path)
        repair_ray_index(run_path)
        newest = latest_checkpoint(run_path)
        run_id = (
            start_pretrain_run(uri, name, run_path, cfg, gcfg, manifest, plan.data, plan.workers)
            if uri
            else None
        )
        at = (
            f"resuming run {name} from step {newest[1]:,}"
            if newest
            else f"{'restarting' if old else 'starting'} run {name} from step 0"
        )
        print(
            f"{at}: {gcfg.n_layer} x {gcfg.n_embd}, vocab {gcfg.vocab_size:,}, "
            f"{'at most ' if cfg.max_minutes else ''}{plan.total_steps:,} steps of {cfg.batch_size} x "
            f"{gcfg.n_ctx} tokens ({plan.steps_per_epoch:,} per epoch) on "
            f"{f'{plan.min_workers}-' if plan.min_workers else ''}{plan.workers} "
            f"{'GPU' if plan.use_gpu else 'CPU'} worker(s); checkpoints in {run_path}",
            flush=True,
        )
        spec = LoopSpec(
            pretrain=cfg,
            model=gcfg,
            data=plan.data,
            total_steps=plan.total_steps,
            threads=0 if plan.use_gpu else plan.cpus_per_worker,
            mlflow_uri=uri,
            mlflow_run_id=run_id,
            run_path=run_path,
            resume_from=newest[0] if newest else None,
        )
        # On the driver's node, as Ray Train places its controller: a worker node may be lost
        # mid-run, and the box must outlive it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        outcome = ray.remote(num_cpus=0, scheduling_strategy=here)(Outcome).remote()
        trainer = TorchTrainer(
            worker,
            train_loop_config={"spec": spec, "outcome": outcome},
            torch_config=TorchConfig(timeout_s=collective_timeout(plan.data, manifest)),
            scaling_config=ScalingConfig(
                # Elastic: Ray Train runs on as many as the cluster has between the two, and on
                # fewer at once when a node is lost; the loop takes any count up to batch /
                # micro-batch (loop.py).
                num_workers=(plan.min_workers, plan.workers) if plan.min_workers else plan.workers,
                use_gpu=plan.use_gpu,
                resources_per_worker={"GPU": 1} if plan.use_gpu else {"CPU": plan.cpus_per_worker},
                accelerator_type=plan.accelerator,
            ),
            run_config=RunConfig(
                name=name,
                storage_path=plan.storage,
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                failure_config=FailureConfig(max_failures=cfg.max_failures),
            ),
        )
        with run_status(uri, run_id):
            try:
                result = fit(trainer)
            except KeyboardInterrupt:
                newest = latest_checkpoint(run_path)
                where = (
                    f"newest checkpoint {newest[0]} (step {newest[1]:,}); "
                    if newest
                    else "no checkpoint yet; "
                )
                raise errors.Interrupted(
                    f"run {name} interrupted; {where}the same command resumes from it"
                ) from None
            stopped = ray.get(outcome.get.remote())
            if stopped:
                raise errors.UserError(stopped)
    checkpoint = result.checkpoint.path if result.checkpoint else None
    if checkpoint and remote.is_remote(run_path):  # Ray's path is inside the bucket, without the scheme
        checkpoint = remote.scheme(run_path) + checkpoint.split("://", 1)[-1]
    m = result.metrics or {}
    line = f"run {name} done at step {m.get('step', plan.total_steps):,}"
    if "val_bits_per_byte" in m:
        line += f": val loss {m['val_loss']:.4f}, {m['val_bits_per_byte']:.4f} bits per byte"
    print(
        f"{line}; newest checkpoint {checkpoint}" + (f"; MLflow run {run_id}" if run_id else ""), flush=True
    )
    return {"metrics": m, "checkpoint": checkpoint, "run_id": run_id, "name": name, "run_path": run_path}


def add_arguments(p: argparse.ArgumentParser) -> None:
    names = ", ".join(sorted(q.stem for q in PRESETS_DIR.glob("*.yaml")))
    p.add_argument("--config", default="tiny", help=f"a preset ({names}) or a YAML file of the keys below")
    p.add_argument(
        "--data",
        help="a dataset made by `gpt1 prepare`: a directory, or a URI (s3://...) staged once per node",
    )
    p.add_argument(
        "--workers",
        default=None,
        help="data-parallel workers: N, or MIN-MAX for elastic workers (a lost node means fewer "
        "workers, not a wait); default: one per GPU in the cluster, else 1",
    )
    p.add_argument(
        "--plan",
        nargs="?",
        const="text",
        choices=["text", "json"],
        help="print the run's plan (batch, lr, steps, and estimated time and cost on --accelerator, "
        f"default {PLAN_ACCELERATOR}) and train nothing; --plan=json: one JSON object",
    )
    p.add_argument(
        "--name", help="run name; the same name resumes the run (default: from the data and config)"
    )
    p.add_argument(
        "--storage",
        help="Ray Train storage: a directory, NFS, or s3://... (default: $GPT1_STORAGE, else ./runs)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (GPUs where the cluster has them or its autoscaler adds them), cpu, or cuda (never CPU)",
    )
    p.add_argument(
        "--accelerator",
        help="workers on nodes of this accelerator type only (A100, A10G, H100, ...): a run never mixes two",
    )
    add_wait_option(p)
    configio.add_set_option(
        p, PretrainConfig, seed="the initial weights, the order of the blocks and the dropout masks"
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")


def show_plan(args: argparse.Namespace, cfg: PretrainConfig, low: int | None, high: int | None) -> None:
    manifest = None
    if args.data:
        manifest = read_dataset(
            str(args.data).rstrip("/") if remote.is_remote(args.data) else remote.local_path(args.data)
        )
        gcfg = model_config(cfg, manifest, args.data)
    else:
        gcfg = model_config(cfg, None, None)
    check_accelerator(args.accelerator)
    check_device(args.device)
    plan = run_plan(
        cfg, gcfg, high or 1, low if low != high else None, args.accelerator, manifest, plans_gpus(args)
    )
    print(json.dumps(plan, indent=2) if args.plan == "json" else "\n".join(plan_lines(plan)))


def plans_gpus(args: argparse.Namespace) -> bool:
    """Whether --plan plans GPU workers: the machine the command would run on. --accelerator or
    --device cuda say so; with --device auto, this machine's GPU does, or a cluster (RAY_ADDRESS),
    whose GPUs --plan cannot see without joining it."""
    import os

    if args.accelerator or args.device == "cuda":
        return True
    if args.device == "cpu":
        return False
    import torch

    return torch.cuda.is_available() or bool(os.environ.get("RAY_ADDRESS"))


def run(args: argparse.Namespace) -> None:
    cfg = configio.load(PretrainConfig(), args.config, PRESETS_DIR, args.set)
    if args.print_config:
        print(configio.dump(cfg), end="")
        return
    low, high = parse_workers(args.workers) if args.workers else (None, None)
    if args.plan:
        show_plan(args, cfg, low, high)
        return
    if not args.data:
        raise errors.ConfigError("--data: required (a dataset made by `gpt1 prepare`), except with --plan")
    pretrain(
        args.data,
        cfg,
        workers=high,
        min_workers=low if low != high else None,
        name=args.name,
        storage=args.storage,
        device=args.device,
        track=not args.no_mlflow,
        wait_minutes=args.wait_minutes,
        accelerator=args.accelerator,
    )


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("pretrain", __doc__, add_arguments, run, argv)
