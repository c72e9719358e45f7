"""A prepared dataset read back for training: the manifest checked, the blocks read by offset.

The order of training blocks is a pure function of (seed, epoch, global step): every epoch is a
fresh permutation drawn from (seed, epoch), and step s of the epoch takes its s-th slice. So the
global batch at a step is the same whatever the number of workers, and a resumed run sees what an
uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from pipeline import env, remote
from pipeline.data.manifest import FORMAT_VERSION, DataError, check_fields, check_shards, read_manifest
from pipeline.data.packing import StreamReader
from pipeline.data.tokenizer import load_tokenizer, tokenizer_sha256
from pipeline.errors import UserError
from pipeline.files import machine_lock, sha256_file


def read_dataset(where) -> dict:
    """The manifest of a prepared dataset, a directory or an object-storage URI, checked against
    what is there: its format, its fields, and every shard present with its length (one listing).
    No shard is hashed here: see verify_once and pipeline/data/stage.py."""
    loc = remote.Location.of(where, DataError)
    if not (loc / "manifest.json").is_file():
        raise DataError(f"{loc}: not a prepared dataset (no manifest.json); make one with `gpt1 prepare`")
    try:
        manifest = read_manifest(loc)
    except UserError as err:
        raise DataError(str(err)) from None
    fs, base, label = loc.fs, loc.path, str(loc)
    where = f"{label}/manifest.json"
    version = manifest.get("format_version")
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise DataError(
            f"{where}: format_version {version} (token shards in Parquet), which this version no "
            f"longer reads; prepare the dataset again: gpt1 prepare --corpus ... --out {label} --overwrite"
        )
    if version != FORMAT_VERSION:
        raise DataError(
            f"{where}: format_version {version!r}, expected {FORMAT_VERSION}; "
            "prepare the dataset again with this version"
        )
    check_fields(manifest, where)
    check_shards(fs, base, label, manifest)
    return manifest


def open_dataset(where, verify: bool = True) -> dict:
    """The manifest of a prepared dataset (a directory or a URI), after checking that it still
    holds what the manifest says: with verify, the tokenizer's sha256 and, for a directory, every
    shard's (once per machine, see verify_once); a dataset on object storage is verified by each
    node as it stages it (pipeline/data/stage.py)."""
    loc = remote.Location.of(where)
    manifest = read_dataset(loc)
    if not verify:
        return manifest
    if loc.local is not None:
        verify_once(loc.local, manifest)
    check_tokenizer(loc, manifest)
    return manifest


def check_tokenizer(where, manifest: dict) -> None:
    """The dataset's tokenizer.json (in a directory, or under a URI) is the one its manifest names,
    and has as many tokens as the manifest says: vocab_size sizes the model, so a manifest edited
    to ask for 3e8 rows is refused here, before any worker allocates them."""
    label = str(where).rstrip("/")
    with remote.fetched(f"{label}/tokenizer.json", "the dataset's tokenizer.json") as t:
        tok = load_tokenizer(t)
    if tokenizer_sha256(tok) != manifest["tokenizer"]["sha256"]:
        raise DataError(f"{label}/tokenizer.json: sha256 differs from the manifest's")
    if tok.get_vocab_size(with_added_tokens=True) != manifest["tokenizer"]["vocab_size"]:
        raise DataError(
            f"{label}/manifest.json: tokenizer.vocab_size {manifest['tokenizer']['vocab_size']!r}, but "
            f"tokenizer.json has {tok.get_vocab_size(with_added_tokens=True):,} tokens"
        )


def verification_cache() -> Path:
    """GPT1_DATA_CACHE, else ~/.cache/gpt1/data: what this machine has verified and staged."""
    return env.data_cache()


def cache_key(where: str, manifest: dict) -> str:
    return hashlib.sha256(f"{where}\n{manifest['fingerprint']}".encode()).hexdigest()[:16]


def verify_once(d: Path, manifest: dict) -> None:
    """Every shard's sha256 against the manifest's, unless this machine has already checked that
    very file (same size and modification time): a re-submit does not hash the corpus again, and
    a changed shard is hashed again and caught. Raises DataError naming the shard."""
    stamp = verification_cache() / "verified" / f"{cache_key(str(d.absolute()), manifest)}.json"
    with machine_lock(stamp.with_suffix(".lock")):
        try:
            seen = json.loads(stamp.read_text())
        except (OSError, ValueError):
            seen = {}
        for name, shard in sorted(manifest["shards"].items()):
            st = (d / name).stat()
            if seen.get(name) == [st.st_size, st.st_mtime_ns, shard["sha256"]]:
                continue
            if sha256_file(d / name) != shard["sha256"]:
                raise DataError(f"{d / name}: sha256 differs from the manifest's (the shard was changed)")
            seen[name] = [st.st_size, st.st_mtime_ns, shard["sha256"]]
        stamp.write_text(json.dumps(seen))


def check_fits(manifest: dict, path, vocab_size: int, n_ctx: int) -> None:
    """The model must have an embedding row for every token id and the data's block length."""
    if manifest["tokenizer"]["vocab_size"] > vocab_size:
        raise DataError(
            f"{path}: the tokenizer has {manifest['tokenizer']['vocab_size']:,} tokens but the "
            f"model's vocab_size is {vocab_size:,}; expected vocab_size >= the tokenizer's"
        )
    if manifest["n_ctx"] != n_ctx:
        raise DataError(
            f"{path}: blocks of n_ctx {manifest['n_ctx']} but the model's n_ctx is {n_ctx}; "
            f"prepare with --set n_ctx={n_ctx}, or set model_overrides n_ctx to {manifest['n_ctx']}"
        )


def load_split(path, manifest: dict, split: str) -> StreamReader:
    """The blocks of one split, [n_blocks, n_ctx + 1] by index, memory-mapped from its shards."""
    names = sorted(n for n in manifest["shards"] if n.startswith(f"{split}/"))
    return StreamReader(
        [Path(path) / n for n in names],
        manifest["shard_tokens"],
        manifest["splits"][split]["tokens"],
        manifest["n_ctx"],
        manifest["dtype"],
    )


def tokens_per_byte(manifest: dict, split: str) -> float:
    """Tokens per UTF-8 byte of the split: turns a loss per token into bits per byte, a figure
    that compares across tokenizers."""
    s = manifest["splits"][split]
    return s["tokens"] / s["bytes"] if s["bytes"] else math.nan


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: 64 well-mixed bits from 64 (uint64 arithmetic wraps, as meant)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class BlockOrder:
    """Which blocks make up the global batch at each step: epoch e is a permutation of the
    blocks drawn from (seed, e), and step s takes its slice.

    The permutation is a function, not an array: position i of epoch e is a 4-round Feistel
    network over the smallest power-of-4 domain that holds n_blocks, keyed by (seed, e, round),
    applied again ("cycle walking") until the value falls inside [0, n_blocks). So a worker holds
    nothing per block and computes a batch in microseconds, at 1 M blocks or 200 M; an array
    permutation would cost every worker 4 bytes a block and seconds of shuffling per epoch."""

    ROUNDS = 4
    VERSION = (
        "feistel-4"  # in a run's identity: a run started with another order is not resumed with this one
    )

    def __init__(self, seed: int, n_blocks: int, batch_size: int):
        if n_blocks < batch_size:
            raise DataError(f"{n_blocks} training blocks are fewer than one global batch of {batch_size}")
        self.seed, self.n_blocks, self.batch_size = seed, n_blocks, batch_size
        # The n_blocks % batch_size blocks left over by an epoch's permutation differ every epoch.
        self.steps_per_epoch = n_blocks // batch_size
        self._half = max(1, (int(n_blocks - 1).bit_length() + 1) // 2)  # bits per Feistel half

    def _keys(self, epoch: int) -> np.ndarray:
        """The rounds' keys of epoch: a function of (seed, epoch) alone."""
        u = lambda v: np.array([v & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)  # noqa: E731
        base = _mix(_mix(u(self.seed)) ^ u(epoch))
        with np.errstate(over="ignore"):
            return _mix(base + np.arange(1, self.ROUNDS + 1, dtype=np.uint64))

    def _permute(self, i: np.ndarray, keys: list) -> np.ndarray:
        h = np.uint64(self._half)
        low = np.uint64((1 << self._half) - 1)
        x = i.astype(np.uint64)
        left, right = x >> h, x & low
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & low)
        return (left << h) | right

    def batch(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        keys = self._keys(epoch)
        pos = np.arange(i * self.batch_size, (i + 1) * self.batch_size, dtype=np.uint64)
        out = self._permute(pos, keys)
        # The domain is at most 4x n_blocks: walking on from a value outside it until one falls
        # inside keeps the map a permutation of [0, n_blocks), in a few rounds at most.
        while (outside := out >= np.uint64(self.n_blocks)).any():
            out[outside] = self._permute(out[outside], keys)
        return out.astype(np.int64)
