"""Learning in a fixed CPU budget: validation bits per byte on tinyshakespeare after 5 minutes.

The last 10% of the file's characters are held out as the val split. The tokenizer is a
byte-level BPE learned on the first 90% only, so it is lossless: every character, its case and
every newline is predicted and paid for, and bits per byte on this ASCII text are bits per
character, the figure nanoGPT's CPU "baby GPT" reports (2.72 after 2,000 iterations, 2.34 after
6,000, about 5.5 minutes).

The run goes through the pipeline as a user's would (gpt1 prepare, then gpt1 pretrain on a local
Ray instance, 1 worker with every core), logged to MLflow, with max_minutes set to the budget:
the loop times its first steps and one evaluation, and sets the step count that fills it.

    python bench/pretrain_tinyshakespeare.py                # 300 s, preset `small`
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
import torch  # noqa: E402

from pipeline.configio import load  # noqa: E402
from pipeline.data.dataset import open_dataset  # noqa: E402
from pipeline.data.prepare import PrepareConfig, prepare  # noqa: E402
from pipeline.train.plan import model_config  # noqa: E402
from pipeline.train.pretrain import PRESETS_DIR, PretrainConfig, pretrain  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "tinyshakespeare.txt"


def byte_level_tokenizer(text: str, vocab_size: int, path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [text],
        trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        ),
    )
    tok.save(str(path))


def pretrain_in_budget(
    data: Path, cfg: PretrainConfig, budget: float, name: str, storage: Path
) -> tuple[dict, PretrainConfig, float]:
    """Pretrain (1 worker, every core) with max_minutes = budget: the loop times its first steps
    and an evaluation, and sets the step count that fills the budget. Returns pretrain()'s
    result, the config it ran and pretrain()'s wall time."""
    cfg = dataclasses.replace(cfg, max_minutes=budget / 60, max_steps=0, epochs=1000)
    t0 = time.perf_counter()
    out = pretrain(
        data, cfg, workers=1, name=f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}", storage=str(storage)
    )
    return out, cfg, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=300.0, help="seconds of training")
    p.add_argument("--config", default="small", help="pretraining preset or YAML")
    p.add_argument("--vocab", type=int, default=2048, help="byte-level BPE vocabulary size")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--corpus", default=str(CORPUS))
    p.add_argument("--workdir", default=None, help="default: a temp dir")
    a = p.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="shakespeare-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    cfg = load(PretrainConfig(), a.config, PRESETS_DIR, a.set)

    text = Path(a.corpus).read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    (work / "train.txt").write_text(text[:cut], encoding="utf-8")
    (work / "val.txt").write_text(text[cut:], encoding="utf-8")
    byte_level_tokenizer(text[:cut], a.vocab, work / "tokenizer.json")
    from model import GPTConfig

    n_ctx = GPTConfig.preset(cfg.model, **cfg.model_overrides).n_ctx
    ray.init(address="local", logging_level="WARNING")
    data = work / "data"
    prepare(
        [str(work / "train.txt")],
        data,
        PrepareConfig(tokenizer=str(work / "tokenizer.json"), text_split="file", n_ctx=n_ctx),
        val_corpus=[str(work / "val.txt")],
    )
    manifest = open_dataset(data)
    gcfg = model_config(cfg, manifest, data)
    threads = int(ray.cluster_resources()["CPU"])

    out, cfg, wall = pretrain_in_budget(data, cfg, a.budget, "shakespeare", work / "runs")

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    trained = max(m.value for m in client.get_metric_history(out["run_id"], "elapsed_s"))
    steps = int(client.get_metric_history(out["run_id"], "total_steps")[-1].value)
    curve = {m.step: m.value for m in client.get_metric_history(out["run_id"], "val_bits_per_byte")}
    s = manifest["splits"]
    print()
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"date: {datetime.date.today()}  device: {platform.processor() or platform.machine()} CPU, "
        f"{threads} threads  torch {torch.__version__}"
    )
    print(
        f"data: {s['train']['bytes']:,} train / {s['val']['bytes']:,} val bytes; byte-level BPE, "
        f"vocab {manifest['tokenizer']['vocab_size']:,}; {s['train']['tokens'] / s['train']['bytes']:.3f} tokens per byte"
    )
    print(
        f"model: {gcfg.n_layer} x {gcfg.n_embd}, {gcfg.n_head} heads, n_ctx {gcfg.n_ctx}, dropout {gcfg.resid_pdrop}; "
        f"batch {cfg.batch_size}, lr {cfg.lr}, {cfg.schedule} with {cfg.warmup_steps} warm-up steps"
    )
    print(
        f"{steps:,} steps ({steps * cfg.batch_size / manifest['splits']['train']['blocks']:.1f} epochs) "
        f"set by max_minutes={cfg.max_minutes:g} from the first steps' rate; training took {trained:.0f} s "
        f"({trained / a.budget - 1:+.0%} of the budget), pretrain() {wall:.0f} s in all (Ray start-up, "
        f"checkpoint, MLflow)"
    )
    print(f"MLflow run {out['run_id']} in {os.environ['MLFLOW_TRACKING_URI']}")
    print()
    print("| step | val bits per byte |")
    print("|---:|---:|")
    for step in sorted(curve):
        print(f"| {step:,} | {curve[step]:.4f} |")
    print()
    print(f"val bits per byte: {out['metrics']['val_bits_per_byte']:.4f}")


if __name__ == "__main__":
    main()
