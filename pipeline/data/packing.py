"""The token files of a prepared dataset: each split's token stream as raw shards, and the blocks
read from it by offset.

Documents, each followed by the end-of-document token, make one stream per split, in input
order. The stream is cut into shards of exactly `shard_tokens` tokens (a split's last shard
fewer): raw little-endian uint16 ids (uint32 where the vocabulary does not fit), no header. Block
i holds stream tokens [i*n_ctx, i*n_ctx + n_ctx]: consecutive blocks share one token, so every
next-token pair of the stream is a training target exactly once (input = block[:-1], target =
block[1:]). A block may straddle two shards.

Why raw shards and not Arrow: block i is the byte range [i*n_ctx*w, (i*n_ctx + n_ctx + 1)*w) of
the stream (w = 2 or 4), found in O(1) with no decompression; the files are memory-mapped on local
disk and read by one ranged GET from object storage; the manifest holds each shard's length and
sha256, so the files need no header of their own. nanoGPT and llm.c store tokens the same way.

Shards are cut by position in the stream alone, so they are the same bytes however the stream
was produced: the prepare workers write each work item's stream to a part file, and each shard is
then assembled from the byte ranges of the parts it covers (plan_shards, write_shard).
"""

from __future__ import annotations

import bisect
import hashlib
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

_COPY = 1 << 24  # bytes per read when assembling a shard: memory stays bounded by this


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


SPLITS = ("train", "val")  # a dataset's two token streams, each under its own directory


def shard_name(split: str, k: int) -> str:
    return f"{split}/shard-{k:05d}.bin"


def n_blocks(tokens: int, n_ctx: int) -> int:
    """Blocks of n_ctx + 1 tokens that a stream of this many tokens holds."""
    return max(tokens - 1, 0) // n_ctx


def plan_shards(part_tokens: list[int], shard_tokens: int) -> list[list[tuple[int, int, int]]]:
    """For each shard of the stream made by concatenating the parts (in order), the pieces it is
    copied from: (part index, first token in the part, tokens). Needs only the parts' lengths."""
    ends = np.cumsum(part_tokens, dtype=np.int64).tolist()
    total = ends[-1] if ends else 0
    shards = []
    for lo in range(0, total, shard_tokens):
        hi = min(lo + shard_tokens, total)
        pieces, pos = [], lo
        p = bisect.bisect_right(ends, pos)
        while pos < hi:
            start = ends[p - 1] if p else 0
            n = min(ends[p], hi) - pos
            if n:
                pieces.append((p, pos - start, n))
            pos += n
            p += 1
        shards.append(pieces)
    return shards


def write_shard(fs: pafs.FileSystem, dest: str, pieces: list[tuple[str, int, int]]) -> str:
    """Copy the byte ranges (path, offset, n_bytes) of fs into dest, in order; returns dest's sha256,
    computed as it is written."""
    h = hashlib.sha256()
    with fs.open_output_stream(dest) as out:
        for path, offset, n in pieces:
            with fs.open_input_file(path) as f:
                for at in range(offset, offset + n, _COPY):
                    data = f.read_at(min(_COPY, offset + n - at), at)
                    h.update(data)
                    out.write(data)
    return h.hexdigest()


def to_bytes(tokens: np.ndarray, dtype: np.dtype) -> bytes:
    """Token ids as the files hold them: little-endian whatever this machine's byte order."""
    return np.ascontiguousarray(tokens, dtype=dtype.newbyteorder("<")).tobytes()


class StreamReader:
    """Blocks of one split by index, from its shards: memory-mapped, so the tokens live once in the
    page cache however many workers read them, and a block costs a copy of its own bytes."""

    def __init__(self, paths: list[Path], shard_tokens: int, tokens: int, n_ctx: int, dtype: str):
        self.n_ctx, self.shard_tokens, self.tokens = n_ctx, shard_tokens, tokens
        dt = np.dtype(dtype).newbyteorder("<")
        self.maps = [
            np.memmap(p, dtype=dt, mode="r") if Path(p).stat().st_size else np.empty(0, dt) for p in paths
        ]
        self.n = n_blocks(tokens, n_ctx)

    def __len__(self) -> int:
        return self.n

    def tokens_at(self, start: int, n: int) -> np.ndarray:
        k, off = divmod(start, self.shard_tokens)
        first = self.maps[k][off : off + n]
        if len(first) == n:
            return first
        return np.concatenate([first, self.maps[k + 1][: n - len(first)]])

    def __getitem__(self, idx) -> np.ndarray:
        """[len(idx), n_ctx + 1] blocks for an index array or a slice (a fresh array, native order)."""
        ids = np.arange(self.n)[idx] if isinstance(idx, slice) else np.asarray(idx)
        out = np.empty(
            (len(ids), self.n_ctx + 1), dtype=self.maps[0].dtype.newbyteorder("=") if self.maps else np.int64
        )
        for row, i in enumerate(ids.tolist()):
            if not 0 <= i < self.n:
                raise IndexError(f"block {i} of {self.n}")
            out[row] = self.tokens_at(i * self.n_ctx, self.n_ctx + 1)
        return out

    def __repr__(self) -> str:
        return f"StreamReader({self.n} blocks of {self.n_ctx + 1})"
