"""Stage 1's settings, PrepareConfig, and the checks made before any work: without pyarrow, numpy
or Ray, so that `--help`, `--print-config` and a refused setting cost no start-up. The fields'
comments are the `--set` keys' help (pipeline/configio.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import configio, errors


@dataclass
class PrepareConfig:
    format: str = "auto"  # auto (by extension), text, jsonl, parquet
    text_split: str = "blank_line"  # text: documents separated by empty lines, or one per "file"
    text_field: str = "text"  # JSON Lines field holding the text
    text_column: str = "text"  # Parquet column holding the text
    lowercase: bool = False  # GPT-1's own vocabulary lower-cases in its normaliser anyway
    tokenizer: str = "train"  # "train", or a tokenizer.json / released-vocabulary directory
    n_merges: int = 40000  # BPE merges when training, as in the paper
    n_ctx: int = 512  # tokens a training block predicts: the model's context
    val_fraction: float = 0.01  # of documents, chosen by a hash of (seed, the document's text)
    seed: int = 0  # which documents are held out as val
    shard_mb: int = 64  # token shard size
    chunk_mb: int = 4  # byte range of a file that one task reads: small enough to balance the workers
    parallelism: int = 0  # tokenizing workers; 0 = one per CPU, or as many as an autoscaling cluster adds
    batch_docs: int = 2048  # documents per encode_batch call and per write of a part file
    max_replaced_fraction: float = 0.01  # a file with a larger share of bytes that are not UTF-8 is refused


def check(cfg: PrepareConfig) -> None:
    """Refuse, in one line naming the key, settings no dataset can be made with."""
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise errors.ConfigError(f"val_fraction {cfg.val_fraction}: expected 0 <= val_fraction < 1")
    if cfg.n_ctx < 1 or cfg.shard_mb < 1 or cfg.chunk_mb < 1 or cfg.n_merges < 0:
        raise errors.ConfigError("n_ctx, shard_mb and chunk_mb must be positive, n_merges >= 0")
    configio.check_ranges(cfg, {"max_replaced_fraction": (0.0, 1.0)})
    if cfg.text_split not in ("blank_line", "file"):
        raise errors.ConfigError(f"text_split {cfg.text_split!r}: expected 'blank_line' or 'file'")
