"""Stage 3, fine-tune: a pretrained checkpoint + a labeled task -> a task model, minimising
L3 = L2 + λ·L1 over the task's input transformation (the loop: tuning/finetune.py).

    gpt1 finetune --task T --data DIR --checkpoint CKPT [--out DIR] [--from-scratch] [--set key=value ...]

The paper's defaults: lr 6.25e-5, batch 32, 3 epochs, linear warm-up over 0.2% of the updates then
linear decay, classifier dropout 0.1, λ = 0.5. The dev split is evaluated every epoch (or every
`eval_every` steps); the best evaluation's model is kept.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from pipeline import configio, errors
from pipeline.data.tasks import from_directory
from pipeline.model_source import CHECKPOINT_HELP, local_model
from pipeline.tracking import check_store, tracking_uri
from tuning.finetune_config import FinetuneConfig, check_config, check_out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        required=True,
        help="a task name (sst-2, rte, mnli, race, ...), or any name for a --data directory holding a task.yaml",
    )
    p.add_argument("--data", required=True, help="the task's directory, as its release lays it out")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--out", help="where the best model goes (default: finetuned-<task>)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier fine-tuned model at --out (nothing else is ever replaced)",
    )
    p.add_argument(
        "--from-scratch", action="store_true", help="random weights: the 'no pretraining' ablation"
    )
    p.add_argument("--device", default="auto", help="auto (a GPU where there is one), cpu or cuda")
    p.add_argument("--config", help="YAML file of the keys below")
    p.add_argument("--no-mlflow", action="store_true", help="log nothing to MLflow")
    configio.add_set_option(
        p,
        FinetuneConfig,
        seed="the new rows and the head drawn, the order of the examples and the dropout masks",
    )


def run(args: argparse.Namespace) -> None:

    cfg = configio.load(FinetuneConfig(), args.config, sets=args.set)
    if args.print_config:
        print(configio.dump(cfg), end="")
        return
    task = from_directory(args.task, args.data)
    out = Path(args.out or f"finetuned-{task.name}")
    check_config(cfg)
    check_out(out, args.checkpoint, args.overwrite)
    uri = None
    if not args.no_mlflow:
        uri = tracking_uri()
        check_store(uri)  # before the work, not after it
    with local_model(args.checkpoint) as (checkpoint, where):
        check_out(out, checkpoint, args.overwrite)
        _run(args, task, cfg, out, checkpoint, where, uri)


def _run(
    args: argparse.Namespace,
    task,
    cfg: FinetuneConfig,
    out: Path,
    checkpoint: Path,
    where: str,
    uri: str | None,
) -> None:
    from tuning.finetune import finetune  # torch: only once the arguments are known good

    run = None
    if uri:
        from tuning.tracking import FinetuneRun

        run = FinetuneRun.start(uri, task, Path(args.data), checkpoint, where, cfg, out)

    def show(m: dict, step: int) -> None:
        print(
            f"step {step:,} (epoch {m['epoch']:.2f}): "
            + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k not in ("epoch", "total_steps")),
            flush=True,
        )
        if run:
            run.log(m, step)

    with run or contextlib.nullcontext():
        best = finetune(
            task,
            args.data,
            checkpoint,
            cfg,
            args.from_scratch,
            report=show,
            out=out,
            device=args.device,
            progress_every=30,
        )
        if run:
            run.finish(best, task.metrics[0])
    print(
        f"best {task.metrics[0]} {best[task.metrics[0]]:.4f} at step {best['step']:,}; "
        f"{best['train_truncated']:,} train and {best['dev_truncated']:,} dev segments truncated; model in {out}"
        + (f"; MLflow run {run.run_id}" if run else "")
    )


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("finetune", __doc__, add_arguments, run, argv)
