"""How long a checkpoint stops training: a gpt1-sized checkpoint (the 12 x 768 model and AdamW's
two moments, about 1.4 GB), saved and reported from a Ray Train worker the way the pretraining
loop does it (pipeline/train/ray_train.py), to local disk and to object storage.

- save: written (and hashed) on the training thread, then reported: training waits for all of it;
- snapshot (what pretraining does): the model and AdamW's state copied into memory on the
  training thread, then written and hashed by a thread while training goes on, and reported at
  the next log step (pipeline/train/loop.py);
- to local disk: written beside its place, then renamed into it;
- to object storage: uploaded in the background after the local write (Ray Train's async upload);
  with --sync-upload also the upload inside ray.train.report, which training waits for.

Object storage is a local S3 server (moto_server, started here on 127.0.0.1). Each mode reports
three checkpoints, `--gap` seconds of "training" apart; the stall is the time the training
thread spends on a checkpoint: save and report, or snapshot, then the report after the gap
(with the join of a write that outlasted it).

    python bench/checkpoint_stall.py [--preset gpt1] [--checkpoints 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def worker(config: dict) -> None:
    import threading

    import torch

    from model import GPT, GPTConfig, make_optimizer
    from pipeline.train.checkpoint import save_checkpoint, snapshot, write_checkpoint
    from pipeline.train.ray_train import RaySession

    gpt = GPT(GPTConfig.preset(config["preset"]))
    opt = make_optimizer(gpt, 2.5e-4)
    for p in gpt.parameters():  # AdamW's moments exist once a step has been taken
        p.grad = torch.zeros_like(p)
    opt.step()
    session = RaySession(config["run_path"])
    if not session.remote:
        Path(config["run_path"]).mkdir(parents=True, exist_ok=True)
    tokenizer = Path(config["tokenizer"])
    session.async_upload = not config["sync"]
    state = {"step": 0, "total_steps": 10}
    for k in range(config["checkpoints"]):
        name = f"checkpoint_{k + 1:09d}"
        t0 = time.perf_counter()
        with session.staging_dir(name) as d:
            if config["snapshot"]:
                snap = snapshot(gpt, opt)
                writer = threading.Thread(
                    target=write_checkpoint, args=(d, snap, {**state, "step": k + 1}, tokenizer)
                )
                writer.start()
                stalled = time.perf_counter() - t0
                time.sleep(config["gap"])  # training goes on meanwhile
                t1 = time.perf_counter()
                writer.join()
                size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
                session.report({"step": k + 1}, d, name)
                stalled += time.perf_counter() - t1
            else:
                save_checkpoint(d, gpt, opt, {**state, "step": k + 1}, tokenizer)
                size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
                session.report({"step": k + 1}, d, name)
                stalled = time.perf_counter() - t0
        print(f"BENCH {k} {stalled:.3f} {size}", flush=True)
        if not config["snapshot"]:
            time.sleep(config["gap"])  # training goes on meanwhile


def run_mode(
    run_path: str, sync: bool, snap: bool, preset: str, checkpoints: int, gap: float, tokenizer: Path
) -> dict:
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.model_dir import latest_checkpoint

    storage = run_path.rsplit("/", 1)[0]
    t0 = time.perf_counter()
    trainer = TorchTrainer(
        worker,
        train_loop_config={
            "run_path": run_path,
            "sync": sync,
            "snapshot": snap,
            "preset": preset,
            "checkpoints": checkpoints,
            "gap": gap,
            "tokenizer": str(tokenizer),
        },
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name=run_path.rsplit("/", 1)[1],
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=checkpoints),
        ),
    )
    trainer.fit()
    wall = time.perf_counter() - t0
    newest = latest_checkpoint(run_path)
    ray.shutdown()
    return {"wall": wall, "newest": newest}


def main() -> None:
    from local_s3 import local_s3

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt1")
    p.add_argument("--checkpoints", type=int, default=3)
    p.add_argument("--gap", type=float, default=20.0, help="seconds of 'training' between checkpoints")
    p.add_argument("--sync-upload", action="store_true", help="also the upload inside report() (minutes)")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ckpt-stall-"))
    tokenizer = work / "tokenizer.json"
    tokenizer.write_text("{}")
    modes = [
        ("local disk, save", str(work / "runs" / "save"), False, False),
        ("local disk, snapshot", str(work / "runs" / "snapshot"), False, True),
        ("S3 async upload, save", "s3://bench/runs/save", False, False),
        ("S3 async upload, snapshot", "s3://bench/runs/snapshot", False, True),
    ]
    if a.sync_upload:
        modes.append(("S3 sync upload, save", "s3://bench/runs/sync", True, False))
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"date: {datetime.date.today()}  machine: {platform.machine()}, {os.cpu_count()} cores; "
        f"S3: moto_server on 127.0.0.1"
    )
    print()
    print("| storage, mode | checkpoint | GB | training stalled s |")
    print("|---|---:|---:|---:|")
    with local_s3():
        for label, run_path, sync, snap in modes:
            args = [run_path, str(int(sync)), str(int(snap)), a.preset, str(a.checkpoints), str(a.gap)]
            r = subprocess.run(
                [sys.executable, __file__, "--one", *args, str(tokenizer)], capture_output=True, text=True
            )
            # The worker's lines reach this process through Ray's log forwarding (on stderr).
            rows = sorted(
                {
                    tuple(line.split("BENCH ", 1)[1].split())
                    for line in (r.stdout + r.stderr).splitlines()
                    if "BENCH " in line
                }
            )
            if r.returncode or not rows:
                sys.exit(f"bench: {label} failed:\n{r.stderr[-3000:]}")
            for k, stalled, size in rows:
                print(f"| {label} | {int(k) + 1} | {int(size) / 1e9:.2f} | {float(stalled):.2f} |")
            print(f"{label}: {r.stdout.strip().splitlines()[-1]}")


if __name__ == "__main__" and "--one" in sys.argv:
    i = sys.argv.index("--one")
    run_path, sync, snap, preset, n, gap, tok = sys.argv[i + 1 : i + 8]
    out = run_mode(run_path, bool(int(sync)), bool(int(snap)), preset, int(n), float(gap), Path(tok))
    print(f"newest complete checkpoint {out['newest']}, run wall {out['wall']:.1f} s")
elif __name__ == "__main__":
    main()
