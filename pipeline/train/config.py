"""PretrainConfig: the pretraining settings, with their ranges, shared by the stage and its loop."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline import configio, errors


@dataclass
class PretrainConfig:
    model: str = "tiny"  # model preset (model/config.py); vocab_size comes from the data's tokenizer
    model_overrides: dict = field(default_factory=dict)  # GPTConfig fields, e.g. {n_layer: 6}
    batch_size: int = 64  # global batch, in sequences of n_ctx tokens
    micro_batch: int = 0  # most sequences per forward pass; 0 = batch_size / workers (see micro_batch())
    lr: float = 2.5e-4
    schedule: str = "warmup_cosine"  # warmup_cosine, warmup_linear, warmup_constant (opt.py's)
    warmup_steps: int = 2000
    epochs: int = 100
    max_steps: int = 0  # 0 = epochs x steps per epoch; the schedule spans max_steps
    max_minutes: float = 0.0  # a time budget: total steps set from the step rate measured early on (0 = none)
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global grad norm; 0 = none
    seed: int = 0  # initial weights, block order, dropout
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU), bf16, fp32
    compile: bool = False  # torch.compile the model
    log_every: int = 10
    eval_every: int = 500  # steps between evaluations on the val split (also at the end); 0 = never
    eval_blocks: int = 0  # val blocks per evaluation; 0 = all
    checkpoint_every: int = 1000  # steps between checkpoints (also at the end)
    keep_checkpoints: int = 3
    max_failures: int = 3  # worker failures to recover from before the run fails
    zero_shot: list = field(
        default_factory=list
    )  # ["sst-2=DIR", ...]: the paper's heuristics at every evaluation
    zero_shot_examples: int = (
        500  # per split and task: bounds what a curve point costs (bench/zero_shot_cost.py)
    )


# Keys that change how a run is watched or kept, never its results: a run resumed with other
# values of these is the same run.
NOT_IN_IDENTITY = (
    "log_every",
    "eval_every",
    "eval_blocks",
    "checkpoint_every",
    "keep_checkpoints",
    "max_failures",
    "zero_shot",
    "zero_shot_examples",
)


def micro_batch(cfg: PretrainConfig, workers: int, recorded: int | None = None) -> int:
    """The micro-batch a run uses: fixed when the run starts, because each micro-batch draws its
    own dropout masks, and a resume on another worker count retraces the run only with the same
    micro-batches. At the start: micro_batch, or less where the workers need it (the gpt1
    preset's 8 becomes 4 on 16 workers, 1 on 64); on a resume: the run's own (`recorded`)."""
    cap = cfg.micro_batch or cfg.batch_size // max(workers, 1)
    if recorded and recorded <= cap:
        if cfg.batch_size % (recorded * workers):
            raise errors.ConfigError(
                f"--workers {workers}: this run draws its dropout masks per micro-batch of {recorded} "
                f"sequences, so it resumes on worker counts that divide {cfg.batch_size // recorded}; pass one "
                f"of those, or another --name to start a new run"
            )
        return recorded
    return min(cap, cfg.batch_size // max(workers, 1))


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
    micro = micro_batch(cfg, workers)
    if cfg.batch_size < 1 or micro < 1 or cfg.batch_size % (micro * workers):
        raise c(
            f"batch_size {cfg.batch_size}: expected a multiple of micro_batch ({micro}) x workers "
            f"({workers}), so that every worker runs the same number of micro-batches"
        )
    if cfg.schedule not in ("warmup_cosine", "warmup_linear", "warmup_constant"):
        raise c(f"schedule {cfg.schedule!r}: expected warmup_cosine, warmup_linear or warmup_constant")
    if cfg.dtype not in ("auto", "bf16", "fp32"):
        raise c(f"dtype {cfg.dtype!r}: expected auto, bf16 or fp32")
    if min(cfg.log_every, cfg.checkpoint_every, cfg.keep_checkpoints) < 1 or cfg.epochs < 1:
        raise c("log_every, checkpoint_every, keep_checkpoints and epochs must be at least 1")
    if cfg.max_minutes < 0:
        raise c(f"max_minutes {cfg.max_minutes}: expected >= 0 (0 = no time budget)")
    if (
        cfg.max_steps < 0
        or cfg.warmup_steps < 0
        or cfg.eval_every < 0
        or cfg.eval_blocks < 0
        or cfg.max_failures < 0
    ):
        raise c("max_steps, warmup_steps, eval_every, eval_blocks and max_failures must be >= 0")
    if not isinstance(cfg.zero_shot, list) or cfg.zero_shot_examples < 0:
        raise c("zero_shot: expected a list of TASK=DIR (e.g. [sst-2=glue/SST-2]); zero_shot_examples: >= 0")
    configio.check_ranges(cfg, {"lr": (0.0, 1.0), "weight_decay": (0.0, 1.0), "grad_clip": (0.0, None)})
