"""Does the batch scaling rule hold? The `mini` preset on tinyshakespeare at 1x, 4x and 8x its batch,
each resized by the run's own rule (pipeline/train/config.py, scale_batch: lr x sqrt(k), warm-up
kept in tokens but never under min(asked, 2,000) steps), trained on the same number of tokens;
validation loss beside 1x's. The target: within 2% of 1x.

One process on this machine's CPU (LocalSession), no Ray: the rule is what is measured, not the
cluster. The data and tokenizer are as bench/pretrain_tinyshakespeare.py makes them.

    python bench/batch_scaling.py            # 1x, 4x, 8x of 4 x 256 tokens, 614,400 tokens each
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from pretrain_tinyshakespeare import CORPUS, byte_level_tokenizer  # noqa: E402

from pipeline.configio import load  # noqa: E402
from pipeline.data.dataset import open_dataset  # noqa: E402
from pipeline.data.prepare import PrepareConfig, prepare  # noqa: E402
from pipeline.train.config import scale_batch  # noqa: E402
from pipeline.train.loop import LocalSession, LoopSpec, Pretraining  # noqa: E402
from pipeline.train.plan import model_config  # noqa: E402
from pipeline.train.pretrain import PRESETS_DIR, PretrainConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", default="1,4,8", help="batch multiples of the preset's")
    p.add_argument("--tokens", type=float, default=614_400, help="training tokens of every run")
    p.add_argument("--config", default="mini")
    # 1x = 4 sequences a step (600 steps), so that 8x still runs 75 steps on two cores' budget.
    p.add_argument(
        "--set",
        action="append",
        default=["batch_size=4", "micro_batch=4", "warmup_steps=16", "lr=6e-4"],
        metavar="KEY=VALUE",
    )
    p.add_argument("--vocab", type=int, default=1024)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="batch-scaling-"))
    base = load(PretrainConfig(), a.config, PRESETS_DIR, a.set)
    text = CORPUS.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    (work / "train.txt").write_text(text[:cut], encoding="utf-8")
    (work / "val.txt").write_text(text[cut:], encoding="utf-8")
    byte_level_tokenizer(text[:cut], a.vocab, work / "tokenizer.json")
    from model import GPTConfig

    n_ctx = GPTConfig.preset(base.model, **base.model_overrides).n_ctx
    data = work / "data"
    prepare(
        [str(work / "train.txt")],
        data,
        PrepareConfig(tokenizer=str(work / "tokenizer.json"), text_split="file", n_ctx=n_ctx),
        val_corpus=[str(work / "val.txt")],
        track=False,
        local=True,
    )
    manifest = open_dataset(data)
    gcfg = model_config(base, manifest, data)
    rows = []
    for k in (int(s) for s in a.scales.split(",")):
        asked = dataclasses.replace(base, batch_tokens=k * base.batch_size * n_ctx, eval_every=0)
        cfg = scale_batch(asked, 1, n_ctx)
        steps = round(a.tokens / (cfg.batch_size * n_ctx))
        cfg = dataclasses.replace(cfg, max_steps=steps, checkpoint_every=10**9, checkpoint_every_minutes=0)
        spec = LoopSpec(pretrain=cfg, model=gcfg, data=str(data), total_steps=steps)
        t0 = time.perf_counter()
        loop = Pretraining(spec, LocalSession("cpu"))
        for _ in range(steps):
            loop.train_step()
        ev = loop.evaluate()
        rows.append((k, cfg, steps, ev, time.perf_counter() - t0))
        print(
            f"{k}x: batch {cfg.batch_size}, lr {cfg.lr:.3g}, warm-up {cfg.warmup_steps}, {steps} steps: "
            f"val loss {ev['val_loss']:.4f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    one = rows[0][3]["val_loss"]
    print()
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"date: {datetime.date.today()}  device: {platform.machine()} CPU, {torch.get_num_threads()} threads  "
        f"torch {torch.__version__}"
    )
    print(
        f"model: {gcfg.n_layer} x {gcfg.n_embd}, n_ctx {n_ctx}, vocab {gcfg.vocab_size}; {a.tokens:,.0f} "
        "training tokens a run"
    )
    print()
    print("| batch | sequences | lr | warm-up steps | steps | val loss | vs 1x | bits per byte | s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, cfg, steps, ev, secs in rows:
        print(
            f"| {k}x | {cfg.batch_size} | {cfg.lr:.3g} | {cfg.warmup_steps} | {steps} | {ev['val_loss']:.4f} | "
            f"{ev['val_loss'] / one - 1:+.1%} | {ev['val_bits_per_byte']:.4f} | {secs:.0f} |"
        )


if __name__ == "__main__":
    main()
