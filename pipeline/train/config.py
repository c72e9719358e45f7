"""PretrainConfig: the pretraining settings, with their ranges, shared by the stage and its loop."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field

from model.config import ADAM_WARMUP_STEPS
from pipeline import configio, errors

# The largest token budget taken: beyond it a number is a typo, not a plan (a 10^25 budget once
# trained with an 18-digit-hour ETA).
MAX_TOKENS = 10**15


# Where EC2 announces a spot reclaim (404 until it is scheduled): preemption.py asks it.
EC2_SPOT = "http://169.254.169.254/latest/meta-data/spot/instance-action"


@dataclass
class PretrainConfig:
    model: str = "tiny"  # model preset (model/config.py); vocab_size comes from the data's tokenizer
    model_overrides: dict = field(default_factory=dict)  # GPTConfig fields, e.g. {n_layer: 6}
    batch_size: int = 64  # global batch, in sequences of n_ctx tokens (the one lr and warm-up are for)
    # Most sequences per forward pass: a number; 0 = batch_size / workers (see micro_batch()); or
    # "auto": the largest that fits the GPU, measured at the start (train/memory.py) and recorded.
    micro_batch: int | str = 0
    # None: batch_size as given. "auto": workers x micro_batch sequences (one micro-batch per GPU
    # a step); a number: about that many tokens a step. Either way lr and warm-up follow the
    # batch (scale_batch): a run on 64 GPUs is not forced to one sequence a GPU.
    batch_tokens: int | str | None = None
    lr_scaling: str = "sqrt"  # how lr follows a resized batch: sqrt (Adam's rule) or linear
    lr: float = 2.5e-4  # Adam's peak learning rate (the paper's 2.5e-4)
    schedule: str = "warmup_cosine"  # warmup_cosine, warmup_linear, warmup_constant (opt.py's)
    warmup_steps: int = 2000  # at batch_size; a resized batch keeps the warm-up's tokens
    epochs: int = 100  # passes over the train split, where neither max_steps nor max_tokens is set
    max_steps: int = 0  # 0 = epochs x steps per epoch; the schedule spans max_steps
    max_tokens: int = 0  # a token budget: the steps from the batch's tokens (0 = none; max_steps wins)
    max_minutes: float = 0.0  # a time budget: total steps set from the step rate measured early on (0 = none)
    weight_decay: float = 0.01  # the paper's modified L2 (decoupled), on all weights but biases and gains
    grad_clip: float = 1.0  # max global grad norm; 0 = none
    seed: int = 0  # initial weights, block order, dropout
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU), bf16, fp32
    compile: bool | None = None  # torch.compile the model; None = on GPU only (+56% on an H200)
    # Both below are settings so that bench/gpu_check.py's timings can choose them.
    compile_mode: str = (
        "default"  # torch.compile's mode: default, max-autotune(-no-cudagraphs), reduce-overhead
    )
    attention: str = (
        "auto"  # the SDPA kernel of training: auto (torch's choice), flash, efficient, cudnn, math
    )
    grad_compression: str = "none"  # "bf16": DDP all-reduces gradients in bf16 (half the bytes)
    # The all-reduce bus bandwidth across nodes a multi-node run expects, GB/s (0: the plan's for
    # --accelerator; none without one). Measured at the start of every multi-node run (train/network.py).
    network_gbps: float = 0.0
    slow_network_ok: bool = False  # train on where the network measures under a quarter of that
    log_every: int = 10  # steps between the console's and MLflow's training metrics
    eval_every: int = 500  # steps between evaluations on the val split (also at the end); 0 = never
    eval_blocks: int = 0  # val blocks per evaluation; 0 = all
    checkpoint_every: int = 1000  # steps between checkpoints (also at the end); 0 = by time only
    checkpoint_every_minutes: float = 30.0  # also one this long after the last (0 = steps only)
    keep_checkpoints: int = 3  # the newest checkpoints kept; older ones are deleted
    max_failures: int = 3  # worker failures to recover from before the run fails
    # How long a rank waits in a training collective for the others (NCCL's, gloo's timeout):
    # a hung rank costs the cluster this long. Staging a dataset is waited for apart (loop.py).
    collective_timeout_minutes: float = 10.0
    # Loss spikes (train/spikes.py): a step whose loss or grad norm is not finite, or (with
    # spike_factor k > 0) whose loss is over k x the median of the last spike_window steps, makes
    # the run go back to its newest checkpoint and skip that step's batch, up to max_rewinds
    # times; 0 rewinds: it stops at the first, as before.
    spike_factor: float = 0.0
    spike_window: int = 100  # good steps whose median loss a spike is measured against
    max_rewinds: int = 0  # rewinds to the newest checkpoint before a spike stops the run (0: it stops)
    # Seconds between samples of MLflow's system metrics (CPU, memory, disk, network; GPU
    # utilisation, memory and power), on every node of the run (0: none).
    system_metrics_s: float = 10.0
    profile: int = 0  # steps of a torch profiler trace, from the attempt's 5th step, as an MLflow artifact
    # Where a worker asks whether its node will be reclaimed (EC2's spot notice; '' for Ray's
    # drain notice alone): every rank checkpoints at the next step boundary (train/preemption.py).
    preemption_url: str = EC2_SPOT
    preemption_poll_s: float = 1.0  # how often a worker asks (AWS gives two minutes' notice)
    zero_shot: list = field(
        default_factory=list
    )  # ["sst-2=DIR", ...]: the paper's heuristics at every evaluation
    zero_shot_examples: int = (
        500  # per split and task: bounds what a curve point costs (bench/zero_shot_cost.py)
    )


COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")
ATTENTION = ("auto", "flash", "efficient", "cudnn", "math")

# Keys that change how a run is watched or kept, never its results: a run resumed with other
# values of these is the same run.
NOT_IN_IDENTITY = (
    "network_gbps",  # what the network is expected to do, not what the run computes
    "slow_network_ok",
    "compile_mode",  # how fast, not what: the same run up to float rounding
    "attention",
    "log_every",
    "eval_every",
    "eval_blocks",
    "checkpoint_every",
    "checkpoint_every_minutes",
    "keep_checkpoints",
    "max_failures",
    "collective_timeout_minutes",
    "spike_factor",  # a stopped run may be resumed with rewinds on: the steps before are the same
    "spike_window",
    "max_rewinds",
    "system_metrics_s",
    "profile",
    "preemption_url",
    "preemption_poll_s",
    "zero_shot",
    "zero_shot_examples",
)


def micro_batch(cfg: PretrainConfig, workers: int, recorded: int | None = None) -> int:
    """The micro-batch a run uses: fixed when the run starts, because each micro-batch draws its
    own dropout masks, and a resume on another worker count retraces the run only with the same
    micro-batches. At the start: micro_batch, or less where the workers need it to divide the
    batch evenly (the gpt1 preset's 8 becomes 4 on 16 workers, 1 on 64); on a resume: the run's
    own (`recorded`), whatever the workers now (pieces)."""
    # auto, before it is measured (or where there is no GPU to measure): the share, as 0.
    asked = 0 if cfg.micro_batch == "auto" else cfg.micro_batch
    # Smaller micro-batches than the run's asked for are a change of settings (claim_run says so).
    if recorded and (not asked or recorded <= asked):
        return recorded  # on any worker count: where it does not divide them, pieces() rebalances
    return min(asked or cfg.batch_size, cfg.batch_size // max(workers, 1))


def pieces(batch: int, micro: int, world: int, rank: int) -> list[tuple[int, int, int]]:
    """What worker `rank` of `world` runs of a step's batch of `batch` sequences: (start, stop,
    seed key) of each piece, in the order run. Where the workers divide the M micro-batches, the
    micro-batches rank, rank + W, ... whole (key: the micro-batch's index j). Where they do not,
    the batch rebalanced: sequences [rank B / W, (rank + 1) B / W), cut at the micro-batches'
    boundaries and into at most `micro` each; a whole micro-batch keeps its key j, a part of one
    takes M + its first sequence's index (no whole one has such a key)."""
    m = batch // micro
    if m % world == 0:
        return [(j * micro, (j + 1) * micro, j) for j in range(rank, m, world)]
    lo, hi = rank * batch // world, (rank + 1) * batch // world
    cuts = sorted({lo, hi, *range((lo // micro + 1) * micro, hi, micro)})
    return [
        (a, b, a // micro if b - a == micro and a % micro == 0 else m + a)
        for a, b in itertools.pairwise(cuts)
    ]


def shares_by_rank(batch: int, micro: int, world: int) -> list[list[int]]:
    """Each worker's sequences of the batch (indices into it), by rank: pieces, flattened."""
    return [[i for a, b, _ in pieces(batch, micro, world, r) for i in range(a, b)] for r in range(world)]


def scale_batch(cfg: PretrainConfig, workers: int, n_ctx: int, batch: int | None = None) -> PretrainConfig:
    """The settings a run trains with where batch_tokens resizes its batch (cfg as given
    otherwise): `batch` sequences (a resumed run's own), else workers x micro_batch ("auto") or
    the multiple of micro_batch nearest batch_tokens / n_ctx, whatever the workers. With k = the new batch /
    batch_size, the lr becomes lr x sqrt(k) (lr_scaling sqrt: the square-root rule for Adam,
    Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms") or lr
    x k (linear: Goyal et al. 2017, for SGD), and warm-up keeps its tokens: warmup_steps / k
    steps, but never fewer than Adam's horizon, ADAM_WARMUP_STEPS (2,000). A pure function of the settings and the workers, so a resume finds the same run."""
    if cfg.batch_tokens is None:
        return cfg
    if batch is None:
        # auto fills the cluster's GPUs: a micro-batch each. A number is the cluster's business
        # no more: whole micro-batches (sized by memory, a GPU's), shared by any workers (pieces),
        # so that the batch, and the run, are the same on 8 GPUs and on 64.
        auto = cfg.batch_tokens == "auto"
        unit = cfg.micro_batch * (workers if auto else 1)
        batch = unit if auto else max(1, round(cfg.batch_tokens / n_ctx / unit)) * unit
    k = batch / cfg.batch_size
    return dataclasses.replace(
        cfg,
        batch_tokens=None,  # applied: the settings are now the run's own
        batch_size=batch,
        lr=cfg.lr * (math.sqrt(k) if cfg.lr_scaling == "sqrt" else k),
        # Never under Adam's untuned warm-up horizon (or the warm-up asked, where that is shorter):
        # a 64-GPU batch would otherwise warm up in a few hundred steps, on a post-LN model.
        warmup_steps=max(round(cfg.warmup_steps / k), min(cfg.warmup_steps, ADAM_WARMUP_STEPS)),
    )


def total_steps(cfg: PretrainConfig, steps_per_epoch: int, n_ctx: int) -> int:
    """The steps the schedule spans: max_steps, else the token budget, else the epochs."""
    if cfg.max_steps:
        return cfg.max_steps
    if cfg.max_tokens:
        return math.ceil(cfg.max_tokens / (cfg.batch_size * n_ctx))
    return cfg.epochs * steps_per_epoch


def parse_workers(text: str) -> tuple[int, int]:
    """--workers N (a fixed count) or MIN-MAX (elastic: Ray Train runs on as many as the cluster
    has, and a lost node means fewer workers, not a wait) -> (min, max)."""
    lo, sep, hi = str(text).partition("-")
    try:
        low, high = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        low = high = 0
    if low < 1 or high < low:
        raise errors.ConfigError(
            f"--workers {text}: expected a count (8) or a range MIN-MAX (4-8), at least 1"
        )
    return low, high


# A run name is one path component under --storage (and Ray Train's name for the run): a
# name with a slash or '..' would put the run elsewhere, or split it between two places.
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_name(name: str) -> None:
    if not _RUN_NAME.fullmatch(name) or ".." in name:
        raise errors.ConfigError(
            f"--name {name!r}: expected one name of letters, digits, '.', '_' and '-' "
            "(no '/' or '..', at most 128 characters): the run lives at STORAGE/NAME"
        )


def default_run_name(data: str, model: str, asked: str) -> str:
    """From the dataset's last path component, its unsafe characters replaced by '_'."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", str(data).rstrip("/").rsplit("/", 1)[-1]).lstrip("._-") or "data"
    return f"{base[:80]}-{model}-{asked}"


def check_config(cfg: PretrainConfig, workers: int) -> None:
    c = errors.ConfigError
    if workers < 1:
        raise c(f"--workers {workers}: expected at least 1")
    if cfg.batch_tokens is not None and not (
        cfg.batch_tokens == "auto"
        or (
            isinstance(cfg.batch_tokens, int)
            and not isinstance(cfg.batch_tokens, bool)
            and cfg.batch_tokens > 0
        )
    ):
        raise c(f"batch_tokens {cfg.batch_tokens!r}: expected auto or a number of tokens per step")
    if cfg.micro_batch != "auto" and (
        not isinstance(cfg.micro_batch, int) or isinstance(cfg.micro_batch, bool) or cfg.micro_batch < 0
    ):
        raise c(
            f"micro_batch {cfg.micro_batch!r}: expected a number of sequences, 0 (the batch / workers) "
            "or auto (the most that fit the GPU, measured at the start)"
        )
    if cfg.batch_tokens is not None and cfg.micro_batch != "auto" and cfg.micro_batch < 1:
        raise c("batch_tokens: also set micro_batch, the sequences each GPU runs per forward pass")
    if cfg.lr_scaling not in ("sqrt", "linear"):
        raise c(f"lr_scaling {cfg.lr_scaling!r}: expected sqrt or linear")
    if cfg.compile not in (None, True, False):
        raise c(f"compile {cfg.compile!r}: expected true, false or null (on GPU only)")
    if cfg.compile_mode not in COMPILE_MODES:
        raise c(f"compile_mode {cfg.compile_mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    if cfg.attention not in ATTENTION:
        raise c(f"attention {cfg.attention!r}: expected one of {', '.join(ATTENTION)}")
    if cfg.grad_compression not in ("none", "bf16"):
        raise c(f"grad_compression {cfg.grad_compression!r}: expected none or bf16")
    if not 0 <= cfg.max_tokens <= MAX_TOKENS:
        raise c(
            f"max_tokens {cfg.max_tokens:,}: expected 0 (no token budget) to {MAX_TOKENS:,} (10^15, some "
            "10,000x the largest corpora trained on)"
        )
    if cfg.checkpoint_every_minutes < 0:
        raise c(f"checkpoint_every_minutes {cfg.checkpoint_every_minutes}: expected >= 0 (0 = by steps only)")
    if cfg.schedule not in ("warmup_cosine", "warmup_linear", "warmup_constant"):
        raise c(f"schedule {cfg.schedule!r}: expected warmup_cosine, warmup_linear or warmup_constant")
    if cfg.dtype not in ("auto", "bf16", "fp32"):
        raise c(f"dtype {cfg.dtype!r}: expected auto, bf16 or fp32")
    if min(cfg.log_every, cfg.keep_checkpoints) < 1 or cfg.epochs < 1:
        raise c("log_every, keep_checkpoints and epochs must be at least 1")
    if cfg.checkpoint_every < 0 or not (cfg.checkpoint_every or cfg.checkpoint_every_minutes):
        raise c(
            f"checkpoint_every {cfg.checkpoint_every}: expected a number of steps, or 0 (by time only) "
            "with checkpoint_every_minutes above 0"
        )
    if cfg.max_minutes < 0:
        raise c(f"max_minutes {cfg.max_minutes}: expected >= 0 (0 = no time budget)")
    if (
        cfg.max_steps < 0
        or cfg.warmup_steps < 0
        or cfg.eval_every < 0
        or cfg.eval_blocks < 0
        or cfg.max_failures < 0
        or cfg.max_rewinds < 0
        or cfg.spike_factor < 0
        or cfg.spike_window < 1
        or cfg.system_metrics_s < 0
        or cfg.profile < 0
        or cfg.preemption_poll_s <= 0
    ):
        raise c(
            "max_steps, warmup_steps, eval_every, eval_blocks, max_failures, max_rewinds, spike_factor, "
            "system_metrics_s and profile must be >= 0, spike_window >= 1, preemption_poll_s > 0"
        )
    if not isinstance(cfg.zero_shot, list) or cfg.zero_shot_examples < 0:
        raise c("zero_shot: expected a list of TASK=DIR (e.g. [sst-2=glue/SST-2]); zero_shot_examples: >= 0")
    # A batch that batch_tokens resizes is checked once resized (scale_batch).
    check_split(cfg, workers)
    configio.check_ranges(
        cfg,
        {
            "lr": (0.0, 1.0),
            "weight_decay": (0.0, 1.0),
            "grad_clip": (0.0, None),
            "network_gbps": (0.0, None),
            "collective_timeout_minutes": (1.0, 120.0),
        },
    )


def check_split(cfg: PretrainConfig, workers: int) -> None:
    """The batch cuts into whole micro-batches, and every worker has a sequence of it a step;
    workers that do not divide the micro-batches share the batch rebalanced (pieces)."""
    c = errors.ConfigError
    if cfg.batch_tokens is not None:
        return
    micro = micro_batch(cfg, workers)
    if cfg.batch_size >= 1 and micro < 1:
        raise c(
            f"--workers {workers}: more workers than the batch's {cfg.batch_size} sequences, and each worker "
            f"needs at least one a step; use at most {cfg.batch_size} workers, or raise batch_size "
            "(or --set batch_tokens=auto)"
        )
    if cfg.batch_size < 1 or cfg.batch_size % micro:
        raise c(f"batch_size {cfg.batch_size}: expected a multiple of micro_batch ({micro})")
