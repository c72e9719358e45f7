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


ROW_GROUP = 1024  # blocks per Parquet row group: what the packer holds in memory at most


def _table(blocks: np.ndarray) -> pa.Table:
    values = pa.array(blocks.reshape(-1), type=pa.from_numpy_dtype(blocks.dtype))
    return pa.table({"tokens": pa.FixedSizeListArray.from_arrays(values, blocks.shape[1])})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def read_blocks(path) -> np.ndarray:
    """[n_blocks, n_ctx + 1] array of a shard."""
    col = pq.read_table(path, columns=["tokens"]).column("tokens").combine_chunks()
    return col.values.to_numpy().reshape(len(col), col.type.list_size)


class Packer:
    """Packs one split's token stream into blocks and streams them into Parquet shards.

    Row groups always hold ROW_GROUP blocks (the last of a shard fewer), so the files are a
    function of the token stream alone, not of how it arrived; and memory stays at one row
    group, whatever the corpus or shard size.
    """

    def __init__(self, out_dir: Path, n_ctx: int, eod: int, dtype: np.dtype, shard_blocks: int):
        self.out_dir, self.n_ctx, self.eod, self.dtype = out_dir, n_ctx, eod, dtype
        self.shard_blocks = max(shard_blocks // ROW_GROUP, 1) * ROW_GROUP if shard_blocks >= ROW_GROUP else shard_blocks
        self.pending = np.empty(0, dtype=dtype)  # stream tokens not yet in a finished block
        self.group: list[np.ndarray] = []  # finished blocks not yet written
        self.n_group = 0
        self.writer: pq.ParquetWriter | None = None
        self.in_shard = 0
        self.shards: dict[str, str] = {}  # file name -> sha256
        self.documents = self.tokens = self.n_blocks = 0

    def add(self, stream: np.ndarray, n_documents: int) -> None:
        """Append stream tokens (documents already joined with the end-of-document token)."""
        self.documents += n_documents
        self.tokens += len(stream)
        self.pending = np.concatenate([self.pending, stream.astype(self.dtype, copy=False)])
        n_full = (len(self.pending) - 1) // self.n_ctx
        if n_full:
            windows = np.lib.stride_tricks.sliding_window_view(self.pending, self.n_ctx + 1)
            self.group.append(windows[::self.n_ctx][:n_full].copy())
            self.n_group += n_full
            self.pending = self.pending[n_full * self.n_ctx:].copy()
        while self.n_group >= min(ROW_GROUP, self.shard_blocks - self.in_shard):
            self._write(min(ROW_GROUP, self.shard_blocks - self.in_shard))

    def _write(self, n: int) -> None:
        blocks = np.concatenate(self.group) if len(self.group) > 1 else self.group[0]
        if self.writer is None:
            self.name = f"shard-{len(self.shards):05d}.parquet"
            self.tmp = self.out_dir / (self.name + ".tmp")
            self.writer = pq.ParquetWriter(self.tmp, _table(blocks[:1]).schema, compression="zstd")
        self.writer.write_table(_table(blocks[:n]), row_group_size=n)
        self.in_shard += n
        self.n_blocks += n
        rest = blocks[n:]
        self.group, self.n_group = ([rest] if len(rest) else []), len(rest)
        if self.in_shard == self.shard_blocks:
            self._close_shard()

    def _close_shard(self) -> None:
        self.writer.close()
        path = self.out_dir / self.name
        os.replace(self.tmp, path)
        self.shards[self.name] = sha256_file(path)
        self.writer, self.in_shard = None, 0

    def close(self) -> int:
        """Write what is left; returns the tokens too few for a block (counted in the manifest,
        not silently dropped)."""
        if self.n_group:
            self._write(self.n_group)
        if self.writer is not None:
            self._close_shard()
        return max(len(self.pending) - 1, 0)
