"""What watching a run costs (issue 46): the pretraining loop's step time with and without MLflow's
system metrics (sampled every --interval seconds, as each node of a run samples them) and the
loss-spike monitor (spike_factor 3, max_rewinds 3: every step's loss checked against the median
of the last 100), measured side by side on this machine's CPU, rounds alternating.

Each round runs --steps steps of the `small` preset (4 x 128, batch 8 x 128 tokens) in one process
(a LocalSession, no Ray), after --warmup untimed steps, through the loop's run() with its checks
every 10 steps; the system metrics go to an SQLite MLflow run (each rank's busy time is measured
in both arms: it is part of every run now).

    python bench/monitoring_overhead.py [--steps 300] [--rounds 3] [--interval 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--interval", type=float, default=10.0, help="system metrics' sampling interval, seconds")
    a = p.parse_args()

    import torch
    from mlflow.tracking import MlflowClient

    from gpt1 import world
    from pipeline.configio import load
    from pipeline.data.dataset import open_dataset
    from pipeline.data.prepare import PrepareConfig, prepare
    from pipeline.train.loop import LocalSession, LoopSpec, Pretraining
    from pipeline.train.observe import system_metrics
    from pipeline.train.plan import model_config
    from pipeline.train.pretrain import PRESETS_DIR, PretrainConfig

    work = Path(tempfile.mkdtemp(prefix="monitoring-"))
    corpus = world.write_corpus(work / "corpus.txt", 3000)
    prepare([str(corpus)], work / "data", PrepareConfig(n_merges=1000, n_ctx=128), track=False, local=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("monitoring")
    total = a.warmup + a.steps
    base = load(
        PretrainConfig(), "small", PRESETS_DIR, [f"max_steps={total}", "log_every=10", "eval_every=0"]
    )
    base = dataclasses.replace(base, checkpoint_every=10**6, checkpoint_every_minutes=0)
    arms = {
        "off": dataclasses.replace(base, system_metrics_s=0),
        "on": dataclasses.replace(base, system_metrics_s=a.interval, spike_factor=3.0, max_rewinds=3),
    }
    data = work / "data"
    gcfg = model_config(base, open_dataset(data), data)

    def one(cfg) -> float:
        run_id = client.create_run(experiment).info.run_id
        spec = LoopSpec(pretrain=cfg, model=gcfg, data=str(data), total_steps=total)
        # No per-step MLflow logging in either arm (its cost is not the monitors'); the system
        # metrics go to the run through their own client, as on a node.
        loop = Pretraining(spec, LocalSession("cpu"))
        monitor = system_metrics(run_id, uri, 0, cfg.system_metrics_s)
        try:
            for _ in range(a.warmup):
                loop.train_step()
            t0 = time.perf_counter()
            loop.run()
            return (time.perf_counter() - t0) / a.steps
        finally:
            if monitor is not None:
                monitor.finish()

    times: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(a.rounds):
        for name in arms if r % 2 == 0 else reversed(list(arms)):
            times[name].append(one(arms[name]))
            print(f"round {r + 1} {name}: {times[name][-1] * 1e3:.1f} ms a step", flush=True)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print()
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"device: {platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads  torch {torch.__version__}"
    )
    print("| arm | ms a step, each round | median |")
    print("|---|---|---:|")
    for name, ts in times.items():
        print(f"| {name} | {', '.join(f'{t * 1e3:.1f}' for t in ts)} | {statistics.median(ts) * 1e3:.1f} |")
    print(
        f"overhead of system metrics (every {a.interval:g} s) and the spike monitor: {100 * (on / off - 1):+.2f}% (target: under 1%)"
    )


if __name__ == "__main__":
    main()
