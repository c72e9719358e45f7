"""Every GPU claim of the project, checked in one run that prints one table.

    python bench/gpu_check.py                          # on a GPU machine: at most 8 minutes (not yet timed)
    python bench/gpu_check.py --quick                  # the same sections in about 2 minutes
    python bench/gpu_check.py --device cpu --quick     # tiny sizes on a CPU (a test runs this)

It needs only torch, transformers, numpy, pyarrow, tokenizers, safetensors and pyyaml: no Ray, no
MLflow, no network. Run it from a checkout; it installs nothing and writes only to a temporary
directory. Sections:

1. throughput: `model.GPT` against `transformers.OpenAIGPTLMHeadModel`, gpt1 (or tiny) in bf16 at
   T = n_ctx, dropout on (the paper's 0.1) and off, eager and torch.compile'd; tokens/s, MFU
   against the bf16 matmul ceiling measured in this run, and peak GPU memory.
2. the real loop: the project's pretraining loop (pipeline/train/loop.py) in a plain process on a
   dataset prepared here (without Ray) from generated text, mini in bf16 with fused AdamW: the
   loss falls; a checkpoint written mid-run and resumed in a fresh loop gives the same losses for
   the next steps; tokens/s and the share of step time spent waiting for data.
3. attention kernels: the SDPA backend that runs for the packed pretraining batch and the padded
   fine-tuning batch (dropout on), read from the profiler, beside those torch allows there.
4. fine-tuning: `tuning.finetune.finetune` on a learnable task of each input transformation
   (gpt1/world.py), from the loop's checkpoint, in bf16: the loss is finite and falls.
5. generation: `model.generate` at batch 1 and 8, with the KV cache (preallocated: every step
   the same shapes) and without; tokens/s and ms a step.
6. gradient all-reduce: DDP's step time for gpt1's gradients, fp32 against bf16 compression
   (`grad_compression: bf16`), over every GPU of the machine (NCCL); with one GPU, the cost of
   the compression alone (cast to bf16 and back), since a world of one all-reduces nothing.
7. gpt1 through the real loop (`Pretraining`, compiled, the chunked L1) at micro-batches
   8/16/32/64: tokens/s, peak memory, MFU against the measured ceiling (measured as the loop
   measures it) and the card's datasheet bf16 peak; then what `micro_batch: auto` picks.
8. the DDP path in one process: DDP on a process group of one (NCCL), compiled, 2 micro-batches
   accumulated, the bf16 gradient hook, against the plain path: the same losses, and its cost.
9. fine-tuning shapes: steps/s with batches padded to their longest against 64-token buckets.

Correctness checks say ok or FAIL (and the exit status is 1 on a FAIL); speed targets say met or
missed, with the figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the project, and train_throughput beside this file
from train_throughput import Runner, hf_model  # noqa: E402

from model import GPT, GPTConfig  # noqa: E402
from model.flops import device_ceiling  # noqa: E402
from model.generate import generate  # noqa: E402
from pipeline.runtime import amp_dtype, autocast  # noqa: E402

ROWS: list[tuple[str, str, str, str, str]] = []  # section, check, result, target, verdict


def row(section: str, check: str, result: str, target: str = "", verdict: str = "") -> None:
    ROWS.append((section, check, result, target, verdict))
    print(
        f"  {section} | {check} | {result}" + (f" | {target} | {verdict}" if target or verdict else ""),
        flush=True,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclasses.dataclass
class Sizes:
    """What each section runs: the GPU sizes, or tiny ones for a CPU and for --quick."""

    preset: str  # section 1 and 5
    batch: int
    steps: int  # timed steps per round
    rounds: int
    compile: bool
    loop_preset: str  # section 2
    loop_batch: int
    loop_steps: int
    resume_at: int
    compare: int  # steps compared after the resume
    corpus_docs: int
    finetune_steps: int
    gen_batch: int
    gen_tokens: int
    table_preset: str  # section 7: the paper's model through the real loop
    micro_batches: tuple
    table_steps: int


def sizes(device: torch.device, quick: bool) -> Sizes:
    if device.type == "cuda":
        return Sizes(
            "gpt1",
            16,
            10 if quick else 20,
            3 if quick else 5,
            not quick,
            "mini",
            32,
            200,
            100,
            10,
            6000,
            30,
            8,
            64,
            "gpt1",
            (8, 16, 32, 64),
            10 if quick else 20,
        )
    return Sizes("tiny", 8, 3, 2, not quick, "tiny", 8, 40, 20, 5, 1500, 24, 4, 16, "tiny", (2, 4), 3)


# 1. Throughput and MFU ------------------------------------------------------------------------


def throughput(device: torch.device, z: Sizes) -> None:
    dtype = "bf16" if device.type == "cuda" else "fp32"
    ceiling = device_ceiling(device, amp_dtype(device, dtype))  # as the loop measures it
    row("1 throughput", f"matmul ceiling ({dtype})", f"{ceiling / 1e12:.1f} TFLOP/s")
    results = {}
    cases = [(net, drop, False) for drop in (0.1, 0.0) for net in ("model.GPT", "HF")]
    if z.compile:  # each compilation takes a minute on a GPU: HF's only where the targets compare
        cases += [("model.GPT", 0.1, True), ("HF", 0.1, True), ("model.GPT", 0.0, True)]
    for net, drop, comp in cases:
        cfg = GPTConfig.preset(z.preset, embd_pdrop=drop, attn_pdrop=drop, resid_pdrop=drop)
        T = cfg.n_ctx
        torch.manual_seed(0)
        args = argparse.Namespace(device=device.type, dtype=dtype, compile=comp)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        gpt = GPT(cfg)
        flops = gpt.flops_per_token(T)
        runner = Runner(net, gpt, gpt, args) if net == "model.GPT" else Runner(net, *hf_model(cfg), args)
        data = torch.randint(cfg.vocab_size, (4, z.batch, T + 1), device=device)
        batches = [(d[:, :-1], d[:, 1:]) for d in data]
        for i in range(3):  # compilation and allocator warm-up, untimed
            runner.step(*batches[i % len(batches)])
        for _ in range(z.rounds):
            runner.timed(batches, z.steps)
        tps = z.batch * T / statistics.median(runner.times)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "-"
        results[(net, drop, comp)] = tps
        how = f"{'compiled' if comp else 'eager'}, dropout {drop}"
        row(
            "1 throughput",
            f"{net} {z.preset} T={T} batch {z.batch}, {how}",
            f"{tps:,.0f} tok/s, MFU {tps * flops / ceiling:.1%}, peak memory {peak}",
        )
        del runner, gpt, data, batches
    # The targets, on the paper's setting (dropout on), against HF's eager network.
    best = max((c for c in results if c[0] == "model.GPT" and c[1] == 0.1), key=results.get)
    flops = GPT(GPTConfig.preset(z.preset)).flops_per_token(GPTConfig.preset(z.preset).n_ctx)
    mfu = results[best] * flops / ceiling
    row(
        "1 throughput",
        f"MFU of model.GPT, dropout 0.1, {'compiled' if best[2] else 'eager'}",
        f"{mfu:.1%}",
        ">= 55%",
        "met" if mfu >= 0.55 else "missed",
    )
    ratio = (
        max(v for c, v in results.items() if c[0] == "model.GPT" and c[1] == 0.1)
        / results[("HF", 0.1, False)]
    )
    row(
        "1 throughput",
        "model.GPT (best of eager, compiled) / HF eager tokens/s, dropout 0.1",
        f"{ratio:.2f}x",
        ">= 2.5x",
        "met" if ratio >= 2.5 else "missed",
    )


# 2. The real loop -----------------------------------------------------------------------------


def prepare_dataset(work: Path, n_ctx: int, z: Sizes) -> Path:
    """A dataset made by the project's prepare, in this process (no Ray), from generated text."""
    from gpt1 import world
    from pipeline.data.prepare import PrepareConfig, prepare

    corpus = world.write_corpus(work / "corpus.txt", z.corpus_docs)
    prepare(
        [str(corpus)],
        work / "data",
        PrepareConfig(n_merges=1500, n_ctx=n_ctx, val_fraction=0.05),
        track=False,
        local=True,
    )
    return work / "data"


def real_loop(device: torch.device, work: Path, z: Sizes) -> Path:
    from pipeline.data.dataset import open_dataset
    from pipeline.train.config import PretrainConfig
    from pipeline.train.loop import LocalSession, LoopSpec, Pretraining
    from pipeline.train.plan import model_config

    class Recorded(Pretraining):
        """The loop as it is, with each step's loss kept (on the device: no extra sync)."""

        def train_step(self):
            loss, norm, waited = super().train_step()
            self.kept.append(loss.detach() if torch.is_tensor(loss) else torch.tensor(loss))
            self.waited_total += waited
            return loss, norm, waited

        def start_recording(self):
            self.kept, self.waited_total = [], 0.0
            return self

    n_ctx = GPTConfig.preset(z.loop_preset).n_ctx
    data = prepare_dataset(work, n_ctx, z)
    dtype = "bf16" if device.type == "cuda" else "fp32"
    cfg = PretrainConfig(
        model=z.loop_preset,
        batch_size=z.loop_batch,
        lr=6e-4 if device.type == "cuda" else 2e-3,
        warmup_steps=z.loop_steps // 10,
        max_steps=z.loop_steps,
        dtype=dtype,
        log_every=10,
        eval_every=z.resume_at,
        checkpoint_every=z.resume_at,
        seed=0,
    )
    manifest = open_dataset(data)
    gcfg = model_config(cfg, manifest, data)
    spec = LoopSpec(pretrain=cfg, model=gcfg, data=str(data), total_steps=z.loop_steps)
    run_dir = work / "run"
    run_dir.mkdir()
    a = Recorded(spec, LocalSession(str(device), run_dir=run_dir)).start_recording()
    fused = bool(a.opt.param_groups[0].get("fused"))
    sync(device)
    t0 = time.perf_counter()
    metrics = a.run()
    sync(device)
    wall = time.perf_counter() - t0
    losses = [float(x) for x in a.kept]
    k = max(len(losses) // 10, 1)
    first, last = statistics.mean(losses[:k]), statistics.mean(losses[-k:])
    ok = all(math.isfinite(x) for x in losses) and last < first - 0.5
    row(
        "2 real loop",
        f"{z.loop_preset} {dtype}, batch {z.loop_batch} x {n_ctx}, fused AdamW {fused}, {z.loop_steps} steps",
        f"loss {first:.3f} -> {last:.3f}; val loss {metrics.get('val_loss', math.nan):.3f}",
        "falls by > 0.5",
        "ok" if ok else "FAIL",
    )
    tps = z.loop_steps * z.loop_batch * n_ctx / wall
    wait = a.waited_total / wall
    row(
        "2 real loop",
        "tokens/s over the whole run (logging, evaluation, checkpoints included)",
        f"{tps:,.0f}",
    )
    row(
        "2 real loop",
        "share of step time waiting for data",
        f"{wait:.2%}",
        "<= 2%",
        ("met" if wait <= 0.02 else "missed") if device.type == "cuda" else "(GPU target)",
    )

    # Resume from the checkpoint at resume_at in a fresh loop: the next steps' losses.
    ckpt = run_dir / f"checkpoint_{z.resume_at:09d}"
    b = Recorded(spec, LocalSession(str(device), resume_from=ckpt)).start_recording()
    for _ in range(z.compare):
        b.train_step()
    again = [float(x) for x in b.kept]
    before = losses[z.resume_at : z.resume_at + z.compare]
    diff = max(abs(x - y) for x, y in zip(before, again, strict=True))
    first_same = again[0] == before[0]
    # On a CPU the resumed run must be bit-identical. On a GPU the forward pass of the first step
    # after the resume is deterministic too, but some backward kernels add with atomics in an
    # order that changes from run to run (the embedding gradient, SDPA's backward), and bf16
    # rounding magnifies those last-bit differences a little with every update.
    tol = 0.0 if device.type == "cpu" else 0.02
    row(
        "2 real loop",
        f"resume at step {z.resume_at} in a fresh loop: steps {z.resume_at + 1}-{z.resume_at + z.compare}",
        f"largest loss difference {diff:.2e}; first step identical: {first_same}",
        "== 0" if tol == 0 else f"<= {tol} (bf16 on GPU, atomics)",
        "ok" if diff <= tol else "FAIL",
    )
    return run_dir / f"checkpoint_{z.loop_steps:09d}"


# 3. Attention kernels -------------------------------------------------------------------------

SDPA_OPS = {"flash": "flash", "efficient": "memory-efficient", "cudnn": "cuDNN", "math": "math"}


def sdpa_backend_of(fn) -> str:
    """The SDPA implementation(s) that ran in fn, read from the profiler's op names."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")}
    found = sorted({label for op in names for key, label in SDPA_OPS.items() if key in op})
    return ", ".join(found) or ("math (unfused ops)" if not names else ", ".join(sorted(names)))


def allowed_backends(device: torch.device, B: int, H: int, T: int, hd: int, dropout: float) -> list[str]:
    """The fused SDPA backends torch accepts for these shapes, dtype, causal mask and dropout."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dt = amp_dtype(device, "auto")
    q, k, v = (torch.randn(B, H, T, hd, device=device, dtype=dt, requires_grad=True) for _ in range(3))
    ok = []
    for name, backend in (
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("memory-efficient", SDPBackend.EFFICIENT_ATTENTION),
    ):
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=True, dropout_p=dropout
                ).sum().backward()
            ok.append(name)
        except RuntimeError:
            pass
    return ok


def attention(device: torch.device, ckpt: Path, z: Sizes) -> None:
    from pipeline.data.tasks import Example
    from pipeline.data.tokenizer import load_tokenizer
    from tuning.encode import Encoder, collate

    gpt = GPT.from_pretrained(ckpt).to(device).train()  # dropout on, as in training
    cfg = gpt.config
    B, T = 4, cfg.n_ctx
    x = torch.randint(cfg.vocab_size, (B, T), device=device)

    def packed():
        with autocast(device):
            gpt(x).float().mean().backward()

    tok = load_tokenizer(ckpt)
    enc = Encoder(tok, "entailment", cfg.n_ctx, cfg.vocab_size)
    examples = [Example(("a heron flew over the hill .", "a bird " * n), 0, str(n)) for n in (1, 5, 9, 13)]
    ids, mask, _ = collate(enc.encode(examples))

    def padded():
        with autocast(device):
            gpt.hidden_states(ids.to(device), mask.to(device)).float().mean().backward()

    allowed = allowed_backends(device, B, cfg.n_head, T, cfg.n_embd // cfg.n_head, cfg.attn_pdrop)
    for name, fn, shape in (
        ("packed pretraining batch", packed, f"{B} x {T}"),
        ("padded fine-tuning batch (right padding)", padded, f"{ids.shape[0]} x {ids.shape[1]}"),
    ):
        ran = sdpa_backend_of(fn)
        fused = any(k in ran for k in ("flash", "memory-efficient", "cuDNN"))
        verdict = "ok" if fused or not allowed else "FAIL"
        row(
            "3 attention",
            f"{name}, {shape}, dropout {cfg.attn_pdrop}, {amp_dtype(device, 'auto')}",
            f"ran: {ran}",
            f"a fused kernel where torch allows one ({', '.join(allowed) or 'none here'})",
            verdict,
        )
    backend_times(device, GPTConfig.preset(z.table_preset), z)


def backend_times(device: torch.device, cfg: GPTConfig, z: Sizes) -> None:
    """Each SDPA backend this device has, timed on the two shapes that matter: a T = n_ctx
    training step (forward and backward, causal, the paper's dropout) and a decode step (one
    query against a cache span, a mask of the filled slots): the measurement a choice of backend
    would rest on."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    F = torch.nn.functional
    dt = amp_dtype(device, "auto")
    B, H, T, hd = 8, cfg.n_head, cfg.n_ctx, cfg.n_embd // cfg.n_head
    q, k, v = (torch.randn(B, H, T, hd, device=device, dtype=dt, requires_grad=True) for _ in range(3))
    q1 = torch.randn(B, H, 1, hd, device=device, dtype=dt)
    filled = torch.arange(T, device=device)[None, :] <= T // 2

    def train():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=cfg.attn_pdrop).sum().backward()

    def decode():
        with torch.no_grad():
            F.scaled_dot_product_attention(q1, k, v, attn_mask=filled)

    for shape, fn in ((f"training step {B} x {T}, dropout {cfg.attn_pdrop}", train), ("decode step", decode)):
        timings = []
        for name, backend in (
            ("flash", SDPBackend.FLASH_ATTENTION),
            ("memory-efficient", SDPBackend.EFFICIENT_ATTENTION),
            ("cuDNN", SDPBackend.CUDNN_ATTENTION),
            ("math", SDPBackend.MATH),
        ):
            try:
                with sdpa_kernel([backend]):
                    fn()  # warm-up (and a cuDNN plan)
                    sync(device)
                    t0 = time.perf_counter()
                    for _ in range(z.steps):
                        fn()
                    sync(device)
                timings.append(f"{name} {(time.perf_counter() - t0) / z.steps * 1e3:.3f} ms")
            except RuntimeError:
                timings.append(f"{name} unavailable")
        row("3 attention", f"SDPA backends, {cfg.n_head} heads, {shape}", "; ".join(timings))


# 4. Fine-tuning -------------------------------------------------------------------------------


def finetuning(device: torch.device, work: Path, ckpt: Path, z: Sizes) -> None:
    from gpt1 import world
    from pipeline.data.tasks import from_directory
    from tuning.finetune import FinetuneConfig, finetune

    for name in world.TASKS:
        d = world.write_task(name, work / "tasks" / name, n_train=256, n_dev=32)
        task = from_directory(name, d)
        seen: list[float] = []
        cfg = FinetuneConfig(
            lr=2e-4,
            batch_size=16,
            max_steps=z.finetune_steps,
            warmup=0.1,
            eval_every=2,
            eval_batch=32,
            clf_dropout=0.1,
            lm_coef=0.5,
        )
        t0 = time.perf_counter()
        best = finetune(
            task,
            d,
            ckpt,
            cfg,
            report=lambda m, step, seen=seen: seen.append(m["train_loss"]),
            device=device.type,
        )
        seconds = time.perf_counter() - t0
        k = max(len(seen) // 3, 1)
        first, last = statistics.mean(seen[:k]), statistics.mean(seen[-k:])
        ok = all(math.isfinite(v) for v in seen) and last < first
        row(
            "4 fine-tuning",
            f"{name} ({task.transformation}), {z.finetune_steps} steps of 16, {amp_dtype(device, 'auto')}",
            f"L3 {first:.3f} -> {last:.3f}; dev {task.metrics[0]} "
            f"{best[task.metrics[0]]:.3f}; {seconds:.1f} s",
            "finite, falls",
            "ok" if ok else "FAIL",
        )


# 5. Generation --------------------------------------------------------------------------------


def generation(device: torch.device, z: Sizes) -> None:
    """Batch 1 and gen_batch, with the KV cache (fixed-shape steps) and without (the whole
    sequence again each token): tokens/s and ms a step, greedy, the same tokens both ways."""
    cfg = GPTConfig.preset(z.preset)
    torch.manual_seed(0)
    gpt = GPT(cfg).to(device)
    for batch in (1, z.gen_batch):
        prompts = torch.randint(cfg.vocab_size, (batch, 16), device=device)
        got = {}
        for cache in (True, False):
            with autocast(device):
                generate(gpt, prompts, 4, temperature=0.0, use_cache=cache)  # warm-up
                spans = []
                for _ in range(3):  # the best of three: one stray pause is not the rate
                    sync(device)
                    t0 = time.perf_counter()
                    out = generate(gpt, prompts, z.gen_tokens, temperature=0.0, use_cache=cache)
                    sync(device)
                    spans.append(time.perf_counter() - t0)
            seconds = min(spans)
            new = out.shape[1] - prompts.shape[1]
            got[cache] = out
            ms = seconds / new * 1e3
            target = verdict = ""
            if cache and batch == z.gen_batch and device.type == "cuda" and z.preset == "gpt1":
                target, verdict = "<= 3 ms a step", "met" if ms <= 3 else "missed"
            row(
                "5 generation",
                f"{z.preset}, batch {batch}, prompts of 16, {new} new tokens, greedy, "
                f"{'KV cache' if cache else 'no cache'}, {amp_dtype(device, 'auto')}",
                f"{batch * new / seconds:,.0f} tok/s, {ms:.2f} ms a step",
                target,
                verdict,
            )
        same = torch.equal(got[True], got[False])
        row(
            "5 generation",
            f"batch {batch}: the cache's tokens equal the recomputed ones",
            str(same),
            "same (fp32); bf16 may differ at near ties",
            "ok" if same or device.type == "cuda" else "FAIL",
        )


def _allreduce_rank(rank: int, world: int, port: int, preset: str, steps: int, out) -> None:
    """One rank of section 6: DDP steps of a GPT's backward with and without the bf16 hook."""
    import os

    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    times = {}
    for hook in (None, default_hooks.bf16_compress_hook):
        gpt = GPT(GPTConfig.preset(preset)).cuda(rank)
        ddp = torch.nn.parallel.DistributedDataParallel(gpt, device_ids=[rank])
        if hook:
            ddp.register_comm_hook(dist.group.WORLD, hook)
        x = torch.randint(gpt.config.vocab_size, (1, gpt.config.n_ctx), device=f"cuda:{rank}")
        spans = []
        for k in range(steps + 3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", torch.bfloat16):
                ddp(x).float().mean().backward()
            torch.cuda.synchronize()
            if k >= 3:
                spans.append(time.perf_counter() - t0)
        times["bf16" if hook else "fp32"] = statistics.median(spans)
    if rank == 0:
        out.put(times)
    dist.destroy_process_group()


def allreduce(device: torch.device, z: Sizes) -> None:
    world = torch.cuda.device_count() if device.type == "cuda" else 0
    if world < 2:
        # A world of one all-reduces nothing: what compression costs here is the cast alone.
        n = GPTConfig.preset(z.preset).n_params()
        g = torch.randn(n, device=device)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(10):
            g.to(torch.bfloat16).to(torch.float32)
        sync(device)
        row(
            "6 all-reduce",
            f"bf16 compression of {z.preset}'s {n / 1e6:.1f} M gradients on one device (cast and back)",
            f"{(time.perf_counter() - t0) / 10 * 1e3:.2f} ms a step; the all-reduce itself needs 2+ GPUs: not measured",
        )
        return
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.start_processes(
        _allreduce_rank, args=(world, port, z.preset, 10, out), nprocs=world, start_method="spawn"
    )
    t = out.get()
    row(
        "6 all-reduce",
        f"DDP backward of {z.preset} at T = n_ctx, batch 1 a GPU, over {world} GPUs (NCCL): fp32 vs bf16 hook",
        f"fp32 {t['fp32'] * 1e3:.1f} ms, bf16 {t['bf16'] * 1e3:.1f} ms a step ({t['fp32'] / t['bf16']:.2f}x)",
    )


# 7. gpt1 through the real loop, by micro-batch ---------------------------------------------------


def gpt1_loop(device: torch.device, work: Path, z: Sizes) -> None:
    """The paper's model (tiny on a CPU) in the project's loop as a run trains it (compiled on a
    GPU, the chunked L1, fused AdamW), at each micro-batch: tokens/s, peak memory and MFU against
    the measured ceiling and the datasheet peak; then what micro_batch auto measures."""
    from model.flops import datasheet_peak, device_ceiling
    from pipeline.data.dataset import open_dataset
    from pipeline.train import memory
    from pipeline.train.config import PretrainConfig
    from pipeline.train.loop import LocalSession, LoopSpec, Pretraining
    from pipeline.train.plan import model_config

    cuda = device.type == "cuda"
    n_ctx = GPTConfig.preset(z.table_preset).n_ctx
    (work / "gpt1").mkdir()
    data = prepare_dataset(work / "gpt1", n_ctx, z)
    manifest = open_dataset(data)
    ceiling = device_ceiling(device, amp_dtype(device, "auto"))
    peak = datasheet_peak(torch.cuda.get_device_name()) if cuda else None
    row("7 gpt1 loop", "matmul ceiling, as the loop measures it", f"{ceiling / 1e12:.1f} TFLOP/s")
    row(
        "7 gpt1 loop",
        "datasheet dense bf16 peak",
        f"{peak / 1e12:.0f} TFLOP/s" if peak else "not in model/flops.py's table",
    )
    # The paper's 40,478 + 3 tokens, whatever the small tokenizer made here: the LM head's true cost.
    overrides = {"vocab_size": GPTConfig().vocab_size} if z.table_preset == "gpt1" else {}
    best = (0.0, None)
    for micro in z.micro_batches:
        cfg = PretrainConfig(
            model=z.table_preset,
            model_overrides=overrides,
            batch_size=micro,
            micro_batch=micro,
            max_steps=10**6,
            compile=cuda and z.compile,
            seed=0,
        )
        gcfg = model_config(cfg, manifest, data)
        spec = LoopSpec(pretrain=cfg, model=gcfg, data=str(data), total_steps=10**6)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            loop = Pretraining(spec, LocalSession(str(device)))
            for _ in range(3):  # compilation and allocator warm-up, untimed
                loop.train_step()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(z.table_steps):
                loop.train_step()
            sync(device)
        except torch.cuda.OutOfMemoryError:
            row("7 gpt1 loop", f"{z.table_preset} micro-batch {micro} x {n_ctx}", "out of memory")
            break
        tps = z.table_steps * micro * n_ctx / (time.perf_counter() - t0)
        flops = loop.flops_per_token
        mem = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "-"
        of_peak = f", {tps * flops / peak:.1%} of datasheet" if peak else ""
        row(
            "7 gpt1 loop",
            f"{z.table_preset} micro-batch {micro} x {n_ctx}, vocab {gcfg.vocab_size:,} (table "
            f"{gcfg.padded_vocab:,}), {'compiled' if cfg.compile else 'eager'}",
            f"{tps:,.0f} tok/s, peak memory {mem}, MFU {tps * flops / ceiling:.1%} of ceiling{of_peak}",
        )
        best = max(best, (tps * flops, micro), key=lambda b: b[0])
        del loop
    if best[1] is not None:
        verdict = ""
        if cuda and z.table_preset == "gpt1":
            ok = best[0] / ceiling >= 0.55 and (peak is None or best[0] / peak >= 0.45)
            verdict = "met" if ok else "missed"
        row(
            "7 gpt1 loop",
            f"best micro-batch ({best[1]}): MFU",
            f"{best[0] / ceiling:.1%} of ceiling" + (f", {best[0] / peak:.1%} of datasheet" if peak else ""),
            ">= 55% of ceiling, >= 45% of datasheet" if cuda else "(GPU target)",
            verdict,
        )
    if cuda:
        cfg = PretrainConfig(model=z.table_preset, model_overrides=overrides)
        got = memory.fit_micro_batch(model_config(cfg, manifest, data), cfg, memory.sizes(1, True))
        peaks = ", ".join(f"{m}: {p:.1f}" for m, p in got["peak_gib"].items())
        row(
            "7 gpt1 loop",
            f"micro_batch auto (train/memory.py) on this card's {got['total_gib']:.0f} GiB",
            f"{got['micro_batch']} (peak GiB by size: {peaks})",
        )


# 8. The DDP path in one process ---------------------------------------------------------------


def ddp_path(device: torch.device, work: Path, z: Sizes) -> None:
    """The multi-GPU path (DDP, torch.compile on a GPU, gradient accumulation over 2
    micro-batches, the bf16 gradient hook) on a process group of one (NCCL; gloo on a CPU),
    against the plain path on the same data: the losses agree, and what DDP costs."""
    import socket

    import torch.distributed as dist

    from pipeline.data.dataset import open_dataset
    from pipeline.train.config import PretrainConfig
    from pipeline.train.loop import LocalSession, LoopSpec, Pretraining
    from pipeline.train.plan import model_config

    cuda = device.type == "cuda"
    data = work / "data"  # section 2's dataset, made again if section 2 did not run
    if not data.exists():
        prepare_dataset(work, GPTConfig.preset(z.loop_preset).n_ctx, z)
    manifest = open_dataset(data)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group(
        "nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
    )
    try:
        runs = {}
        for ddp in (False, True):
            cfg = PretrainConfig(
                model=z.loop_preset,
                batch_size=2 * z.loop_batch,
                micro_batch=z.loop_batch,  # 2 micro-batches accumulated a step
                # The bf16 hook needs NCCL: on a CPU (gloo) the DDP path runs without it.
                grad_compression="bf16" if ddp and cuda else "none",
                compile=cuda and z.compile,
                max_steps=10**6,
                seed=0,
            )
            spec = LoopSpec(
                pretrain=cfg, model=model_config(cfg, manifest, data), data=str(data), total_steps=10**6
            )
            loop = Pretraining(spec, LocalSession(str(device), ddp=ddp))
            losses = [float(loop.train_step()[0]) for _ in range(3)]  # compilation, warm-up
            sync(device)
            t0 = time.perf_counter()
            losses += [float(loop.train_step()[0]) for _ in range(z.table_steps)]
            sync(device)
            runs[ddp] = (
                losses,
                z.table_steps * cfg.batch_size * spec.model.n_ctx / (time.perf_counter() - t0),
            )
            del loop
    finally:
        dist.destroy_process_group()
    (plain, tps_plain), (shared, tps_ddp) = runs[False], runs[True]
    diff = max(abs(a - b) for a, b in zip(plain, shared, strict=True))
    ok = all(math.isfinite(x) for x in shared) and shared[0] == plain[0] and diff < 0.05
    row(
        "8 DDP path",
        f"{z.loop_preset}, DDP on 1 rank, accumulation 2 x {z.loop_batch}, "
        f"{'bf16 gradient hook' if cuda else 'no bf16 hook (gloo)'}, "
        f"{'compiled' if cuda and z.compile else 'eager'}: losses against the plain path",
        f"first step identical: {shared[0] == plain[0]}; largest difference {diff:.2e} over {len(plain)} steps",
        "the same first step; later ones within bf16 rounding",
        "ok" if ok else "FAIL",
    )
    row(
        "8 DDP path",
        "tokens/s: plain, DDP (+ bf16 hook)",
        f"{tps_plain:,.0f}, {tps_ddp:,.0f} ({tps_ddp / tps_plain:.2f}x)",
    )


# 9. Fine-tuning on shapes that repeat ------------------------------------------------------------


def bucketed_finetuning(device: torch.device, work: Path, z: Sizes) -> None:
    """Fine-tuning steps (forward, L3, backward, update) of the paper's model (tiny on a CPU) with
    batches padded to their longest sequence against padded to a 64-token bucket, on an
    entailment task's lengths (gpt1/world.py's generated task, stretched to n_ctx's range)."""
    import random

    from model import GPTForTask, TaskHead, make_optimizer
    from tuning.encode import Encoded, collate

    cfg = GPTConfig.preset(z.table_preset)
    torch.manual_seed(0)
    rng = random.Random(0)
    # Lengths as a GLUE-style task spreads them: most short, a long tail to n_ctx.
    lengths = [
        min(cfg.n_ctx, max(8, int(rng.lognormvariate(math.log(cfg.n_ctx / 8), 0.6)))) for _ in range(64 * 16)
    ]
    extract = cfg.vocab_size - 1
    examples = [
        Encoded([[*[rng.randrange(extract) for _ in range(n - 1)], extract]], n % 3, 0) for n in lengths
    ]
    times = {}
    for bucketed in (False, True):
        torch.manual_seed(0)
        net = GPTForTask(GPT(cfg), TaskHead(cfg.n_embd, "entailment", n_labels=3), extract).to(device).train()
        opt = make_optimizer(net, 6.25e-5, 0.01)
        steps = 0
        for i in range(0, len(examples), 16):
            if i == 16 * 3:  # after 3 warm-up steps
                sync(device)
                t0 = time.perf_counter()
                steps = 0
            ids, mask, labels = collate(examples[i : i + 16], n_ctx=cfg.n_ctx if bucketed else None)
            with autocast(device):
                loss = net(ids.to(device), mask.to(device), labels.to(device), lm_coef=0.5).l3
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
            if steps >= z.table_steps * 3:
                break
        sync(device)
        times[bucketed] = steps / (time.perf_counter() - t0)
    ratio = times[True] / times[False]
    row(
        "9 fine-tuning shapes",
        f"{z.table_preset}, batches of 16, lengths 8-{cfg.n_ctx} (median {sorted(lengths)[len(lengths) // 2]}): "
        "steps/s, padded to the longest vs to 64-token buckets",
        f"{times[False]:.2f} vs {times[True]:.2f} ({ratio:.2f}x)",
        ">= 1.5x" if device.type == "cuda" else "(GPU target)",
        ("met" if ratio >= 1.5 else "missed") if device.type == "cuda" else "",
    )


def guarded(section: str, fn, *args):
    """fn(*args); an exception is a FAIL row naming it (its traceback on stderr), and None."""
    import traceback

    try:
        return fn(*args)
    except Exception as err:
        traceback.print_exc()
        row(
            section,
            "the section ran to its end",
            f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
            "",
            "FAIL",
        )
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="fewer timed steps and no torch.compile")
    p.add_argument("--sections", default="1,2,3,4,5,6,7,8,9", help="which sections to run (default all)")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name()
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    z = sizes(device, a.quick)
    run = set(a.sections.split(","))
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"date: {datetime.date.today()}  device: {name}  torch {torch.__version__}", flush=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpt1-gpu-check-") as tmp:
        work, ckpt = Path(tmp), None
        # One section's crash is a FAIL row, not the end of the run: the machine may not come back.
        if "1" in run:
            guarded("1 throughput", throughput, device, z)
        if run & {"2", "3", "4"}:  # 3 and 4 start from the loop's checkpoint
            ckpt = guarded("2 real loop", real_loop, device, work, z)
        if "3" in run and ckpt:
            guarded("3 attention", attention, device, ckpt, z)
        if "4" in run and ckpt:
            guarded("4 fine-tuning", finetuning, device, work, ckpt, z)
        if "5" in run:
            guarded("5 generation", generation, device, z)
        if "6" in run:
            guarded("6 all-reduce", allreduce, device, z)
        if "7" in run:
            guarded("7 gpt1 loop", gpt1_loop, device, work, z)
        if "8" in run:
            guarded("8 DDP path", ddp_path, device, work, z)
        if "9" in run:
            guarded("9 fine-tuning shapes", bucketed_finetuning, device, work, z)
    print(f"\n{name}, torch {torch.__version__}, {time.perf_counter() - t_start:.0f} s\n")
    print("| section | check | result | target | verdict |")
    print("|---|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    failed = [r for r in ROWS if r[4] == "FAIL"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
