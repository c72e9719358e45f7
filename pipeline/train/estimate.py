"""What a pretraining run would cost on a node type: step time, hours and dollars, from a stated
model. Every number here is an estimate, never a measurement of the run.

    compute   = sequences a GPU runs per step x n_ctx x training FLOPs per token / (MFU x peak)
    all-reduce = 2 (n - 1) / n x gradient bytes / NCCL bus bandwidth, once per step (a ring)
    step      = compute + all-reduce

The step adds the two: DDP overlaps part of the all-reduce with the backward, so the estimate is
an upper bound where the all-reduce is short and close where it dominates. MFU is the one
measured on an H200 (bench/RESULTS.md, `python bench/gpu_check.py`: model.GPT gpt1, T = 512,
micro-batch 16, compiled, 373,301 tokens/s), taken as a fraction of the card's datasheet peak and
assumed for every card; smaller micro-batches run below it (kernel launches bound them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# bench/RESULTS.md, bench/gpu_check.py on an H200: gpt1 (T = 512, micro-batch 16), compiled.
MEASURED_TOKENS_PER_S = 373_301
MEASURED_PEAK = 989e12  # the H200's dense bf16 datasheet peak, FLOP/s


@dataclass(frozen=True)
class NodeType:
    """One of clusters/gpu.yaml's GPU node types, with the figures the model uses."""

    instance: str
    gpus: int  # per node
    peak: float  # dense bf16 FLOP/s per GPU, datasheet
    bus_bw: dict  # nodes -> NCCL all-reduce bus bandwidth, GB/s (the largest key for more nodes)
    dollars_per_hour: float  # per node, on-demand, us-east-1
    sources: str

    def bandwidth(self, nodes: int) -> float:
        return self.bus_bw[max(k for k in self.bus_bw if k <= nodes)] * 1e9


NODE_TYPES = {
    "A10G": NodeType(
        "g5.12xlarge",
        4,
        125e12,
        {1: 12.0, 2: 3.0},
        5.672,
        "peak: NVIDIA A10 datasheet (A10G is AWS's A10); bus bandwidth: estimated, not a cited "
        "measurement: PCIe Gen4 within a node, 60% of the 40 Gbps network across nodes (p4d's "
        "measured ratio); price: AWS on-demand list",
    ),
    "A100": NodeType(
        "p4d.24xlarge",
        8,
        312e12,
        {1: 231.0, 2: 57.0, 4: 30.0},
        32.77,
        "peak: NVIDIA A100 datasheet; bus bandwidth: nccl-tests all_reduce_perf on p4d with EFA "
        "(1 / 2 / 4 nodes), from the public record as gathered in this project's scale review; "
        "price: AWS on-demand list before its 2025 cut",
    ),
    "H100": NodeType(
        "p5.48xlarge",
        8,
        989e12,
        {1: 480.0, 2: 240.0},
        98.32,
        "peak: NVIDIA H100 SXM datasheet; bus bandwidth: 480 GB/s within a node (NVLS, NVIDIA GTC "
        "S62129), across nodes estimated as 60% of 3,200 Gbps EFA (p4d's measured ratio); price: "
        "AWS on-demand list before its 2025 cut",
    ),
}


def mfu_at_peak(flops_per_token: float) -> float:
    """The measured H200 run's tokens/s as a fraction of its datasheet peak."""
    return MEASURED_TOKENS_PER_S * flops_per_token / MEASURED_PEAK


def estimate(
    accelerator: str,
    workers: int,
    micro_batch: int,
    accumulation: int,
    n_ctx: int,
    flops_per_token: float,
    n_params: int,
    grad_bytes: int,
    total_steps: int | None,
) -> dict:
    """The est_* keys of a plan: per step and, where the run's length is known, in all."""
    node = NODE_TYPES[accelerator]
    nodes = math.ceil(workers / node.gpus)
    mfu = mfu_at_peak(flops_per_token)
    compute = micro_batch * accumulation * n_ctx * flops_per_token / (mfu * node.peak)
    ring = 2 * (workers - 1) / workers * n_params * grad_bytes / node.bandwidth(nodes) if workers > 1 else 0.0
    step = compute + ring
    out = {
        "est_node_type": node.instance,
        "est_nodes": nodes,
        "est_mfu": mfu,
        "est_compute_ms": compute * 1e3,
        "est_allreduce_ms": ring * 1e3,
        "est_step_ms": step * 1e3,
        "est_tokens_per_s": workers * micro_batch * accumulation * n_ctx / step,
        "est_hours": None,
        "est_cost_usd": None,
        "est_sources": node.sources,
    }
    if total_steps:
        hours = total_steps * step / 3600
        out.update(est_hours=hours, est_cost_usd=hours * nodes * node.dollars_per_hour)
    return out
