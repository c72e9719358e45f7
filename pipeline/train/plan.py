"""The plan of a pretraining run, decided before any worker starts: the model for the data, the
workers, the batch and micro-batch (micro_batch auto measured on a GPU), the steps, the run's
name; and `--plan`'s account of it with the estimate of time and cost (estimate.py).

plan_run is a pure function of the settings, the manifest and the cluster's resources, so tests
call it without Ray; settle applies a started run's own batch and micro-batch from its record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from model import GPTConfig
from pipeline import errors
from pipeline.data.dataset import BlockOrder, check_fits
from pipeline.runtime import storage_path
from pipeline.train import memory
from pipeline.train.config import (
    PretrainConfig,
    check_config,
    micro_batch,
    pieces,
    scale_batch,
    total_steps,
)
from pipeline.train.estimate import NODE_TYPES, est_micro_batch, estimate
from pipeline.train.record import recorded_run, run_name

PLAN_ACCELERATOR = "A100"  # --plan's node type where --accelerator is not given: p4d, the scale review's
SMALL_MICRO = 8  # below this many sequences a GPU, a plan says the GPUs will wait on launches


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
    asked = cfg
    cfg, steps_per_epoch, total = decide(asked, gcfg, workers, manifest, fitted_micro)
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
    # The default name comes from the settings as given, so that a resume on another worker
    # count (another micro-batch or batch for a new run) finds the same run.
    return RunPlan(
        cfg=cfg,
        asked=asked,
        model=gcfg,
        data=data,
        workers=workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus,
        accelerator=accelerator,
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
        name=run_name(asked, gcfg, manifest, data, name),
        storage=storage_path(storage),
        min_workers=min_workers,
    )


def with_micro(cfg: PretrainConfig, workers: int, fitted: int | None) -> PretrainConfig:
    """cfg with micro_batch auto replaced by the size measured on the GPU (`fitted`), or, with
    none measured, by each worker's share of the batch (as micro_batch 0)."""
    if cfg.micro_batch != "auto":
        return cfg
    return dataclasses.replace(cfg, micro_batch=fitted or max(cfg.batch_size // workers, 1))


def decide(
    asked: PretrainConfig,
    gcfg: GPTConfig,
    workers: int,
    manifest: dict | None,
    fitted: int | None = None,
    record: dict | None = None,
) -> tuple[PretrainConfig, int, int]:
    """The one place a run's batch, micro-batch, lr, warm-up and length are decided, from the
    settings as given (asked) and the workers: with micro_batch auto, the size measured on a GPU
    (fitted; without one, each worker's share); for a run already started, its record, whose
    batch and micro-batches stand whatever the workers now (only the accumulation follows them).
    Returns (settings, steps per epoch, total steps); without a manifest (a plan with no data)
    the epochs are unknown, 0. Pure: --plan, the driver and the resume all call it."""
    check_config(asked, workers)
    batch = record["pretrain"]["batch_size"] if record and asked.batch_tokens is not None else None
    cfg = scale_batch(with_micro(asked, workers, fitted), workers, gcfg.n_ctx, batch=batch)
    check_config(cfg, workers)
    recorded = record["pretrain"].get("micro_batch") if record else None
    cfg = dataclasses.replace(cfg, micro_batch=micro_batch(cfg, workers, recorded))
    spe = (
        BlockOrder(cfg.seed, manifest["splits"]["train"]["blocks"], cfg.batch_size).steps_per_epoch
        if manifest
        else 0
    )
    return cfg, spe, total_steps(cfg, spe, gcfg.n_ctx)


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

    from model import build  # torch

    with torch.device("meta"):  # the network's shape, without its memory
        net = build(gcfg)
    accelerator = (accelerator or PLAN_ACCELERATOR) if use_gpu else "CPU"
    fitted = None
    if asked.micro_batch == "auto" and accelerator in NODE_TYPES:
        share = max(asked.batch_size // workers, 1)
        sizes = memory.sizes(share, asked.batch_tokens is not None)
        fitted = est_micro_batch(accelerator, gcfg, net.num_params(), sizes)
    cfg, _, total = decide(asked, gcfg, workers, manifest, fitted)
    micro = cfg.micro_batch
    # The most micro-batches (or pieces of them, where the workers do not divide them) and
    # sequences any worker runs a step: what the step costs.
    cuts = [pieces(cfg.batch_size, micro, workers, r) for r in range(workers)]
    accum = max(len(c) for c in cuts)
    sequences = max(sum(b - a for a, b, _ in c) for c in cuts)
    tokens = cfg.batch_size * gcfg.n_ctx
    total = total or None
    out = {
        "workers": workers,
        "min_workers": min_workers,
        "micro_batch": micro,
        # auto: the memory model's size here; the run measures its own on the GPU at the start.
        "micro_batch_estimated": fitted is not None,
        "accumulation": accum,
        "sequences_per_worker": sequences,
        "rebalanced": (cfg.batch_size // micro) % workers != 0,
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
            sequences,
            cfg.batch_size,
            gcfg.n_ctx,
            net.flops_per_token(gcfg.n_ctx),
            net.num_params(),
            2 if cfg.grad_compression == "bf16" else 4,
            total,
            # Without --data, the run's tokens once, at 2 bytes each: what a one-epoch dataset holds.
            dataset_bytes(manifest) or (total * tokens * 2 if total else None),
            cfg.network_gbps,
        ),
    }


def measured_micro(plan: RunPlan) -> int:
    """micro_batch auto: the run's own where it is recorded (a resume keeps its micro-batches),
    else the largest that fits, measured by a task on one of the run's GPUs (train/memory.py)."""
    import ray

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


def dataset_bytes(manifest: dict | None) -> int | None:
    """What each node stages: the shards' tokens at the manifest's width."""
    if not manifest or "shards" not in manifest:
        return None
    width = 4 if manifest.get("dtype") == "uint32" else 2
    return sum(s["tokens"] for s in manifest["shards"].values()) * width


def plan_lines(plan: dict) -> list[str]:
    """The plan as a person reads it; every est_ figure says it is an estimate."""
    w = f"{plan['min_workers']}-{plan['workers']} (elastic)" if plan["min_workers"] else str(plan["workers"])
    lines = [
        f"workers          {w}",
        f"micro-batch      {plan['micro_batch']} sequences, {plan['accumulation']} accumulated per step"
        + (
            f" (rebalanced: {plan['workers']} workers do not divide the micro-batches; at most "
            f"{plan['sequences_per_worker']} sequences a worker)"
            if plan["rebalanced"]
            else ""
        )
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
    marks, fixed = plan["est_marks"], plan["est_fixed_s"]
    lines += [
        f"estimated on     {plan['est_nodes']} x {plan['est_node_type']} ({plan['accelerator']}), "
        f"MFU {plan['est_mfu']:.0%} of peak [{marks['compute']}]",
        f"estimated step   {plan['est_step_ms']:.1f} ms = compute {plan['est_compute_ms']:.1f} + "
        f"all-reduce {plan['est_allreduce_ms']:.1f}; {plan['est_tokens_per_s']:,.0f} tokens/s",
    ]
    if plan["est_bus_gbps"] is not None:
        lines.append(
            f"network          {plan['est_bus_gbps']:g} GB/s bus bandwidth across nodes [{marks['network']}]"
        )
    if plan["est_no_efa"]:
        lines.append(
            "WARNING          this node type runs on an image without EFA (clusters/gpu.yaml): build "
            "clusters/efa.Dockerfile, or run on one node; measure with --preflight either way"
        )
    lines.append(
        f"fixed costs      {fixed['total'] / 60:.0f} min before the first step (node start "
        f"{fixed['node_start']:.0f} s, image pull {fixed['image_pull']:.0f} s, install {fixed['install']:.0f} s, "
        f"staging {fixed['staging']:.0f} s, compile {fixed['compile']:.0f} s), "
        f"${plan['est_fixed_cost_usd']:,.0f} on {plan['est_nodes']} node(s) [{marks['fixed']}; staging "
        f"{marks['staging']}]"
    )
    if plan["est_hours"] is not None:
        lines.append(
            f"estimated run    {plan['est_hours']:,.1f} hours, ${plan['est_cost_usd']:,.0f} on demand, "
            f"${plan['est_total_cost_usd']:,.0f} with the fixed costs"
        )
    return [*lines, f"estimates, not measurements ({plan['est_sources']})"]


def settle(plan: RunPlan, manifest: dict, old: dict | None) -> RunPlan:
    """The plan again (decide), now that the run's record (`old`, read under its lock) is known:
    a run already started keeps its own batch and micro-batches."""
    if old is None:
        return plan
    cfg, spe, total = decide(plan.asked, plan.model, plan.workers, manifest, plan.cfg.micro_batch, old)
    return dataclasses.replace(plan, cfg=cfg, steps_per_epoch=spe, total_steps=total)
