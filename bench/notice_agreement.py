"""What agreeing on a node's notice at every step costs (issue 46): the pretraining loop on two gloo
processes of this machine with and without the per-step agreement (preemption.Agreement: a sum of
one number on a gloo group of its own, started at each step boundary and read at the next),
measured side by side, rounds alternating.

Each round runs --steps steps of the `small` preset (4 x 128, batch 8 x 128 tokens, 4 sequences a
worker) through the loop's run() after --warmup untimed steps; "on" gives each rank a watch with
no notice (as every Ray Train worker has), "off" none. One thread a process: the machine's two
cores, one a rank.

    python bench/notice_agreement.py [--steps 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import queue
import shlex
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rank_main(rank: int, world: int, port: int, spec, warmup: int, watched: bool, out) -> None:
    import torch
    import torch.distributed as dist

    from pipeline.train.loop import LocalSession, Pretraining

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        session = LocalSession("cpu", rank=rank, world_size=world)
        if watched:
            session.watch = types.SimpleNamespace(notice=None)
        loop = Pretraining(spec, session)
        for _ in range(warmup):
            loop.train_step()
        dist.barrier()
        t0 = time.perf_counter()
        loop.run()
        out.put((rank, time.perf_counter() - t0))
    finally:
        dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()

    import torch
    import torch.multiprocessing as mp

    from gpt1 import world
    from pipeline.configio import load
    from pipeline.data.dataset import open_dataset
    from pipeline.data.prepare import PrepareConfig, prepare
    from pipeline.runtime import free_port
    from pipeline.train.loop import LoopSpec
    from pipeline.train.plan import model_config
    from pipeline.train.pretrain import PRESETS_DIR, PretrainConfig

    work = Path(tempfile.mkdtemp(prefix="agreement-"))
    corpus = world.write_corpus(work / "corpus.txt", 3000)
    prepare([str(corpus)], work / "data", PrepareConfig(n_merges=1000, n_ctx=128), track=False, local=True)
    total = a.warmup + a.steps
    cfg = load(PretrainConfig(), "small", PRESETS_DIR, [f"max_steps={total}", "log_every=10", "eval_every=0"])
    cfg = dataclasses.replace(
        cfg, checkpoint_every=10**6, checkpoint_every_minutes=0, system_metrics_s=0, micro_batch=4
    )
    data = work / "data"
    spec = LoopSpec(
        pretrain=cfg, model=model_config(cfg, open_dataset(data), data), data=str(data), total_steps=total
    )
    ctx = mp.get_context("spawn")

    def one(watched: bool) -> float:
        port, out = free_port(), ctx.Queue()
        procs = [
            ctx.Process(target=rank_main, args=(r, 2, port, spec, a.warmup, watched, out)) for r in range(2)
        ]
        for proc in procs:
            proc.start()
        got = []
        while len(got) < 2:
            try:
                got.append(out.get(timeout=5)[1])
            except queue.Empty:
                assert all(proc.exitcode in (None, 0) for proc in procs), [proc.exitcode for proc in procs]
        for proc in procs:
            proc.join()
        return max(got) / a.steps

    arms = {"off": False, "on": True}
    times: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(a.rounds):
        for name in arms if r % 2 == 0 else reversed(list(arms)):
            times[name].append(one(arms[name]))
            print(f"round {r + 1} {name}: {times[name][-1] * 1e3:.1f} ms a step", flush=True)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print()
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"device: {platform.processor() or platform.machine()} CPU, 2 gloo processes of 1 thread  torch {torch.__version__}"
    )
    print("| arm | ms a step, each round | median |")
    print("|---|---|---:|")
    for name, ts in times.items():
        print(f"| {name} | {', '.join(f'{t * 1e3:.1f}' for t in ts)} | {statistics.median(ts) * 1e3:.1f} |")
    print(f"overhead of the per-step notice agreement: {100 * (on / off - 1):+.2f}% (target: under 1%)")


if __name__ == "__main__":
    main()
