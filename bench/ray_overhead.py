"""What Ray Train costs: the same pretraining loop under TorchTrainer (1 worker) and in a plain process.

Both run pipeline.train.loop with the same config, data, threads and MLflow logging; the plain
process uses LocalSession instead of Ray Train's. They alternate, round by round, so drift in the
machine's speed hits both alike. Throughput is the median of the per-interval tokens/s that rank 0
logs, leaving out the first interval (start-up, first allocations). The input pipeline's share is
the time spent fetching micro-batches over the interval's wall time.

    python bench/ray_overhead.py                    # CPU, mini preset, on tinyshakespeare
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
import torch  # noqa: E402

from model import GPTConfig  # noqa: E402
from pipeline.configio import load  # noqa: E402
from pipeline.data.dataset import open_dataset  # noqa: E402
from pipeline.data.prepare import PrepareConfig, prepare  # noqa: E402
from pipeline.tracking import RunLogger  # noqa: E402
from pipeline.train.loop import LocalSession, LoopSpec, train_loop  # noqa: E402
from pipeline.train.plan import model_config  # noqa: E402
from pipeline.train.pretrain import PRESETS_DIR, PretrainConfig, pretrain  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "tinyshakespeare.txt"


def history(uri: str, run_id: str, key: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    return [m.value for m in sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: m.step)]


def plain(uri: str, spec: LoopSpec, name: str) -> str:
    """The loop in this process, logging to its own MLflow run as rank 0 would."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench-plain") or client.get_experiment(
        client.create_experiment("bench-plain")
    )
    run = client.create_run(exp.experiment_id, run_name=name)
    tracker = RunLogger(uri, run.info.run_id)
    tracker.log_model = lambda *a: None  # as in the Ray runs below, no final artifacts
    torch.set_num_threads(spec.threads)
    train_loop(spec, LocalSession(), tracker)
    return run.info.run_id


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="mini", help="pretraining preset or YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--corpus", default=str(CORPUS))
    p.add_argument("--workdir", default=None, help="where the dataset and runs go (default: a temp dir)")
    a = p.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="ray-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = load(
        PretrainConfig(),
        a.config,
        PRESETS_DIR,
        [f"max_steps={a.steps}", "log_every=5", "eval_every=0", f"checkpoint_every={a.steps}"] + a.set,
    )
    data = work / "data"
    ray.init(address="local", logging_level="WARNING")
    n_ctx = GPTConfig.preset(cfg.model, **cfg.model_overrides).n_ctx
    prepare([a.corpus], data, PrepareConfig(n_ctx=n_ctx, n_merges=8000), track=False)
    manifest = open_dataset(data)
    gcfg = model_config(cfg, manifest, data)
    threads = int(ray.cluster_resources()["CPU"])
    uri = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri  # pretrain() logs there too

    tps = {"plain process": [], "TorchTrainer, 1 worker": []}
    wait = {k: [] for k in tps}
    for r in range(a.rounds):
        spec = LoopSpec(
            pretrain=cfg, model=gcfg, data=str(data), total_steps=a.steps, threads=threads, mlflow_uri=uri
        )
        run_id = plain(uri, spec, f"plain-{r}")
        tps["plain process"] += history(uri, run_id, "tokens_per_s")[1:]
        wait["plain process"] += history(uri, run_id, "data_wait")[1:]
        out = pretrain(data, cfg, workers=1, name=f"ray-{r}", storage=str(work / "runs"))
        tps["TorchTrainer, 1 worker"] += history(uri, out["run_id"], "tokens_per_s")[1:]
        wait["TorchTrainer, 1 worker"] += history(uri, out["run_id"], "data_wait")[1:]

    base = statistics.median(tps["plain process"])
    device = f"{platform.processor() or platform.machine()} CPU, {threads} threads"
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"date: {datetime.date.today()}  device: {device}  torch {torch.__version__}")
    print(
        f"config {a.config}: {gcfg.n_layer} x {gcfg.n_embd}, vocab {gcfg.vocab_size}, batch {cfg.batch_size} x "
        f"{gcfg.n_ctx}, {a.steps} steps x {a.rounds} rounds each, alternating; intervals of 5 steps"
    )
    print()
    print("| loop | tokens/s, median (min-max) | vs plain | waiting for data |")
    print("|---|---:|---:|---:|")
    for k in tps:
        m = statistics.median(tps[k])
        print(
            f"| {k} | {m:,.0f} ({min(tps[k]):,.0f}-{max(tps[k]):,.0f}) | {m / base - 1:+.1%} | "
            f"{statistics.median(wait[k]):.2%} |"
        )


if __name__ == "__main__":
    main()
