"""Training throughput of model.GPT against transformers.OpenAIGPTLMHeadModel, side by side.

Both networks get the same config, batch, data, loss and optimiser (AdamW, the paper's param
groups); one training step is forward, backward and optimiser step. The two are timed in
alternating rounds, so drift in the machine's speed hits both alike. MFU counts model FLOPs as
nanoGPT does (6N + 12*L*d*T per token) over the dense-matmul rate of the same device and dtype,
measured in the same run.

    python bench/train_throughput.py --preset mini                       # CPU, fp32
    python bench/train_throughput.py --preset gpt1 --device cuda --dtype bf16 --seq 512
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model import GPT, GPTConfig, make_optimizer  # noqa: E402
from model.flops import matmul_ceiling  # noqa: E402
from pipeline.runtime import autocast  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory (no mmap, no trim), as jemalloc or tcmalloc would.

    With the default malloc every large fresh tensor is page-faulted in, every step. That costs
    HF's eager attention (many [B, H, T, T] temporaries) far more than it costs model.GPT, so the
    option shows how much of the gap is the allocator. Returns False where it is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt(-4, 0) == 1 and libc.mallopt(-1, 2**30) == 1  # M_MMAP_MAX, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def hf_model(cfg: GPTConfig):
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

    hf_cfg = OpenAIGPTConfig(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_ctx,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        afn="gelu",
        embd_pdrop=cfg.embd_pdrop,
        attn_pdrop=cfg.attn_pdrop,
        resid_pdrop=cfg.resid_pdrop,
        layer_norm_epsilon=cfg.layer_norm_epsilon,
    )
    model = OpenAIGPTLMHeadModel(hf_cfg)
    return model, lambda x: model(input_ids=x).logits


class Runner:
    """One network, its optimiser, and a timed training step."""

    def __init__(self, name, model, logits_fn, args):
        self.name, self.model, self.args = name, model.to(args.device).train(), args
        self.logits_fn = torch.compile(logits_fn) if args.compile else logits_fn
        self.opt = make_optimizer(self.model, lr=1e-4)
        self.times: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        a = self.args
        with autocast(torch.device(a.device), a.dtype):
            logits = self.logits_fn(x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed(self, batches, steps: int) -> None:
        sync(self.args.device)
        t0 = time.perf_counter()
        for i in range(steps):
            self.step(*batches[i % len(batches)])
        sync(self.args.device)
        self.times.append((time.perf_counter() - t0) / steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mini", help="model preset (gpt1, mini, tiny)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="fp32, or bf16 autocast (default: bf16 on cuda, fp32 on cpu)",
    )
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 8 cpu, 16 cuda)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence T (default: n_ctx)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=7, help="alternating timed rounds per network")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per network first")
    p.add_argument("--matmul-n", type=int, default=None, help="size of the ceiling matmul")
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="embedding, attention and residual dropout for both (default: the preset's, 0.1)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile both networks")
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="CPU: make glibc malloc reuse freed memory instead of page-faulting it back in",
    )
    p.add_argument("--no-hf", action="store_true", help="time model.GPT alone")
    a = p.parse_args()
    cuda = a.device == "cuda"
    a.dtype = a.dtype or ("bf16" if cuda else "fp32")
    a.batch = a.batch or (16 if cuda else 8)
    a.steps = a.steps or (20 if cuda else 3)
    # Both networks run in this one process, so both get the same allocator setting.
    reuse = keep_freed_memory() if a.keep_freed_memory else False
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    cfg = GPTConfig.preset(a.preset)
    if a.dropout is not None:
        cfg = GPTConfig.preset(a.preset, embd_pdrop=a.dropout, attn_pdrop=a.dropout, resid_pdrop=a.dropout)
    T = a.seq or cfg.n_ctx
    torch.manual_seed(0)
    n = a.matmul_n or (8192 if cuda else 2048)
    ceiling = matmul_ceiling(a.device, DTYPES[a.dtype], n, reps=20 if cuda else 10)

    gpt = GPT(cfg)
    flops_per_token = gpt.flops_per_token(T)
    runners = [Runner("model.GPT", gpt, gpt, a)]
    if not a.no_hf:
        runners.append(Runner("HF OpenAIGPTLMHeadModel", *hf_model(cfg), a))
    data = torch.randint(cfg.vocab_size, (4, a.batch, T + 1), device=a.device)
    batches = [(d[:, :-1], d[:, 1:]) for d in data]

    for r in runners:
        for i in range(a.warmup):
            r.step(*batches[i % len(batches)])
    for _ in range(a.rounds):
        for r in runners:
            r.timed(batches, a.steps)
    # Measured again after the timed rounds: the ceiling is the best the device did in this run.
    ceiling = max(ceiling, matmul_ceiling(a.device, DTYPES[a.dtype], n, reps=20 if cuda else 10))

    device_name = (
        torch.cuda.get_device_name()
        if cuda
        else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"date: {datetime.date.today()}  device: {device_name}  torch {torch.__version__}")
    print(
        f"preset {a.preset}: {cfg.n_layer} x {cfg.n_embd}, {cfg.n_head} heads, vocab {cfg.vocab_size}; "
        f"batch {a.batch} x T {T}; dropout {cfg.resid_pdrop}; {a.dtype}; compile {a.compile}; "
        f"malloc keeps freed memory {reuse}; "
        f"{flops_per_token / 1e6:.1f} MFLOP/token; matmul ceiling {ceiling / 1e12:.3f} TFLOP/s"
    )
    print()
    print(f"| network | ms/step, median of {a.rounds} rounds (min-max) | tokens/s | MFU | vs HF |")
    print("|---|---:|---:|---:|---:|")
    tps = {r.name: a.batch * T / statistics.median(r.times) for r in runners}
    hf_tps = tps.get("HF OpenAIGPTLMHeadModel")
    for r in runners:
        ms = [t * 1e3 for t in r.times]
        ratio = f"{tps[r.name] / hf_tps:.2f}x" if hf_tps else "-"
        print(
            f"| {r.name} | {statistics.median(ms):.1f} ({min(ms):.0f}-{max(ms):.0f}) | "
            f"{tps[r.name]:,.0f} | {tps[r.name] * flops_per_token / ceiling:.1%} | {ratio} |"
        )


if __name__ == "__main__":
    main()
