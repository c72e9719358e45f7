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
import json

from pipeline import configio, env, errors
from pipeline.data.dataset import read_dataset
from pipeline.runtime import add_wait_option, check_accelerator, check_device
from pipeline.train.config import PretrainConfig, parse_workers
from pipeline.train.plan import PLAN_ACCELERATOR, model_config, plan_lines, run_plan
from pipeline.train.pretrain import PRESETS_DIR, pretrain


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
        "--preflight",
        action="store_true",
        help="measure the network with the run's workers (an all-reduce of its gradient on 1, 2, 4, "
        "... nodes), print it beside the plan's figure, log it to MLflow, and train nothing",
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
        manifest = read_dataset(args.data)
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

    if args.accelerator or args.device == "cuda":
        return True
    if args.device == "cpu":
        return False
    import torch

    return torch.cuda.is_available() or bool(env.ray_address())


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
        preflight=args.preflight,
    )


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("pretrain", __doc__, add_arguments, run, argv)
