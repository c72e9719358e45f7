"""Generation speed with and without the KV cache (model.gpt.KVCache), side by side in one run.

The `mini` preset (4 x 512, vocabulary 8,192) with random weights and n_ctx 512, so that a
32-token prompt has room for 256 new tokens (mini's own n_ctx is 256). Greedy decoding, batch 1,
fp32; each way runs ROUNDS times, alternating, and the median is reported. The two outputs are
checked to be the same tokens.

    python bench/generate_throughput.py                 # CPU
    python bench/generate_throughput.py --device cuda
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from model import GPT, GPTConfig  # noqa: E402


def timed(gpt, prompt, new: int, use_cache: bool, device: str) -> tuple[float, torch.Tensor]:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = gpt.generate(prompt, new, temperature=0, use_cache=use_cache)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--new", type=int, default=256, help="new tokens")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = GPTConfig.preset(args.preset, n_ctx=max(512, args.prompt + args.new))
    gpt = GPT(cfg).to(args.device).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt), device=args.device)
    timed(gpt, prompt, 8, True, args.device)  # warm-up: first allocations, kernels
    times = {True: [], False: []}
    outs = {}
    for _ in range(args.rounds):
        for use_cache in (False, True):
            dt, outs[use_cache] = timed(gpt, prompt, args.new, use_cache, args.device)
            times[use_cache].append(dt)
    assert torch.equal(outs[True], outs[False]), "the cache changed the greedy tokens"
    med = {k: statistics.median(v) for k, v in times.items()}
    dev = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    print(f"command: python bench/generate_throughput.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"device: {dev}  torch {torch.__version__}")
    print(
        f"{args.preset}: {cfg.n_layer} x {cfg.n_embd}, vocab {cfg.vocab_size}, n_ctx {cfg.n_ctx}; "
        f"prompt {args.prompt}, {args.new} new tokens, greedy, batch 1, fp32; median of {args.rounds}\n"
    )
    print("| decoding | seconds | new tokens/s |")
    print("|---|---:|---:|")
    for k, name in ((False, "recompute (no cache)"), (True, "KV cache")):
        print(f"| {name} | {med[k]:.2f} | {args.new / med[k]:,.0f} |")
    print(f"\nspeed-up: {med[False] / med[True]:.1f}x (target: at least 5x); same greedy tokens: yes")


if __name__ == "__main__":
    main()
