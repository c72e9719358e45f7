"""The network a run's gradients cross, measured with the run's own workers before it spends money.

An all-reduce of the run's gradient bytes (NCCL on GPUs, gloo on CPUs) is timed on the ranks of
the first 1, 2, 4, ... N nodes (a process subgroup each), and reported as nccl-tests'
all_reduce_perf reports it:

    algbw = bytes / seconds        busbw = algbw x 2 (n - 1) / n    (n ranks: what a ring moves a rank)

busbw is the figure the plan assumes (pipeline/train/estimate.py, NodeType.bus_bw), so the two
compare directly. A run on several nodes whose busbw across all of them is under a quarter of the
plan's stops with one line (unless slow_network_ok): on Ray's stock image NCCL goes over TCP, at a
small fraction of EFA's bandwidth, and the run would cost more than one node would.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from pipeline.train.estimate import NODE_TYPES

TOO_SLOW = 4  # a network this many times slower than planned stops a multi-node run
WARMUP, ITERS = 2, 5  # all-reduces before the clock starts (connections, NCCL's channels), and timed


def node_counts(nodes: int) -> list[int]:
    """1, 2, 4, ... and the whole run's count."""
    counts, k = [], 1
    while k < nodes:
        counts.append(k)
        k *= 2
    return [*counts, nodes]


def assumed_gbps(nodes: int, accelerator: str | None, stated: float) -> float | None:
    """The bus bandwidth, GB/s, that the plan prices across this many nodes: the one the user
    stated (network_gbps), else the node type's (--accelerator), else none to compare with."""
    if stated > 0:
        return stated
    if accelerator in NODE_TYPES:
        return NODE_TYPES[accelerator].bandwidth(nodes) / 1e9
    return None


def measure(rank: int, world: int, nodes_of: list[str], device: torch.device, nbytes: int) -> list[dict]:
    """Every rank calls this at once (a collective), with every rank's node (nodes_of[r]). Returns,
    on every rank, one row per node count: nodes, ranks, bytes, seconds per all-reduce (the
    slowest rank's), algbw and busbw in GB/s (None where one rank has nobody to exchange with)."""
    order = list(dict.fromkeys(nodes_of))  # nodes by their first rank
    index = [order.index(n) for n in nodes_of]
    x = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=device)
    rows = []
    for k in node_counts(len(order)):
        ranks = [r for r in range(world) if index[r] < k]
        # Every rank takes part in making each group (new_group is collective), members or not.
        group = None if len(ranks) == world else dist.new_group(ranks)
        seconds = None
        if rank in ranks and len(ranks) > 1:
            for _ in range(WARMUP):
                dist.all_reduce(x, group=group)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(ITERS):
                dist.all_reduce(x, group=group)
            sync(device)
            t = torch.tensor([(time.perf_counter() - t0) / ITERS], dtype=torch.float64, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
            seconds = t.item()
        got = [None] * world
        dist.all_gather_object(got, seconds)  # the members' figure, to every rank
        seconds = got[ranks[0]]
        n = len(ranks)
        algbw = x.numel() * 4 / seconds / 1e9 if seconds else None
        busbw = algbw * 2 * (n - 1) / n if algbw else None
        rows.append(
            {
                "nodes": k,
                "ranks": n,
                "bytes": x.numel() * 4,
                "seconds": seconds,
                "algbw": algbw,
                "busbw": busbw,
            }
        )
        if group is not None:
            dist.destroy_process_group(group)
    return rows


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def with_assumption(rows: list[dict], accelerator: str | None, stated: float) -> list[dict]:
    """Each row with the plan's figure for its node count beside it (None within one node, where
    the plan's figure is the node's own and nothing crosses the network)."""
    return [
        {**r, "assumed": assumed_gbps(r["nodes"], accelerator, stated) if r["nodes"] > 1 else None}
        for r in rows
    ]


def too_slow(rows: list[dict]) -> str | None:
    """The line that stops a multi-node run, or None: across all its nodes, the measured busbw
    is under a quarter of the plan's."""
    widest = rows[-1]
    if widest["nodes"] < 2 or not widest["busbw"] or not widest["assumed"]:
        return None
    if widest["busbw"] * TOO_SLOW >= widest["assumed"]:
        return None
    return (
        f"network: an all-reduce across {widest['nodes']} nodes measured {widest['busbw']:.3g} GB/s of bus "
        f"bandwidth, under a quarter of the {widest['assumed']:g} GB/s the plan assumes; on AWS, run the "
        "p4d/p5 nodes on the EFA image (clusters/README.md), or pass --slow-network-ok to train anyway"
    )


def table(rows: list[dict]) -> list[str]:
    """The rows as the console prints them."""
    lines = [
        f"{'nodes':>5} {'ranks':>5} {'MB':>8} {'ms':>9} {'algbw GB/s':>10} {'busbw GB/s':>10} {'plan GB/s':>9}"
    ]
    for r in rows:
        ms = f"{r['seconds'] * 1e3:9.2f}" if r["seconds"] else f"{'-':>9}"
        alg = f"{r['algbw']:10.4g}" if r["algbw"] else f"{'-':>10}"
        bus = f"{r['busbw']:10.4g}" if r["busbw"] else f"{'-':>10}"
        plan = f"{r['assumed']:9g}" if r.get("assumed") else f"{'-':>9}"
        lines.append(f"{r['nodes']:>5} {r['ranks']:>5} {r['bytes'] / 1e6:8.1f} {ms} {alg} {bus} {plan}")
    return lines


def metrics(rows: list[dict]) -> dict:
    """The rows as MLflow metrics: busbw at each node count, and the plan's figure across all."""
    out = {f"network_busbw_gbps_{r['nodes']}_nodes": r["busbw"] for r in rows if r["busbw"]}
    if rows[-1].get("assumed"):
        out["network_busbw_gbps_planned"] = rows[-1]["assumed"]
    return out


def gradient_bytes(model: torch.nn.Module, compression: str) -> int:
    """What DDP all-reduces a step: every trainable parameter's gradient, in fp32 or, with
    grad_compression bf16, half that."""
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return n * (2 if compression == "bf16" else 4)
