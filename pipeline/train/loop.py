"""The pretraining loop that every worker runs: objective L1 on packed blocks, data parallel.

The global batch at step s is BlockOrder.batch(s), cut into M micro-batches of `micro_batch`
sequences. Where W workers divide M, worker r runs micro-batches r, r + W, r + 2W, ..., and
micro-batch j of step s draws its dropout masks from a seed made of (seed, s, j); each
micro-batch's gradient is weighted 1/M in the sum, so the micro-batches, their masks and the summed
gradient are the same whatever such W is, and a resumed run retraces an uninterrupted one: bitwise
on the same worker count, up to the order of floating-point sums on another. Where W does not
divide M (an elastic run that lost a node: 56 workers for 64 micro-batches), the batch is
rebalanced (pieces): each worker takes B / W sequences, to within one, cut into pieces of at most
`micro_batch`, so that a step costs B / W sequences a worker, not ceil(M / W) micro-batches. A
piece that is a whole micro-batch keeps its seed; the others draw theirs from their place in the
batch, so such a run is still a pure function of (seed, step, W), and each sequence weighs 1/B in
the sum whatever the cut. The micro-batch is fixed when a run starts (config.micro_batch); any
worker count up to the batch's B sequences can resume it.

The loop talks to its surroundings through a Session: Ray Train's (pipeline/train/ray_train.py) or a
plain process's (LocalSession, for the benchmarks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from model import GPTConfig, build, make_optimizer, make_schedule
from model.flops import datasheet_peak, device_ceiling
from pipeline import outdir
from pipeline.console import eta
from pipeline.data.dataset import BlockOrder, load_split, tokens_per_byte
from pipeline.data.stage import local_copy
from pipeline.errors import UserError, disk_error
from pipeline.runtime import amp_dtype, autocast
from pipeline.train import network, observe, preemption
from pipeline.train.checkpoint import load_training_state, snapshot, write_checkpoint
from pipeline.train.config import PretrainConfig, micro_batch, pieces, shares_by_rank
from pipeline.train.spikes import SpikeMonitor


@dataclass
class LoopSpec:
    """What the driver hands every worker (pickled by Ray as it is)."""

    pretrain: PretrainConfig
    model: GPTConfig
    data: str  # dataset directory or URI; each worker verifies or stages it (pipeline/data/stage.py)
    total_steps: int
    threads: int = 0  # CPU threads per worker; 0 = torch's default
    mlflow_uri: str | None = None
    mlflow_run_id: str | None = None
    run_path: str | None = None  # STORAGE/RUN: where checkpoints go
    resume_from: str | None = None  # the newest complete checkpoint the driver found there
    accelerator: str | None = None  # the node type the plan priced (the network's expected figure)
    staging_timeout_s: int = 1800  # how long the ranks wait for each other to have the data


# max_minutes: steps not timed (start-up), then steps timed; the budget is decided after both.
BUDGET_STEPS = (20, 40)


class StopRun(Exception):
    """The run cannot go on and a retry would not help (a non-finite loss, a full disk). Raised
    on every rank at the same step; its text is the one line the user sees."""


class LocalSession:
    """One process, no Ray: for the benchmarks and the GPU check. With run_dir, checkpoints are
    kept there as checkpoint_N (written beside it, renamed in whole); with resume_from, the loop
    starts from that checkpoint; with ddp, it trains through DDP on a process group of one. With
    rank and world_size, it is one of several such processes on an initialised process group
    (the tests' way to run W workers without Ray)."""

    def __init__(
        self,
        device: str = "cpu",
        run_dir=None,
        resume_from=None,
        ddp: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.ddp = ddp  # train through DDP (a process group of one must be initialised)
        self.run_dir = Path(run_dir) if run_dir else None
        self.resume_from = resume_from

    @contextlib.contextmanager
    def resume_dir(self):
        yield Path(self.resume_from) if self.resume_from else None

    @contextlib.contextmanager
    def rewind_dir(self):
        """The newest checkpoint in run_dir, else resume_from's (a rewind's, Pretraining.rewind)."""
        from pipeline.model_dir import latest_checkpoint

        found = latest_checkpoint(str(self.run_dir)) if self.run_dir else None
        yield Path(found[0]) if found else (Path(self.resume_from) if self.resume_from else None)

    @contextlib.contextmanager
    def staging_dir(self, name: str):
        if self.run_dir is None:
            with tempfile.TemporaryDirectory(prefix=f"gpt1-ckpt-{os.getpid()}-") as d:
                yield Path(d)
            return

        d = outdir.sibling(self.run_dir / name, "tmp")
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def report(self, metrics: dict, checkpoint_dir: Path | None = None, name: str | None = None) -> None:
        self.last_metrics = metrics
        if self.run_dir is not None and checkpoint_dir is not None:
            outdir.publish(checkpoint_dir, self.run_dir / name)


def micro_seed(seed: int, step: int, j: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{step}:{j}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # torch.manual_seed takes a non-negative int64


def _all_reduce(t: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        dist.all_reduce(t)
    return t


def attention_backend(name: str):
    """The SDPA backend a setting names, for the forward (and so the backward) of L1; auto:
    torch's own dispatch."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        {
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "math": SDPBackend.MATH,
        }[name]
    )


def say(line: str) -> None:
    # To the process's own stdout: Ray Train patches print() in its workers to go both there
    # and to a logger, which would show every line twice.
    print(line, file=sys.__stdout__, flush=True)


class Pretraining:
    """State and steps of one worker's run."""

    def __init__(self, spec: LoopSpec, session, tracker=None):
        self.spec, self.session, self.tracker = spec, session, tracker
        self.cfg = cfg = spec.pretrain
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.rank, self.world, self.device = session.rank, session.world_size, session.device
        if self.device.type == "cuda":  # NCCL's object collectives (the zero-shot's) use the current device
            # "cuda" without an index (a plain process) means the current device; set_device wants one.
            torch.cuda.set_device(
                self.device.index if self.device.index is not None else torch.cuda.current_device()
            )
        failed = self.stage_together()
        failed = self._first(failed)
        if failed:
            raise StopRun(failed)
        # Memory-mapped: the tokens live once in the page cache, not in every worker.
        self.train_blocks = load_split(self.data, self.manifest, "train")
        self.val_blocks = load_split(self.data, self.manifest, "val")
        self.n_val = min(len(self.val_blocks), cfg.eval_blocks or len(self.val_blocks))
        self.order = BlockOrder(cfg.seed, len(self.train_blocks), cfg.batch_size)
        # The driver fixes the micro-batch for the run; an elastic run keeps it on any W.
        self.micro = cfg.micro_batch or micro_batch(cfg, self.world)
        if self.world > cfg.batch_size:
            raise StopRun(
                f"{self.world} workers but {cfg.batch_size} sequences a step: at most {cfg.batch_size} "
                "workers can share this run's batch"
            )
        self.mine = pieces(cfg.batch_size, self.micro, self.world, self.rank)
        # The most sequences any worker runs a step: what a step costs (pieces).
        self.share = max(
            len(piece_ids) for piece_ids in shares_by_rank(cfg.batch_size, self.micro, self.world)
        )

        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.gpt = build(spec.model).to(self.device)  # the Transformer, or the LSTM
        self.opt = make_optimizer(self.gpt, cfg.lr, cfg.weight_decay)
        self.step, self.total = 0, spec.total_steps
        # Steps whose batch a rewind skipped (1-based, as logged), and the rewinds so far: kept in
        # every checkpoint, so that a resume skips them too.
        self.skipped: set[int] = set()
        self.rewinds = 0
        self.monitor = SpikeMonitor(cfg.spike_factor, cfg.spike_window)
        self.timer = observe.BusyTimer(self.device)  # this rank's own work a step (observe.py)
        self.noticed = False  # this rank's notice that its node will go, acted on (preemption.py)
        # Every rank's notice, agreed at each step boundary (where the session watches its node).
        self.agree = (
            preemption.Agreement(self.world, timedelta(minutes=cfg.collective_timeout_minutes))
            if getattr(session, "watch", None) is not None
            else None
        )
        self.preempting = False  # a checkpoint at this step, for a node about to go
        self.pending = None  # a checkpoint being written (checkpoint, finish_checkpoint)
        # With a time budget, total is decided after the first steps (BUDGET_STEPS) and kept in
        # every checkpoint, so that a resumed run keeps the schedule it had.
        self.budget_open = cfg.max_minutes > 0
        with session.resume_dir() as d:
            if d is not None:
                state = load_training_state(d, self.gpt, self.opt)
                self.step = state["step"]
                self.skipped, self.rewinds = set(state.get("skipped_steps", [])), state.get("rewinds", 0)
                if self.budget_open and state.get("budget_decided"):
                    self.total, self.budget_open = state["total_steps"], False
        self.set_schedule()
        self.model = self.gpt
        cuda = self.device.type == "cuda"
        # DDP wherever gradients are shared; a session may ask for it on a world of one (the GPU
        # check runs the multi-GPU path, bf16 hook and accumulation included, in one process).
        if self.world > 1 or getattr(session, "ddp", False):
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.gpt, device_ids=[torch.cuda.current_device()] if cuda else None
            )
            if cfg.grad_compression == "bf16":  # half the bytes on the wire; summed in fp32 again
                from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

                self.model.register_comm_hook(dist.group.WORLD, default_hooks.bf16_compress_hook)
        if self.world > 1 and getattr(session, "node", None):
            self.check_network()
        # Training runs through DDP (gradient all-reduce) and torch.compile where asked (by
        # default on GPU: +56% tokens/s on an H200; on CPU it costs more to compile than it
        # saves); the evaluation forward is the plain model: no backward to synchronise, no
        # recompilation for its batch shapes.
        compiled = cuda if cfg.compile is None else cfg.compile
        mode = None if cfg.compile_mode == "default" else cfg.compile_mode
        self.train_forward = torch.compile(self.model, mode=mode) if compiled else self.model
        self.eval_forward = self.gpt
        self.amp_dtype = amp_dtype(self.device, cfg.dtype)
        if cfg.attention != "auto" and spec.model.arch == "transformer":
            self.check_attention()
        # MFU is measured against this device's dense-matmul rate in the training dtype.
        self.ceiling = device_ceiling(self.device, self.amp_dtype)
        # and against the card's datasheet bf16 peak, as llm.c and nanoGPT report it (GPUs it knows).
        self.peak = datasheet_peak(torch.cuda.get_device_name(self.device)) if cuda else None
        self.flops_per_token = self.gpt.flops_per_token(self.gpt.config.n_ctx)

    def check_network(self) -> None:
        """Across several nodes, the gradient's all-reduce timed on 1, 2, 4, ... of them, printed
        and logged beside the plan's figure; a network under a quarter of it stops the run before
        it spends money (network.py), unless slow_network_ok."""
        nodes = [None] * self.world
        dist.all_gather_object(nodes, self.session.node)
        if len(set(nodes)) < 2:  # one node: nothing crosses the network
            return
        nbytes = network.gradient_bytes(self.gpt, self.cfg.grad_compression)
        rows = network.measure(self.rank, self.world, nodes, self.device, nbytes)
        rows = network.with_assumption(rows, self.spec.accelerator, self.cfg.network_gbps)
        if self.rank == 0:
            for line in network.table(rows):
                say(f"network: {line}")
            if self.tracker:
                self.tracker.log(network.metrics(rows), self.step)
        line = network.too_slow(rows)
        if line and not self.cfg.slow_network_ok:
            raise StopRun(line)

    def check_attention(self) -> None:
        """A backend named by the attention setting must have a kernel here for this model's
        heads, dtype and dropout: one line now, not a crash at the first step."""
        m = self.spec.model
        q = torch.randn(1, m.n_head, 8, m.n_embd // m.n_head, device=self.device, dtype=self.amp_dtype)
        q.requires_grad_(True)
        try:
            with attention_backend(self.cfg.attention), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's reasons come as warnings; the line says it
                F.scaled_dot_product_attention(
                    q, q, q, is_causal=True, dropout_p=m.attn_pdrop
                ).sum().backward()
        except RuntimeError:
            raise StopRun(
                f"attention {self.cfg.attention}: this {self.device.type} has no such kernel for "
                f"{m.n_head} heads of {m.n_embd // m.n_head} in {self.amp_dtype} with dropout "
                f"{m.attn_pdrop}; use attention=auto"
            ) from None

    def set_schedule(self) -> None:
        # The lr is a pure function of (step, total): a resumed run picks the schedule up at its step.
        self.schedule = make_schedule(
            self.opt, self.cfg.schedule, self.total, self.cfg.warmup_steps / self.total, start_step=self.step
        )

    def decide_total(self, seconds_per_step: float, spent: float) -> None:
        """The time budget as a step count: the steps that fit in what is left of max_minutes at
        the rate measured, evaluations included (one is timed now, with the zero-shot
        heuristics, if any), decided on rank 0 so that every rank takes the same number."""
        t0 = time.perf_counter()
        if self.cfg.eval_every and self.n_val:
            self.evaluate()
            self.zero_shot()
        eval_s = time.perf_counter() - t0
        per_step = seconds_per_step + (eval_s / self.cfg.eval_every if self.cfg.eval_every else 0.0)
        left = self.cfg.max_minutes * 60 - spent - 2 * eval_s  # this evaluation, and the last one
        fit = int(left / per_step) if per_step > 0 else 0
        t = torch.tensor([float(min(self.total, self.step + max(fit, 1)))], device=self.device)
        if self.world > 1:
            dist.broadcast(t, 0)
        self.total, self.budget_open = int(t.item()), False
        self.set_schedule()
        if self.rank == 0:
            say(
                f"max_minutes {self.cfg.max_minutes:g}: {seconds_per_step:.3f} s a step and {eval_s:.1f} s an "
                f"evaluation, so {self.total:,} steps"
            )
            if self.tracker:
                self.tracker.log({"total_steps": self.total}, self.step)

    def batch(self, blocks: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(blocks.astype(np.int64))
        return x.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else x

    def l1(self, forward, x: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """L1 on blocks of n_ctx + 1 tokens: the first n_ctx predict the last n_ctx. The loss is
        taken inside the network's forward (chunked: no [B, T, vocab] logits), so that it runs in
        the compiled region with the rest."""
        with autocast(self.device, self.cfg.dtype), attention_backend(self.cfg.attention):
            return forward(x[:, :-1], targets=x[:, 1:], reduction=reduction)

    def train_step(self) -> tuple[float, float, float]:
        """One update of the global batch; returns (this worker's mean loss, grad norm, seconds
        spent waiting for data)."""
        cfg, s = self.cfg, self.step
        if s + 1 in self.skipped:  # a rewind's: the batch that spiked is never trained on
            self.lr = self.opt.param_groups[0]["lr"]
            self.schedule.step()
            self.step += 1
            return None, None, 0.0
        ids = self.order.batch(s)
        loss_sum, waited = 0.0, 0.0
        self.timer.start()
        for a, (start, stop, key) in enumerate(self.mine):
            t0 = time.perf_counter()
            x = self.batch(self.train_blocks[np.sort(ids[start:stop])])
            waited += time.perf_counter() - t0
            torch.manual_seed(micro_seed(cfg.seed, s, key))
            # Each piece's mean loss weighted n W / B (n its sequences): DDP averages over the W
            # workers, so the update is the mean over the batch's B sequences however they are
            # cut (M / W, the accumulation steps, where W divides M and every piece is whole).
            share = cfg.batch_size / ((stop - start) * self.world)
            # DDP all-reduces the gradients on the last piece only.
            sync = self.model is self.gpt or a == len(self.mine) - 1
            with contextlib.nullcontext() if sync else self.model.no_sync():
                loss = self.l1(self.train_forward, x)
                if a == len(self.mine) - 1:  # the rest waits for the other ranks' gradients
                    self.timer.stop()
                (loss / share).backward()
            loss_sum += loss.detach() / share
        norm = torch.nn.utils.clip_grad_norm_(self.gpt.parameters(), cfg.grad_clip or float("inf"))
        self.lr = self.opt.param_groups[0]["lr"]  # this update's, for the log
        self.opt.step()
        self.schedule.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return loss_sum, norm, waited

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Loss over the val blocks (each worker a strided share), perplexity and bits per byte."""
        self.gpt.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        mine = np.arange(self.rank, self.n_val, self.world)
        for i in range(0, len(mine), self.micro):
            x = self.batch(self.val_blocks[mine[i : i + self.micro]])
            total[0] += self.l1(self.eval_forward, x, reduction="sum").double()
            total[1] += x[:, 1:].numel()
        self.gpt.train()
        nats, n = _all_reduce(total, self.world).tolist()
        if not n:
            return {}
        loss = nats / n
        return {
            "val_loss": loss,
            "val_perplexity": math.exp(min(loss, 700)),
            "val_bits_per_byte": loss / math.log(2) * tokens_per_byte(self.manifest, "val"),
        }

    def stage_together(self) -> str | None:
        """The dataset on this node: a local one verified once per machine, one on object storage
        staged once per node (stage.py); the error line where it cannot be. The ranks then wait
        for each other at a barrier of its own, on a gloo group whose timeout is the staging's
        (spec.staging_timeout_s): a node that joins mid-run stages before the run's first
        collective, so no training collective waits out a download, and theirs stays short
        (collective_timeout_minutes)."""
        from datetime import timedelta

        group = None
        if self.world > 1:
            group = dist.new_group(backend="gloo", timeout=timedelta(seconds=self.spec.staging_timeout_s))
        failed = None
        try:
            self.data, self.manifest = local_copy(self.spec.data)
        except UserError as err:
            failed = str(err)
        if group is not None:
            dist.monitored_barrier(group, timeout=timedelta(seconds=self.spec.staging_timeout_s))
            dist.destroy_process_group(group)
        return failed

    def _first(self, message: str | None) -> str | None:
        """The first rank's message that is not None (every rank gets the same answer)."""
        if self.world == 1:
            return message
        got = [None] * self.world
        dist.all_gather_object(got, message)
        return next((m for m in got if m), None)

    def _any(self, flag: bool) -> bool:
        """Whether flag is true on any rank (every rank gets the same answer)."""
        t = torch.tensor([float(flag)], device=self.device)
        return bool(_all_reduce(t, self.world).item())

    def rewind(self, spikes: list[tuple[int, str, bool]]) -> None:
        """Back to the newest checkpoint (every checkpoint step is checked for spikes first, so it
        precedes them; with none yet, the initial weights), the spiking steps' batches skipped
        from then on, logged; every rank, at the same step. Past max_rewinds, the run stops with
        one line: a non-finite loss, before a non-finite model is saved."""
        first, why, finite = spikes[0]
        if self.rewinds >= self.cfg.max_rewinds:
            if not finite:
                raise StopRun(
                    f"the loss became non-finite ({why}) at step {first:,}; nothing from this point is "
                    f"saved. Lower lr (now {self.cfg.lr:g}) or raise warmup_steps, and start a new run "
                    "(--name)" + (f"; {self.rewinds} rewind(s) already spent" if self.cfg.max_rewinds else "")
                )
            raise StopRun(
                f"a loss spike at step {first:,} ({why}) after {self.rewinds} rewind(s), max_rewinds "
                f"{self.cfg.max_rewinds}; the newest checkpoint precedes it. Raise max_rewinds or "
                "spike_factor to go on, or lower lr"
            )
        self.finish_checkpoint()  # the newest published: the one to go back to
        with self.session.rewind_dir() as d:
            if d is None:
                torch.manual_seed(self.cfg.seed)
                self.gpt.load_state_dict(build(self.spec.model).state_dict())
                self.opt.state.clear()
                self.step = 0
            else:
                self.step = load_training_state(d, self.gpt, self.opt)["step"]
        steps = [s for s, _, _ in spikes]
        self.skipped |= set(steps)
        self.rewinds += 1
        self.set_schedule()
        self.monitor.reset()
        self.timer.take()
        if self.rank == 0:
            blocks = {s: self.order.batch(s - 1).tolist() for s in steps}
            say(
                f"loss spike at step {first:,} ({why}): back to step {self.step:,} (rewind {self.rewinds} of "
                f"{self.cfg.max_rewinds}), skipping the batch of step(s) {', '.join(map(str, steps))}"
            )
            if self.tracker:
                record = {
                    "spike_step": first,
                    "why": why,
                    "back_to_step": self.step,
                    "skipped_blocks": blocks,
                }
                self.tracker.log(
                    {"rewind_to_step": self.step, "rewinds": self.rewinds},
                    first,
                    tags={f"rewind_{self.rewinds}": json.dumps(record)},
                )

    def checkpoint(self, metrics: dict, wait: bool = False) -> None:
        """Rank 0 copies the model and AdamW's state into memory (training stalls for that
        alone) and writes, hashes and publishes the copy in a thread while training goes on.
        Every rank reports it at the first log step where the writer is done (finish_checkpoint),
        at the next checkpoint at the latest, or at once with wait."""
        self.finish_checkpoint()
        name = f"checkpoint_{self.step:09d}"
        job = None
        if self.rank == 0:
            stack = contextlib.ExitStack()
            d = stack.enter_context(self.session.staging_dir(name))
            state = {
                "step": self.step,
                "total_steps": self.total,
                "budget_decided": not self.budget_open,
                "world_size": self.world,
                "skipped_steps": sorted(self.skipped),
                "rewinds": self.rewinds,
                "schedule": {"name": self.cfg.schedule, "warmup_steps": self.cfg.warmup_steps},
                "pretrain": dataclasses.asdict(self.cfg),
                "data_fingerprint": self.manifest["fingerprint"],
                "tokenizer_sha256": self.manifest["tokenizer"]["sha256"],
            }
            snap, errors = snapshot(self.gpt, self.opt), []

            def write() -> None:
                try:
                    write_checkpoint(d, snap, state, self.data / "tokenizer.json")
                except Exception as err:  # raised on the training thread (finish_checkpoint)
                    errors.append(err)

            thread = threading.Thread(target=write, name=f"gpt1-{name}", daemon=True)
            thread.start()
            job = (thread, errors, stack, d)
        self.pending = (metrics, name, job)
        if wait:
            self.finish_checkpoint()

    def writing(self) -> bool:
        """Whether this rank's checkpoint writer (rank 0's) is still at work."""
        job = self.pending[2] if self.pending else None
        return job is not None and job[0].is_alive()

    def finish_checkpoint(self) -> None:
        """Report the checkpoint begun last, once written; every rank, at the same step."""
        if self.pending is None:
            return
        (metrics, name, job), self.pending = self.pending, None
        failed = None
        if job is None:
            self.session.report(metrics)
        else:
            thread, errors, stack, d = job
            with stack:
                thread.join()
                if errors:  # safetensors reports a full disk as its own error type
                    if disk_error(errors[0]) is None:
                        raise errors[0]
                    failed = f"{disk_error(errors[0])} while writing checkpoint {int(name.rsplit('_', 1)[1]):,} (in {d})"
                self.session.report(metrics, None if failed else d, None if failed else name)
        if self._any(failed is not None):
            raise StopRun(failed or "rank 0 could not write its checkpoint")

    def check(
        self, losses: list, norms: list, stepped: list[int], t_saved: float
    ) -> tuple[list | None, bool]:
        """The steps since the last check (their losses, this rank's shares, and grad norms),
        checked for spikes on every rank alike: (each step's batch loss, whether a checkpoint is
        due by time), or (None, False) where a spike made the run rewind."""
        cfg = self.cfg
        # Whether a checkpoint is due by time, and whether the last one's writer is still
        # busy, are rank 0's to say, carried to every rank in the losses' all-reduce: no
        # collective of their own. A busy writer is left to finish (training never waits
        # for it here); the next checkpoint, or the run's end, joins it.
        due = self.rank == 0 and 0 < cfg.checkpoint_every_minutes * 60 <= time.monotonic() - t_saved
        busy = self.rank == 0 and self.writing()
        flags = torch.tensor([float(due), float(busy)], device=self.device, dtype=torch.float64)
        sums = _all_reduce(torch.cat([torch.stack(losses).double(), flags]), self.world).tolist()
        per_step = [x / self.world for x in sums[: len(losses)]]  # each step's batch loss
        by_time = sums[-2] > 0
        if not sums[-1]:
            self.finish_checkpoint()
        # Checked before run() takes a checkpoint at this step, so that the newest checkpoint
        # always precedes a spike.
        spikes = self.monitor.spiking(stepped, per_step, [float(n) for n in norms])
        if spikes:
            self.rewind(spikes)
            return None, False
        return per_step, by_time

    def notice_agreed(self) -> bool:
        """At a step boundary, every rank alike: whether some rank's node will go (its notice
        seen at the boundary before; preemption.Agreement)."""
        if self.agree is None:
            return False
        return self.agree(self.session.watch.notice is not None and not self.noticed)

    def preempted(self) -> None:
        """Every rank, at the boundary where some rank's node will go: the notices gathered, and
        rank 0 says which node goes and logs the event; the checkpoint follows (run)."""
        notice = self.session.watch.notice if not self.noticed else None
        notices = [notice]
        if self.world > 1:
            notices = [None] * self.world
            dist.all_gather_object(notices, notice)
        self.noticed = self.noticed or notice is not None
        self.preempting = True
        if self.rank != 0:
            return
        for n in [n for n in notices if n]:
            left = f", {n['deadline'] - time.time():.0f} s before it goes" if n.get("deadline") else ""
            say(f"node {n['node']} will go ({n['source']}{left}): a checkpoint at step {self.step:,}")
            if self.tracker:
                self.tracker.log(
                    {"preemption_checkpoint_step": self.step},
                    self.step,
                    tags={f"preemption_{n['node']}": json.dumps({**n, "checkpoint_step": self.step})},
                )

    def ranks(self, steps: int, waited: float) -> dict:
        """Every rank's busy time and data wait a step since the last log, and the straggler
        metric (observe.rank_metrics): gathered from all ranks, at log steps only."""
        mine = torch.tensor(
            [self.timer.take() / steps, waited / steps], device=self.device, dtype=torch.float64
        )
        got = [torch.zeros_like(mine) for _ in range(self.world)]
        if self.world > 1:
            dist.all_gather(got, mine)
        else:
            got = [mine]
        rows = torch.stack(got).tolist()
        return observe.rank_metrics([r[0] for r in rows], [r[1] for r in rows])

    def traced(self, profile, step: int) -> None:
        """Rank 0's profiler trace, once its steps are done: an MLflow artifact (profile/)."""
        path = profile.step(step) if profile else None
        if path is None:
            return
        logged = self.tracker is not None and self.tracker.log_artifact(path, "profile")
        say(
            f"profiler trace of steps {path.stem.removeprefix('trace_steps_')}: {path}"
            + (f" (MLflow artifact profile/{path.name})" if logged else "")
            + "; open it in https://ui.perfetto.dev or chrome://tracing"
        )

    def evaluate_and_log(self, s: int) -> dict:
        """An evaluation at step s (and the zero-shot tasks', where asked), said and logged by
        rank 0; returns the evaluation's metrics."""
        t_eval = time.perf_counter()
        ev = self.evaluate()
        ev["eval_s"] = time.perf_counter() - t_eval
        # Timed beside the evaluation, so that what a curve point costs is in the run.
        t_zero = time.perf_counter()
        zs = self.zero_shot()
        if zs:
            zs["eval_zero_shot_s"] = time.perf_counter() - t_zero
        if self.rank == 0:
            say(
                f"step {s:,}: val loss {ev['val_loss']:.4f}, perplexity {ev['val_perplexity']:.2f}, "
                f"{ev['val_bits_per_byte']:.4f} bits per byte ({ev['eval_s']:.1f} s)"
            )
            if zs:
                scores = ", ".join(
                    f"{k.removeprefix('zero_shot_')} {v:.4f}"
                    for k, v in zs.items()
                    if k != "eval_zero_shot_s"
                )
                say(f"step {s:,}: zero-shot {scores} ({zs['eval_zero_shot_s']:.1f} s)")
            if self.tracker:
                self.tracker.log({**ev, **zs}, s)
        return ev

    def run(self) -> dict:
        cfg = self.cfg
        self.gpt.train()
        tokens_per_step = cfg.batch_size * self.gpt.config.n_ctx
        metrics: dict = {}
        if self.rank == 0 and self.step:
            say(f"resuming at step {self.step:,} of {self.total:,} on {self.world} worker(s)")
        if self.rank == 0 and (cfg.batch_size // self.micro) % self.world:
            say(
                f"{self.world} workers do not divide {cfg.batch_size // self.micro} micro-batches of "
                f"{self.micro}: each runs at most {self.share} of the batch's {cfg.batch_size} sequences a step "
                "(rebalanced; dropout masks follow the cut, so this stretch retraces runs on this worker count)"
            )
        t_start, step_start = time.perf_counter(), self.step
        t_log, losses, waited = time.perf_counter(), [], 0.0
        norms, stepped, log_sum, log_n = [], [], 0.0, 0  # each step's since the last check; the log's
        t_rate = None
        t_saved = time.monotonic()  # checkpoint_every_minutes counts from here, then from each save
        # The profiler on rank 0, a few steps in: compilation and cold caches stay out of the trace.
        profile = (
            observe.Profile(self.step + 4, cfg.profile, self.device)
            if cfg.profile and self.rank == 0
            else None
        )
        while self.step < self.total:
            if self.budget_open and self.step - step_start == BUDGET_STEPS[0]:
                t_rate = time.perf_counter()  # the first steps (compilation, caches) are not timed
            loss, norm, w = self.train_step()
            if self.budget_open and self.step - step_start == sum(BUDGET_STEPS):
                now = time.perf_counter()
                self.decide_total((now - t_rate) / BUDGET_STEPS[1], now - t_start)
            total = self.total
            s = self.step
            self.traced(profile, s)
            if loss is not None:  # a step whose batch a rewind skipped trains nothing
                losses.append(loss)
                norms.append(norm)
                stepped.append(s)
            waited += w
            by_time = False
            logs = s % cfg.log_every == 0 or s == total
            saves = bool(cfg.checkpoint_every and s % cfg.checkpoint_every == 0) or s == total
            # A node will go: a checkpoint now, whatever the schedule, once the steps since the
            # last check are checked for spikes (a rewind first; the notice is agreed again).
            noticed = self.notice_agreed()
            if losses and (logs or saves or noticed):  # every step since the last check, for spikes
                per_step, by_time = self.check(losses, norms, stepped, t_saved)
                if per_step is None:  # a spike: rewound to the newest checkpoint
                    t_start, step_start = time.perf_counter(), self.step
                    t_log, losses, norms, stepped, waited = time.perf_counter(), [], [], [], 0.0
                    log_sum, log_n = 0.0, 0
                    continue
                log_sum, log_n, norm = log_sum + sum(per_step), log_n + len(per_step), norms[-1]
                losses, norms, stepped = [], [], []
            if noticed:  # every rank checkpoints, and waits for it to be stored
                self.preempted()
                by_time = True
            if logs and log_n:
                now = time.perf_counter()
                mean = log_sum / log_n
                tps = tokens_per_step * log_n / (now - t_log)
                metrics = {
                    "loss": mean,
                    "lr": self.lr,
                    "grad_norm": float(norm),
                    "tokens_per_s": tps,
                    "tokens_per_step": tokens_per_step,
                    # What a step costs each worker: B / W to within one (pieces).
                    "worker_sequences": self.share,
                    "mfu": tps * self.flops_per_token / (self.ceiling * self.world),
                    **(
                        {"mfu_datasheet": tps * self.flops_per_token / (self.peak * self.world)}
                        if self.peak
                        else {}
                    ),
                    "data_wait": waited / (now - t_log),
                    "epoch": s / self.order.steps_per_epoch,
                    "elapsed_s": now - t_start,
                    **self.ranks(log_n, waited),
                }  # training time of this attempt
                if self.rank == 0:
                    left = (total - s) * (now - t_start) / (s - step_start)
                    say(
                        f"step {s:,}/{total:,} | loss {mean:.4f} | lr {metrics['lr']:.2e} | "
                        f"{tps:,.0f} tok/s | MFU {metrics['mfu']:.1%} | ETA {eta(left)}"
                    )
                    if self.tracker:
                        self.tracker.log(metrics, s)
                t_log, log_sum, log_n, waited = time.perf_counter(), 0.0, 0, 0.0
            if cfg.eval_every and (s % cfg.eval_every == 0 or s == total) and self.n_val:
                metrics.update(self.evaluate_and_log(s))
            if (cfg.checkpoint_every and s % cfg.checkpoint_every == 0) or s == total or by_time:
                # Stored before training goes on where a node is about to go.
                self.checkpoint({**metrics, "step": s}, wait=s == total or self.preempting)
                self.preempting = False
                t_saved = time.monotonic()
        if self.agree is not None:
            self.agree.close()
        if self.rank == 0 and self.tracker:
            self.tracker.log_model(self.gpt, self.data / "tokenizer.json")
            if cfg.zero_shot:
                self.tracker.log_curves(
                    "zero_shot_", "zero_shot_curves.png", "zero-shot over pretraining (Fig. 2, right)"
                )
        return {**metrics, "step": self.step}

    @functools.cached_property
    def scorer(self):
        """The zero-shot scorer of this worker's model, made at the first evaluation that needs
        it: each rank scores its share of the examples, and all get every result back."""
        from pipeline.data.tokenizer import load_tokenizer
        from pipeline.eval.zero_shot import Scorer

        def gather(obj) -> list:
            objs = [None] * self.world
            dist.all_gather_object(objs, obj)
            return objs

        return Scorer(
            self.gpt,
            load_tokenizer(self.data / "tokenizer.json"),
            self.device.type,
            share=(self.rank, self.world),
            gather=gather if self.world > 1 else None,
        )

    @torch.no_grad()
    def zero_shot(self) -> dict:
        """Every rank: the paper's zero-shot heuristics on the model as it is now, each task's
        metric as zero_shot_<task>_<metric>. The examples are spread over the ranks as the val
        blocks are, so a curve point costs the same share of each worker's time on 1 or 64."""
        if not self.cfg.zero_shot:
            return {}
        from pipeline.eval.zero_shot import run_task

        self.gpt.eval()
        out = {}
        with autocast(self.device, self.cfg.dtype):
            for spec in self.cfg.zero_shot:
                name, _, d = spec.partition("=")
                r = run_task(name, d, self.scorer, self.cfg.zero_shot_examples)
                out[f"zero_shot_{r['task']}_{r['metric']}"] = r["value"]
        self.gpt.train()
        return out


def train_loop(spec: LoopSpec, session, tracker=None) -> dict:
    return Pretraining(spec, session, tracker).run()
