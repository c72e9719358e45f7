"""micro_batch: auto, the largest micro-batch that fits one GPU's memory, measured on that GPU.

Sizes are tried in rising order, each with one whole training step of the real network (the
forward, the chunked L1, the backward and the optimizer's step, so that Adam's state counts) in
the dtype the loop trains in. The largest whose peak memory stays under HEADROOM of the card wins;
the rest is left for DDP's gradient buckets, NCCL and fragmentation. The step runs eager: a
compiled step frees activations sooner, so the size is safe for both. Without a GPU there is no
memory to size against, and auto is each worker's share of the batch.
"""

from __future__ import annotations

from pipeline.runtime import autocast

MAX_AUTO = 64  # beyond 64 x 512 tokens a GPU, a larger micro-batch buys no more throughput
HEADROOM = 0.85


def sizes(share: int, resizable: bool) -> list[int]:
    """The micro-batches to try, rising: powers of two up to MAX_AUTO where batch_tokens sizes
    the batch from the micro-batch, else the divisors of each worker's share of the fixed batch
    (every worker runs whole micro-batches)."""
    if resizable:
        return [2**i for i in range(MAX_AUTO.bit_length()) if 2**i <= MAX_AUTO]
    return [m for m in range(1, min(share, MAX_AUTO) + 1) if share % m == 0]


def largest_fitting(candidates: list[int], fits) -> int | None:
    """The largest candidate before the first that does not fit (memory rises with the size)."""
    best = None
    for m in candidates:
        if not fits(m):
            break
        best = m
    return best


def fit_micro_batch(model_config, pretrain_config, candidates: list[int]) -> dict:
    """On this process's GPU: {"micro_batch": the largest fitting size, "peak_gib": {size: peak
    memory}, "total_gib": the card's}. Runs as a Ray task on a GPU node (plan.py) and in
    bench/gpu_check.py."""
    import torch

    from model import build, make_optimizer  # torch

    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(device).total_memory
    torch.manual_seed(0)
    net = build(model_config).to(device)
    opt = make_optimizer(net, pretrain_config.lr, pretrain_config.weight_decay)
    peaks: dict[int, float] = {}

    def fits(m: int) -> bool:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        x = torch.randint(0, model_config.vocab_size, (m, model_config.n_ctx + 1), device=device)
        try:
            with autocast(device, pretrain_config.dtype):
                loss = net(x[:, :-1], targets=x[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            return False
        peaks[m] = torch.cuda.max_memory_allocated(device)
        return peaks[m] <= HEADROOM * total

    best = largest_fitting(candidates, fits)
    net = opt = None  # the probe's memory back before the run's workers start
    torch.cuda.empty_cache()
    if best is None:
        raise RuntimeError(
            f"micro_batch auto: not even {candidates[0]} sequence(s) of {model_config.n_ctx} tokens fit "
            f"this GPU's {total / 2**30:.0f} GiB"
        )
    return {
        "micro_batch": best,
        "peak_gib": {m: p / 2**30 for m, p in peaks.items()},
        "total_gib": total / 2**30,
    }
