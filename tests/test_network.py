"""The network preflight's arithmetic and its collectives, on gloo in two processes of this
machine (each told it is on a node of its own): the rows nccl-tests would print, and the verdict
that stops a multi-node run."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.runtime import free_port
from pipeline.train import network


def _worker(rank: int, port: int, nodes: list[str], out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(nodes))
    try:
        out.put((rank, network.measure(rank, len(nodes), nodes, torch.device("cpu"), 1 << 20)))
    finally:
        dist.destroy_process_group()


def measured(nodes: list[str]) -> dict[int, list[dict]]:
    port = free_port()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, nodes, out)) for r in range(len(nodes))]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


def test_the_all_reduce_is_timed_on_one_node_then_on_all_and_every_rank_gets_the_same_rows():
    # Ranks 0 and 2 on node a, rank 1 on node b: the first node is a's (rank 0's).
    got = measured(["a", "b", "a"])
    assert got[0] == got[1] == got[2]
    one, both = got[0]
    assert (one["nodes"], one["ranks"], both["nodes"], both["ranks"]) == (1, 2, 2, 3)
    for row in (one, both):
        assert row["bytes"] == 1 << 20 and row["seconds"] > 0
        assert row["algbw"] == pytest.approx(row["bytes"] / row["seconds"] / 1e9)
        n = row["ranks"]
        assert row["busbw"] == pytest.approx(row["algbw"] * 2 * (n - 1) / n)  # nccl-tests' all-reduce


def test_a_lone_rank_on_the_first_node_has_nothing_to_measure_there():
    one, both = measured(["a", "b"])[0]
    assert one["ranks"] == 1 and one["seconds"] is None and one["busbw"] is None
    assert both["ranks"] == 2 and both["busbw"] > 0


def test_node_counts_double_up_to_the_whole_run():
    assert network.node_counts(1) == [1]
    assert network.node_counts(2) == [1, 2]
    assert network.node_counts(8) == [1, 2, 4, 8]
    assert network.node_counts(6) == [1, 2, 4, 6]


def row(nodes: int, busbw: float | None) -> dict:
    return {"nodes": nodes, "ranks": nodes * 8, "bytes": 1, "seconds": 1.0, "algbw": busbw, "busbw": busbw}


def test_a_network_under_a_quarter_of_the_plans_stops_a_multi_node_run():
    # p4d's figure across 2 nodes is 57 GB/s (estimate.py): 14 is under a quarter, 15 is not.
    slow = network.with_assumption([row(1, 200.0), row(2, 14.0)], "A100", 0.0)
    assert slow[0]["assumed"] is None and slow[1]["assumed"] == 57.0
    line = network.too_slow(slow)
    assert "measured 14 GB/s" in line and "57 GB/s" in line and "--slow-network-ok" in line
    assert network.too_slow(network.with_assumption([row(1, 200.0), row(2, 15.0)], "A100", 0.0)) is None
    # A figure the user states wins over the node type's; with neither there is nothing to compare.
    assert network.too_slow(network.with_assumption([row(2, 15.0)], "A100", 100.0)) is not None
    assert network.too_slow(network.with_assumption([row(2, 0.001)], None, 0.0)) is None
    # One node: nothing crosses the network, whatever it measured.
    assert network.too_slow(network.with_assumption([row(1, 0.001)], "A100", 1000.0)) is None
    assert network.metrics(slow) == {
        "network_busbw_gbps_1_nodes": 200.0,
        "network_busbw_gbps_2_nodes": 14.0,
        "network_busbw_gbps_planned": 57.0,
    }
