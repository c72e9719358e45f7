"""What a pretraining run would cost on a node type: step time, hours and dollars, from a stated
model. Every number here is an estimate, never a measurement of the run.

    compute   = sequences a GPU runs per step x n_ctx x training FLOPs per token / (MFU x peak)
    all-reduce = 2 (n - 1) / n x gradient bytes / NCCL bus bandwidth, once per step (a ring)
    step      = compute + all-reduce

The step adds the two: DDP overlaps part of the all-reduce with the backward, so the estimate is
an upper bound where the all-reduce is short and close where it dominates. MFU comes from the
measured curve MEASURED_TOKENS_PER_S (tokens/s by micro-batch, bench/gpu_check.py on an H200),
at the measured micro-batch nearest the plan's, taken as a fraction of the card's datasheet peak
and assumed for every card. The curve has one point so far (micro-batch 16); the check's
micro-batch table adds the others when it runs on a GPU.

A plan with micro_batch auto sizes it by est_micro_batch, a memory model (the run itself measures
it on its GPU at the start, pipeline/train/memory.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

# bench/RESULTS.md, bench/gpu_check.py on an H200: gpt1 (T = 512), compiled; micro-batch -> tokens/s.
MEASURED_TOKENS_PER_S = {16: 373_301}
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
    memory_gib: float = 80.0  # per GPU
    network_cards: int = 1  # EC2's MaximumNetworkCards: EFA interfaces the node can have, one a card
    efa: bool = False  # bus_bw across nodes assumes EFA (gpu.yaml's image must carry it)

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
        24.0,
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
        40.0,  # p4d.24xlarge: A100 40 GB
        network_cards=4,  # 4 x 100 Gbit/s EFA
        efa=True,
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
        network_cards=32,  # 32 x 100 Gbit/s EFA
        efa=True,
    ),
}


# What a cluster run pays before its first step, per node and in parallel across nodes. Stated
# rates, every one an estimate: no AWS account is at hand to measure them (the runbook says so).
NODE_START_S = 300.0  # EC2 launch of a p4d/p5 to its raylet joining the cluster
IMAGE_BYTES = 12e9  # the CUDA image, EFA's or Ray's own, compressed layers
PULL_RATE = 200e6  # bytes/s from the registry
INSTALL_S = {True: 20.0, False: 240.0}  # setup commands: baked into the EFA image, or pip installs on Ray's
STAGE_RATE = 400e6  # bytes/s a node stages from S3 (8 streams of ranged GETs)
COMPILE_S = 90.0  # torch.compile of the model, once per worker process
# NCCL over TCP sockets on one ENA card, where the node type's image has no EFA: a fraction of the
# card's 100 Gbit/s (est.; nccl-tests on such a setup is what the preflight would show).
TCP_BUS_GBPS = 5.0

CLUSTER_FILE = Path(__file__).resolve().parent.parent.parent / "clusters" / "gpu.yaml"


def efa_image(instance: str) -> bool | None:
    """Whether clusters/gpu.yaml runs this instance type on the EFA image (clusters/efa.Dockerfile);
    None where the file or the type is not there to say."""
    import yaml

    try:
        config = yaml.safe_load(CLUSTER_FILE.read_text())
    except OSError:
        return None
    for t in config.get("available_node_types", {}).values():
        if t.get("node_config", {}).get("InstanceType") == instance:
            image = t.get("docker", {}).get("worker_image") or config.get("docker", {}).get(
                "worker_image", ""
            )
            return "gpt1-efa" in image
    return None


def fixed_costs(nodes: int, dataset_bytes: int | None, efa: bool | None) -> dict:
    """Seconds each fixed cost takes (every node pays them at once) and their sum."""
    parts = {
        "node_start": NODE_START_S,
        "image_pull": IMAGE_BYTES / PULL_RATE,
        "install": INSTALL_S[bool(efa)],
        "staging": (dataset_bytes or 0) / STAGE_RATE,
        "compile": COMPILE_S,
    }
    return {**parts, "total": sum(parts.values())}


def measured_at(micro_batch: int) -> int:
    """The measured micro-batch nearest this one (on a log scale)."""
    return min(MEASURED_TOKENS_PER_S, key=lambda m: abs(math.log2(m) - math.log2(max(micro_batch, 1))))


def mfu_at_peak(flops_per_token: float, micro_batch: int = 16) -> float:
    """The measured H200 tokens/s at the nearest measured micro-batch, as a fraction of its
    datasheet peak."""
    return MEASURED_TOKENS_PER_S[measured_at(micro_batch)] * flops_per_token / MEASURED_PEAK


# Optimizer-held bytes per parameter: fp32 weight, gradient, and Adam's two moments.
STATE_BYTES = 16
HEADROOM = 0.85  # as pipeline/train/memory.py leaves for DDP's buckets, NCCL and fragmentation


def activation_bytes(n_ctx: int, n_embd: int, n_layer: int) -> float:
    """Bytes one sequence keeps for the backward pass in 16-bit training with a fused attention
    kernel (no T x T scores kept): 34 T d a layer, Korthikanti et al. (2022), "Reducing Activation
    Recomputation in Large Transformer Models", section 4.1."""
    return 34 * n_ctx * n_embd * n_layer


def est_micro_batch(accelerator: str, gcfg, n_params: int, candidates: list[int]) -> int:
    """The largest candidate micro-batch the memory model fits on one GPU of the node type: the
    optimizer state and one chunk of L1's fp32 logits and their gradient (model/losses.py), then
    the activations per sequence."""
    from model.losses import CHUNK_TOKENS

    room = HEADROOM * NODE_TYPES[accelerator].memory_gib * 2**30
    room -= STATE_BYTES * n_params + 2 * 4 * CHUNK_TOKENS * gcfg.padded_vocab
    per = activation_bytes(gcfg.n_ctx, gcfg.n_embd, gcfg.n_layer)
    fits = [m for m in candidates if m * per <= room]
    return max(fits) if fits else candidates[0]


def estimate(
    accelerator: str,
    workers: int,
    micro_batch: int,
    sequences: int,
    batch: int,
    n_ctx: int,
    flops_per_token: float,
    n_params: int,
    grad_bytes: int,
    total_steps: int | None,
    dataset_bytes: int | None = None,
    network_gbps: float = 0.0,
) -> dict:
    """The est_* keys of a plan: per step, the fixed costs before the first, and, where the run's
    length is known, in all. Each figure's origin is in est_marks: "measured" (and where), or
    "est." (a model or a stated rate). The all-reduce across nodes uses network_gbps where the
    user gives one (a preflight's figure), else the node type's, else, where gpu.yaml runs the
    type on an image without EFA, NCCL over TCP (TCP_BUS_GBPS), flagged. A step costs the most
    `sequences` any GPU runs of the `batch` (micro-batches accumulated, or a rebalanced share)."""
    node = NODE_TYPES[accelerator]
    nodes = math.ceil(workers / node.gpus)
    mfu = mfu_at_peak(flops_per_token, micro_batch)
    compute = sequences * n_ctx * flops_per_token / (mfu * node.peak)
    efa = efa_image(node.instance)
    bandwidth, network_mark = node.bandwidth(nodes), "est. (sources below)"
    if nodes > 1 and network_gbps > 0:
        bandwidth, network_mark = network_gbps * 1e9, "as stated (network_gbps: a preflight's figure)"
    elif nodes > 1 and node.efa and efa is False:
        bandwidth = min(bandwidth, TCP_BUS_GBPS * 1e9)
        network_mark = f"est.: NO EFA on this node type's image (clusters/gpu.yaml), NCCL over TCP at {TCP_BUS_GBPS:g} GB/s"
    ring = 2 * (workers - 1) / workers * n_params * grad_bytes / bandwidth if workers > 1 else 0.0
    step = compute + ring
    fixed = fixed_costs(nodes, dataset_bytes, efa)
    out = {
        "est_node_type": node.instance,
        "est_nodes": nodes,
        "est_mfu": mfu,
        "est_mfu_measured_at_micro_batch": measured_at(micro_batch),
        "est_compute_ms": compute * 1e3,
        "est_allreduce_ms": ring * 1e3,
        "est_step_ms": step * 1e3,
        "est_tokens_per_s": batch * n_ctx / step,
        "est_bus_gbps": bandwidth / 1e9 if nodes > 1 else None,
        "est_no_efa": nodes > 1 and node.efa and efa is False and network_gbps <= 0,
        "est_fixed_s": fixed,
        "est_fixed_cost_usd": fixed["total"] / 3600 * nodes * node.dollars_per_hour,
        "est_hours": None,
        "est_cost_usd": None,
        "est_total_cost_usd": None,
        "est_sources": node.sources,
        "est_marks": {
            "compute": f"est.: the MFU measured on an H200 at micro-batch {measured_at(micro_batch)} "
            "(bench/RESULTS.md), taken for this card",
            "network": network_mark,
            "fixed": "est.: stated rates (pipeline/train/estimate.py), not measured",
            "staging": "est.: the dataset's bytes (without --data, the run's tokens) at the stated rate"
            if dataset_bytes
            else "not counted: neither --data nor a length to size it",
        },
    }
    if total_steps:
        hours = total_steps * step / 3600
        cost = hours * nodes * node.dollars_per_hour
        out.update(est_hours=hours, est_cost_usd=cost, est_total_cost_usd=cost + out["est_fixed_cost_usd"])
    return out
