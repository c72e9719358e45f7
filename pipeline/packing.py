"""Packing a token stream into contiguous blocks of n_ctx + 1 tokens, written as Parquet shards.

Documents are joined with the end-of-document token. Block i holds stream tokens
[i*n_ctx, i*n_ctx + n_ctx]: consecutive blocks share one token, so that every next-token pair of
the stream is a training target exactly once (input = block[:-1], target = block[1:]).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def write_shard(blocks: np.ndarray, path: Path) -> str:
    """One Parquet file with a `tokens` column of fixed-size lists; returns its sha256."""
    n, width = blocks.shape
    values = pa.array(blocks.reshape(-1), type=pa.from_numpy_dtype(blocks.dtype))
    table = pa.table({"tokens": pa.FixedSizeListArray.from_arrays(values, width)})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=4096)
    os.replace(tmp, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_blocks(path) -> np.ndarray:
    """[n_blocks, n_ctx + 1] array of a shard."""
    col = pq.read_table(path, columns=["tokens"]).column("tokens").combine_chunks()
    return col.values.to_numpy().reshape(len(col), col.type.list_size)


class Packer:
    """Accumulates one split's documents and writes full shards as they fill."""

    def __init__(self, out_dir: Path, n_ctx: int, eod: int, dtype: np.dtype, shard_blocks: int):
        self.out_dir, self.n_ctx, self.eod, self.dtype = out_dir, n_ctx, eod, dtype
        self.shard_blocks = shard_blocks
        self.pending = np.empty(0, dtype=dtype)  # stream tokens not yet in a finished block
        self.blocks: list[np.ndarray] = []
        self.n_buffered = 0
        self.shards: dict[str, str] = {}  # file name -> sha256
        self.documents = self.tokens = self.n_blocks = 0

    def add(self, tokens: np.ndarray) -> None:
        self.documents += 1
        self.tokens += len(tokens) + 1
        self.pending = np.concatenate([self.pending, tokens.astype(self.dtype), [self.eod]]).astype(self.dtype)
        n_full = (len(self.pending) - 1) // self.n_ctx
        if n_full:
            windows = np.lib.stride_tricks.sliding_window_view(self.pending, self.n_ctx + 1)
            self.blocks.append(windows[::self.n_ctx][:n_full].copy())
            self.n_buffered += n_full
            self.pending = self.pending[n_full * self.n_ctx:].copy()
        while self.n_buffered >= self.shard_blocks:
            self._flush(self.shard_blocks)

    def _flush(self, n: int) -> None:
        allb = np.concatenate(self.blocks)
        name = f"shard-{len(self.shards):05d}.parquet"
        self.shards[name] = write_shard(allb[:n], self.out_dir / name)
        self.n_blocks += n
        rest = allb[n:]
        self.blocks = [rest] if len(rest) else []
        self.n_buffered = len(rest)

    def close(self) -> int:
        """Write the last shard; returns the tokens left over, too few for a block (these are
        counted in the manifest, not silently dropped)."""
        if self.n_buffered:
            self._flush(self.n_buffered)
        return max(len(self.pending) - 1, 0)
