"""Table 5's LSTM row, measured so that it can carry weight: the Transformer against the LSTM on
SST-2 at CPU size, over pretraining seeds and fine-tuning seeds both.

1. Unlabeled text as bench/finetune_sst2.py makes it (the SST-2 training sentences without their
   labels, plus ../shared/data/corpus/*.txt), one BPE tokenizer and dataset for both networks.
2. Each network (`small`: 4 x 128 Transformer; `lstm-small`: one layer of 341 units) pretrained
   with --seeds seeds for the same --steps steps of 8 x 128 tokens: both language models see the
   same tokens, whatever each one's speed.
3. Each pretraining seed fine-tuned with --finetune-seeds seeds at one setting for both networks
   (bench/finetune_sst2.py's best trial: lr 4.33e-4, 10 epochs, batch 32, no classifier dropout,
   λ 0.5) on 1,000 labeled sentences; its figure is its best dev accuracy (872 sentences).
4. The difference of the two networks' means, with a 95% interval that counts the pretraining
   seed as the unit: each pretraining seed's mean over its fine-tuning seeds, then Welch's t
   interval over those means (so the spread of pretraining and of fine-tuning both widen it).

    python bench/lstm_claim.py [--steps 2500] [--seeds 3] [--finetune-seeds 2] [--workdir DIR]

A rerun with the same --workdir reuses what is there: the dataset, and each finished pretraining
run (the same name resumes, and a finished one returns at once).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

NETWORKS = {"Transformer": "small", "LSTM": "lstm-small"}
# bench/finetune_sst2.py's best trial at this size (bench/RESULTS.md), for both networks.
FINETUNE = {"lr": 4.33e-4, "epochs": 10, "batch_size": 32, "clf_dropout": 0.0, "lm_coef": 0.5}


def welch(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """mean(a) - mean(b), the half-width of its Welch t interval, the degrees of freedom (Welch-
    Satterthwaite) and the two-sided p-value."""
    from scipy import stats

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = (va + vb) ** 0.5
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return diff, half, df, 2 * stats.t.sf(abs(diff) / se, df)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--steps", type=int, default=2500, help="pretraining steps of 8 x 128 tokens, each network"
    )
    p.add_argument("--seeds", type=int, default=3, help="pretraining seeds of each network")
    p.add_argument("--finetune-seeds", type=int, default=2, help="fine-tuning seeds of each pretraining seed")
    p.add_argument("--merges", type=int, default=8000, help="BPE merges learned on the unlabeled text")
    p.add_argument("--train", type=int, default=1000, help="labeled training sentences")
    p.add_argument("--workdir", default=None, help="default: a temp dir")
    a = p.parse_args()
    if a.seeds < 2:
        sys.exit(f"--seeds {a.seeds}: expected at least 2, for an interval over pretraining seeds")

    from finetune_sst2 import SHARED, SST2, write_task, write_unlabeled

    if not SST2.exists():
        sys.exit(f"{SST2}: not found; this benchmark needs ../shared/data (GLUE SST-2 and the corpus)")
    import ray
    import torch

    from pipeline.configio import load
    from pipeline.data.prepare import PrepareConfig, prepare
    from pipeline.data.tasks import get
    from pipeline.train.pretrain import PRESETS_DIR, PretrainConfig, pretrain
    from tuning.evaluation import load_splits
    from tuning.finetune import finetune
    from tuning.finetune_config import FinetuneConfig

    work = Path(a.workdir or tempfile.mkdtemp(prefix="lstm-claim-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    ray.init(address="local", logging_level="WARNING")
    threads = int(ray.cluster_resources()["CPU"])

    data = work / "data"
    if not (data / "manifest.json").exists():
        write_unlabeled(work / "sst2-sentences.txt")
        corpus = [str(work / "sst2-sentences.txt")] + sorted(
            str(f) for f in (SHARED / "corpus").glob("*.txt")
        )
        prepare(corpus, data, PrepareConfig(n_merges=a.merges, n_ctx=128))
    task_dir = work / "SST-2"
    write_task(task_dir, a.train, seed=0)
    task = get("sst-2")
    splits = load_splits(task, task_dir)

    pretrained: dict[str, list[dict]] = {net: [] for net in NETWORKS}
    for seed in range(a.seeds):
        for net, preset in NETWORKS.items():
            sets = [
                f"max_steps={a.steps}",
                f"seed={seed}",
                f"eval_every={a.steps}",
                f"checkpoint_every={a.steps}",
            ]
            cfg = load(PretrainConfig(), preset, PRESETS_DIR, sets)
            t0 = time.perf_counter()
            out = pretrain(data, cfg, workers=1, name=f"{preset}-seed{seed}", storage=str(work / "runs"))
            pretrained[net].append(
                {
                    "seed": seed,
                    "checkpoint": out["checkpoint"],
                    "val_loss": out["metrics"]["val_loss"],
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(f"{net} seed {seed}: val loss {out['metrics']['val_loss']:.4f}", flush=True)

    base = dataclasses.replace(FinetuneConfig(), **FINETUNE)
    t0 = time.perf_counter()
    for net, runs in pretrained.items():
        for run in runs:
            run["accuracy"] = []
            for f in range(a.finetune_seeds):
                best = finetune(
                    task, splits, run["checkpoint"], dataclasses.replace(base, seed=f), device="cpu"
                )
                run["accuracy"].append(best["accuracy"])
            print(f"{net} seed {run['seed']}: dev accuracy {run['accuracy']}", flush=True)
    finetune_s = time.perf_counter() - t0

    print()
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"date: {datetime.date.today()}  device: {platform.processor() or platform.machine()} CPU, "
        f"{threads} threads  torch {torch.__version__}"
    )
    print(
        f"pretraining: {a.steps:,} steps of 8 x 128 tokens each, {a.seeds} seeds a network; fine-tuning: "
        f"{a.train:,} labeled sentences, dev 872, {a.finetune_seeds} seeds a checkpoint at {FINETUNE}, "
        f"{finetune_s:.0f} s in all"
    )
    print()
    print(
        "| network | pretraining seed | val loss | pretrain s | best dev accuracy by fine-tuning seed | mean |"
    )
    print("|---|---:|---:|---:|---|---:|")
    means = {}
    for net, runs in pretrained.items():
        means[net] = [statistics.fmean(r["accuracy"]) for r in runs]
        for r, m in zip(runs, means[net], strict=True):
            each = ", ".join(f"{x:.4f}" for x in r["accuracy"])
            print(f"| {net} | {r['seed']} | {r['val_loss']:.4f} | {r['seconds']:.0f} | {each} | {m:.4f} |")
    print()
    for net, runs in pretrained.items():
        losses = [r["val_loss"] for r in runs]
        print(
            f"{net}: val loss {statistics.fmean(losses):.4f} ± {statistics.stdev(losses):.4f}, dev accuracy "
            f"{statistics.fmean(means[net]):.4f} ± {statistics.stdev(means[net]):.4f} (mean ± std over "
            f"{a.seeds} pretraining seeds, each the mean of {a.finetune_seeds} fine-tuning seeds)"
        )
    diff, half, df, pvalue = welch(means["Transformer"], means["LSTM"])
    verdict = (
        "not distinguishable at this size"
        if abs(diff) <= half
        else f"the {'Transformer' if diff > 0 else 'LSTM'} is ahead at this size"
    )
    print(
        f"Transformer - LSTM: {100 * diff:+.1f} points, 95% interval [{100 * (diff - half):+.1f}, "
        f"{100 * (diff + half):+.1f}] (Welch, {df:.1f} degrees of freedom, p = {pvalue:.3f}): {verdict}"
    )


if __name__ == "__main__":
    main()
