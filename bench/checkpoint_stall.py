"""How long a checkpoint stops training: a gpt1-sized checkpoint (the 12 x 768 model and AdamW's
two moments, about 1.4 GB), saved and reported from a Ray Train worker the way the pretraining
loop does it (pipeline/train/ray_train.py), to local disk and to object storage.

- local disk: written beside its place, then renamed into it (the stall is the save);
- object storage, sync: the upload inside ray.train.report, so training waits for it;
- object storage, async (what pretraining does): uploaded in the background, training waits for
  the local save only.

Object storage is a local S3 server (moto_server, started here on 127.0.0.1). Each mode reports
three checkpoints; the stall is the time from the start of the save to report() returning, and
for the async mode also the time until the upload is complete.

    python bench/checkpoint_stall.py [--preset gpt1] [--checkpoints 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def worker(config: dict) -> None:
    import torch

    from model import GPT, GPTConfig, make_optimizer
    from pipeline.train.checkpoint import save_checkpoint
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
    for k in range(config["checkpoints"]):
        name = f"checkpoint_{k + 1:09d}"
        t0 = time.perf_counter()
        with session.staging_dir(name) as d:
            save_checkpoint(d, gpt, opt, {"step": k + 1, "total_steps": 10}, tokenizer)
            saved = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
            session.report({"step": k + 1}, d, name)
        print(f"BENCH {k} {saved:.3f} {time.perf_counter() - t0:.3f} {size}", flush=True)
        time.sleep(config["gap"])  # training goes on meanwhile


def run_mode(run_path: str, sync: bool, preset: str, checkpoints: int, gap: float, tokenizer: Path) -> dict:
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.train.checkpoint import latest_checkpoint

    storage = run_path.rsplit("/", 1)[0]
    t0 = time.perf_counter()
    trainer = TorchTrainer(
        worker,
        train_loop_config={
            "run_path": run_path,
            "sync": sync,
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt1")
    p.add_argument("--checkpoints", type=int, default=3)
    p.add_argument("--gap", type=float, default=20.0, help="seconds of 'training' between checkpoints")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ckpt-stall-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True)
    for _ in range(100):
        try:
            fs.create_dir("bench")
            break
        except OSError:
            time.sleep(0.1)
    tokenizer = work / "tokenizer.json"
    tokenizer.write_text("{}")
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"date: {datetime.date.today()}  machine: {platform.machine()}, {os.cpu_count()} cores; "
        f"S3: moto_server on 127.0.0.1"
    )
    print()
    print("| storage | checkpoint | GB | local save s | training stalled s (save + report) |")
    print("|---|---:|---:|---:|---:|")
    try:
        for label, run_path, sync in (
            ("local disk", str(work / "runs" / "local"), False),
            ("S3, sync upload", "s3://bench/runs/sync", True),
            ("S3, async upload", "s3://bench/runs/async", False),
        ):
            r = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    run_path,
                    str(int(sync)),
                    a.preset,
                    str(a.checkpoints),
                    str(a.gap),
                    str(tokenizer),
                ],
                capture_output=True,
                text=True,
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
            for k, saved, stall, size in rows:
                print(
                    f"| {label} | {int(k) + 1} | {int(size) / 1e9:.2f} | {float(saved):.2f} | {float(stall):.2f} |"
                )
            print(f"{label}: {r.stdout.strip().splitlines()[-1]}")
    finally:
        moto.terminate()


if __name__ == "__main__" and "--one" in sys.argv:
    i = sys.argv.index("--one")
    run_path, sync, preset, n, gap, tok = sys.argv[i + 1 : i + 7]
    out = run_mode(run_path, bool(int(sync)), preset, int(n), float(gap), Path(tok))
    print(f"newest complete checkpoint {out['newest']}, run wall {out['wall']:.1f} s")
elif __name__ == "__main__":
    main()
