"""The run-plan model's table (pipeline/train/estimate.py): the gpt1 preset on 8, 16 and 64 GPUs
of each node type of clusters/gpu.yaml, with the paper's batch as given and with
batch_tokens=auto, for a token budget, with the fixed costs before the first step. Every figure
is an estimate from the stated model, not a measurement; no GPU is used. --no-efa prices the
p4d and p5 as they ran before clusters/efa.Dockerfile: Ray's own image, NCCL over TCP.

    python bench/plan_table.py [--tokens 10000000000] [--no-efa]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from pipeline.configio import load
    from pipeline.train.config import PretrainConfig
    from pipeline.train.estimate import NODE_TYPES
    from pipeline.train.plan import model_config, run_plan
    from pipeline.train.pretrain import PRESETS_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=10_000_000_000)
    p.add_argument("--no-efa", action="store_true", help="every node type on Ray's own image")
    a = p.parse_args()
    if a.no_efa:
        import tempfile

        import yaml

        from pipeline.train import estimate

        config = yaml.safe_load(estimate.CLUSTER_FILE.read_text())
        for t in config["available_node_types"].values():
            t.get("docker", {}).pop("worker_image", None)  # the file's default: rayproject/ray
        stock = Path(tempfile.mkdtemp()) / "gpu.yaml"
        stock.write_text(yaml.safe_dump(config))
        estimate.CLUSTER_FILE = stock
    paper = dataclasses.replace(load(PretrainConfig(), "gpt1", PRESETS_DIR), max_tokens=a.tokens)
    gcfg = model_config(paper, None, None)
    print(f"command: python bench/plan_table.py --tokens {a.tokens}{' --no-efa' if a.no_efa else ''}")
    print()
    print(
        "| accelerator (node) | GPUs | batch | tokens/step | est. compute ms | est. bus GB/s | est. all-reduce ms | "
        "est. step ms | est. tokens/s | est. hours | est. $ run | est. fixed min | est. $ fixed | est. $ total |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for acc, node in NODE_TYPES.items():
        for workers in (8, 16, 64):
            for label, cfg in (("paper", paper), ("auto", dataclasses.replace(paper, batch_tokens="auto"))):
                r = run_plan(cfg, gcfg, workers, accelerator=acc)
                bus = (
                    f"{r['est_bus_gbps']:g}{' (TCP)' if r['est_no_efa'] else ''}"
                    if r["est_bus_gbps"]
                    else "-"
                )
                print(
                    f"| {acc} ({node.instance}) | {workers} | {label} | {r['tokens_per_step']:,} | "
                    f"{r['est_compute_ms']:.1f} | {bus} | {r['est_allreduce_ms']:.1f} | {r['est_step_ms']:.1f} | "
                    f"{r['est_tokens_per_s']:,.0f} | {r['est_hours']:,.1f} | {r['est_cost_usd']:,.0f} | "
                    f"{r['est_fixed_s']['total'] / 60:.0f} | {r['est_fixed_cost_usd']:,.0f} | "
                    f"{r['est_total_cost_usd']:,.0f} |"
                )
    print()
    for acc, node in NODE_TYPES.items():
        print(f"- {acc}: {node.sources}")


if __name__ == "__main__":
    main()
