"""Stage 2's driver: check every input before Ray starts, plan the run (plan.py), hold and record it
(record.py), and run the loop (loop.py) on Ray Train's workers. The command is pretrain_cli.py.

pretrain() returns the final metrics, the newest checkpoint and the MLflow run; a finished run is
answered from its record and checkpoint without Ray, a started one resumes from its newest
complete checkpoint with its own batch and micro-batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from pipeline import cluster, errors, outdir, remote
from pipeline.data.dataset import open_dataset
from pipeline.data.stage import stage_on_nodes
from pipeline.runtime import check_accelerator, check_device, check_wait, ray_init
from pipeline.tracking import check_store, finish_run, log_preflight, start_pretrain_run, tracking_uri
from pipeline.train.config import PretrainConfig, check_config, check_run_name
from pipeline.train.plan import RunPlan, measured_micro, model_config, plan_run, settle
from pipeline.train.record import RUN_FILE, claim_run, completed_run, identity, recorded_run

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


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
    preflight: bool = False,
) -> dict:
    """Run (or resume) the stage: check every input, plan the run, launch it. Returns the final
    metrics, the newest checkpoint's path and the MLflow run id. Raises DataError / ConfigError
    before any worker starts, StopRun's line as a UserError when the run stops itself (a
    non-finite loss, a full disk), and Interrupted on Ctrl-C or SIGTERM, naming the checkpoint
    that the same command resumes from. On a cluster with an autoscaler, waits up to wait_minutes
    for the workers' nodes. With preflight, measures the network with the run's workers instead
    of training (run_preflight), and returns {"network": rows}."""
    if name is not None:
        check_run_name(name)
    data = str(remote.Location.of(data))
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
    done = None if preflight else completed_run(cfg, gcfg, manifest, str(data), name, storage, uri)
    if done:
        return done
    import ray

    ray_init()
    use_gpu = cluster.wants_gpus("cuda" if accelerator and device == "auto" else device)

    def planned(fitted_micro: int | None = None, name: str | None = name, workers: int | None = workers):
        return plan_run(
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
            fitted_micro,
        )

    plan = planned()
    kind, each = ("GPU", 1) if plan.use_gpu else ("CPU", plan.cpus_per_worker)
    need = plan.min_workers or plan.workers
    what = f"--workers {f'{need}-' if plan.min_workers else ''}{plan.workers}"
    cluster.wait_for(kind, need * each, need, what, wait_minutes, plan.accelerator)
    if preflight:
        return {"network": run_preflight(plan, uri)}
    if cfg.micro_batch == "auto" and plan.use_gpu:  # measured on one of the GPUs just waited for
        plan = planned(measured_micro(plan), plan.name, plan.workers)
    # Before the workers start: a rank that waited in a collective for another node's download
    # would time out on a large dataset.
    stage_on_nodes(plan.data, kind, plan.accelerator)
    return launch(plan, manifest, uri)


STAGE_RATE = 50e6  # bytes/s: the slowest staging the wait for a joining node allows for


def staging_timeout(data: str, manifest: dict) -> int:
    """Seconds the ranks wait for each other to have the dataset (loop.py's stage_together, not
    a training collective): 30 minutes to verify it, plus, for a dataset on object storage, the
    time a node that joins mid-run (a replacement, or an elastic run growing) takes to stage it
    at STAGE_RATE."""
    if remote.Location.of(data).local is not None:
        return 1800
    size = sum(s["tokens"] for s in manifest["shards"].values()) * (4 if manifest["dtype"] == "uint32" else 2)
    return 1800 + int(size / STAGE_RATE)


def run_preflight(plan: RunPlan, uri: str | None) -> list[dict]:
    """The network measured with the run's workers (pipeline/train/network.py), printed beside
    the plan's figure and logged to MLflow; a multi-node network under a quarter of the plan's
    refused as the run would refuse it."""
    import json
    import tempfile

    import ray
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from model import build
    from pipeline.train import network
    from pipeline.train.ray_train import Outcome, fit, preflight_worker

    with torch.device("meta"):  # the parameters' count, without their memory
        nbytes = network.gradient_bytes(build(plan.model), plan.cfg.grad_compression)
    box = ray.remote(num_cpus=0)(Outcome).remote()
    with tempfile.TemporaryDirectory(prefix="gpt1-preflight-") as tmp:  # no checkpoint: nothing to keep
        trainer = TorchTrainer(
            preflight_worker,
            train_loop_config={"bytes": nbytes, "outcome": box},
            scaling_config=ScalingConfig(
                num_workers=plan.workers,
                use_gpu=plan.use_gpu,
                resources_per_worker={"GPU": 1} if plan.use_gpu else {"CPU": plan.cpus_per_worker},
                accelerator_type=plan.accelerator,
            ),
            run_config=RunConfig(name="preflight", storage_path=tmp),
        )
        fit(trainer)
    rows = json.loads(ray.get(box.get.remote()))
    if not rows:
        print("network: one worker, no all-reduce to measure", flush=True)
        return rows
    rows = network.with_assumption(rows, plan.accelerator if plan.use_gpu else None, plan.cfg.network_gbps)
    lines = network.table(rows)
    print("\n".join(f"network: {line}" for line in lines), flush=True)
    if uri:
        run_id = log_preflight(uri, plan.name, network.metrics(rows), "\n".join(lines) + "\n")
        print(f"network: logged to MLflow run {run_id}", flush=True)
    line = network.too_slow(rows)
    if line and not plan.cfg.slow_network_ok:
        raise errors.UserError(line)
    return rows


def launch(plan: RunPlan, manifest: dict, uri: str | None) -> dict:
    """Hold the run, record it, and run it on Ray Train; the result as pretrain returns it."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.model_dir import latest_checkpoint
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
    if (here := remote.Location.of(run_path).local) is not None:
        outdir.check_writable(here / RUN_FILE)
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
            staging_timeout_s=staging_timeout(plan.data, manifest),
            # The node type whose NCCL figures the network is held to: GPU workers only (gloo
            # between CPU workers is no NCCL, whatever nodes they run on).
            accelerator=plan.accelerator if plan.use_gpu else None,
        )
        # On the driver's node, as Ray Train places its controller: a worker node may be lost
        # mid-run, and the box must outlive it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        outcome = ray.remote(num_cpus=0, scheduling_strategy=here)(Outcome).remote()
        trainer = TorchTrainer(
            worker,
            train_loop_config={"spec": spec, "outcome": outcome},
            # Bounded, whatever the dataset: staging is waited for apart (staging_timeout).
            torch_config=TorchConfig(timeout_s=round(cfg.collective_timeout_minutes * 60)),
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
    if checkpoint:  # on object storage, Ray's path is inside the bucket, without the scheme
        checkpoint = remote.Location.of(run_path).of_path(checkpoint)
    m = result.metrics or {}
    line = f"run {name} done at step {m.get('step', plan.total_steps):,}"
    if "val_bits_per_byte" in m:
        line += f": val loss {m['val_loss']:.4f}, {m['val_bits_per_byte']:.4f} bits per byte"
    print(
        f"{line}; newest checkpoint {checkpoint}" + (f"; MLflow run {run_id}" if run_id else ""), flush=True
    )
    return {"metrics": m, "checkpoint": checkpoint, "run_id": run_id, "name": name, "run_path": run_path}
