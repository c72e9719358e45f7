"""A prepared dataset's manifest.json: its schema and format version, written by prepare, read
and checked (fields, shards) before training reads a block.

The manifest, as Manifest below spells it: format_version; fingerprint (the sha256 of the inputs'
digests and the options that change the output); source_key (the same over the inputs' names,
sizes and modification times: what a re-run compares before reading anything); inputs (uri,
sha256_pieces, bytes, mtime, format, gzip, and split where held-out files make the val split);
options; tokenizer (sha256, vocab_size, n_merges, end_of_document id, source); n_ctx; seed; dtype
of the token ids; shard_tokens; splits (per split: documents, tokens, bytes, blocks,
tokens_not_in_a_block, empty_documents); replaced_bytes (bytes that were not UTF-8); shards
(split/shard-NNNNN.bin -> its tokens and sha256).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TypedDict

import numpy as np
import pyarrow.fs as pafs

from pipeline import remote
from pipeline.data.corpus import CorpusError, input_digest
from pipeline.data.packing import SPLITS, n_blocks
from pipeline.data.tokenizer import END_OF_DOCUMENT, n_merges
from pipeline.errors import UserError

# 2: the reserved tokens are in the tokenizer's vocabulary (text that holds them is ordinary text),
# and GPT-1's released vocabulary splits text as its released encoder did.
# 3: raw token shards read by offset (pipeline/data/packing.py) instead of zstd Parquet blocks; the
# val split is drawn by a hash of each document's text; inputs are identified by the sha256s of
# their 1 MiB pieces, hashed by the workers as they read.
FORMAT_VERSION = 3


class DataError(UserError):
    """A dataset that is missing, incomplete, altered, or does not fit the model: one line, exit 2."""


class Split(TypedDict):
    documents: int
    tokens: int
    bytes: int  # UTF-8 bytes of the documents: tokens / bytes turns nats per token into bits per byte
    blocks: int
    tokens_not_in_a_block: int  # the stream's tail, too short for a block: counted, not hidden
    empty_documents: int


class TokenizerInfo(TypedDict):
    sha256: str
    vocab_size: int
    n_merges: int
    end_of_document: int
    source: str


class Input(TypedDict, total=False):
    uri: str
    sha256_pieces: str  # sha256 of the sha256s of its 1 MiB pieces (corpus.input_digest)
    bytes: int
    mtime: float | None
    format: str
    gzip: bool
    split: str  # only where held-out files make the val split


class Shard(TypedDict):
    tokens: int
    sha256: str


class Manifest(TypedDict):
    format_version: int
    fingerprint: str
    source_key: str
    inputs: list[Input]
    options: dict
    tokenizer: TokenizerInfo
    n_ctx: int
    seed: int
    dtype: str
    shard_tokens: int  # tokens of every shard but a split's last
    splits: dict[str, Split]  # train and val
    replaced_bytes: int
    shards: dict[str, Shard]


def is_dataset(d: Path) -> bool:
    """A directory that prepare wrote (or was writing, when only its manifest is damaged)."""
    return (d / "manifest.json").is_file()


def read_manifest(where) -> Manifest:
    """manifest.json of a dataset (a directory or a URI), or one line saying why it cannot be read."""
    path = remote.Location.of(where) / "manifest.json"
    try:
        manifest = json.loads(path.read_bytes())
    except json.JSONDecodeError as err:
        raise CorpusError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}); the dataset is "
            f"damaged: prepare it again with --overwrite"
        ) from None
    except UnicodeDecodeError:
        raise CorpusError(
            f"{path}: not UTF-8 text; the dataset is damaged: prepare it again with --overwrite"
        ) from None
    if not isinstance(manifest, dict):
        raise CorpusError(
            f"{path}: expected a JSON object; the dataset is damaged: prepare it again with --overwrite"
        )
    return manifest


def manifest_json(manifest: Manifest) -> str:
    """The manifest's text, written last: a directory with a manifest is complete."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


_DAMAGED = "; the manifest was edited or damaged: prepare the dataset again"


def check_fields(manifest: dict, where: Path) -> None:
    """The keys that training reads, with the types it expects."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise DataError(f"{where}: {what}{_DAMAGED}")

    for key, kind in (
        ("splits", dict),
        ("shards", dict),
        ("tokenizer", dict),
        ("n_ctx", int),
        ("dtype", str),
        ("fingerprint", str),
        ("shard_tokens", int),
    ):
        need(isinstance(manifest.get(key), kind), f"expected {key!r} ({kind.__name__})")
    for split in ("train", "val"):
        s = manifest["splits"].get(split)
        need(isinstance(s, dict), f"no {split!r} split")
        for key in ("documents", "tokens", "bytes", "blocks"):
            need(isinstance(s.get(key), int) and s[key] >= 0, f"splits.{split}.{key} is not a count")
    need(
        set(manifest["splits"]) == {"train", "val"},
        f"splits {sorted(manifest['splits'])}, expected train and val",
    )
    need(
        all(n.split("/")[0] in ("train", "val") for n in manifest["shards"]),
        "a shard outside train/ and val/",
    )
    need(
        all(
            isinstance(v, dict) and isinstance(v.get("tokens"), int) and isinstance(v.get("sha256"), str)
            for v in manifest["shards"].values()
        ),
        "a shard without its tokens and sha256",
    )
    need(manifest["dtype"] in ("uint16", "uint32"), f"dtype {manifest['dtype']!r}, expected uint16 or uint32")
    need(manifest["n_ctx"] > 0 and manifest["shard_tokens"] > 0, "n_ctx and shard_tokens must be positive")
    for split in ("train", "val"):
        s = manifest["splits"][split]
        want = max(s["tokens"] - 1, 0) // manifest["n_ctx"]  # blocks of n_ctx + 1 that the stream holds
        need(
            s["blocks"] == want,
            f"splits.{split}.blocks is {s['blocks']:,} but its {s['tokens']:,} tokens make "
            f"{want:,} blocks of {manifest['n_ctx'] + 1}",
        )
    t = manifest["tokenizer"]
    need(
        isinstance(t.get("vocab_size"), int) and t["vocab_size"] > 0,
        "tokenizer.vocab_size is not a positive count",
    )
    need(isinstance(t.get("sha256"), str), "no tokenizer.sha256")


def check_shards(fs, base: str, label: str, manifest: dict) -> None:
    """The shards under base (any pyarrow filesystem) are the manifest's, each as long as it says,
    and together as long as their split's stream: a cheap check (one listing, sizes only) of a
    missing, truncated or extra file."""

    width = np.dtype(manifest["dtype"]).itemsize
    for split in ("train", "val"):
        infos = fs.get_file_info(pafs.FileSelector(f"{base}/{split}", allow_not_found=True))
        sizes = {f"{split}/{i.base_name}": i.size for i in infos if i.type == pafs.FileType.File}
        listed = sorted(n for n in manifest["shards"] if n.startswith(f"{split}/"))
        extra = sorted(set(sizes) - set(listed))
        if extra:
            raise DataError(f"{label}/{extra[0]}: a file that the manifest does not list{_DAMAGED}")
        for name in listed:
            if name not in sizes:
                raise DataError(
                    f"{label}/{name}: listed in the manifest but missing; prepare the dataset again"
                )
            if sizes[name] != manifest["shards"][name]["tokens"] * width:
                raise DataError(
                    f"{label}/{name}: {sizes[name]:,} bytes, but the manifest says "
                    f"{manifest['shards'][name]['tokens']:,} tokens of {width} bytes{_DAMAGED}"
                )
        tokens = sum(manifest["shards"][n]["tokens"] for n in listed)
        if tokens != manifest["splits"][split]["tokens"]:
            raise DataError(
                f"{label}/manifest.json: splits.{split}.tokens is {manifest['splits'][split]['tokens']:,} "
                f"but its shards hold {tokens:,} tokens{_DAMAGED}"
            )


# Options that change how the work is spread, never the output: left out of the fingerprint.
NOT_IN_FINGERPRINT = ("parallelism", "chunk_mb", "batch_docs", "max_replaced_fraction")


def options_of(cfg) -> dict:
    """prepare's options that change the output (a PrepareConfig's, less NOT_IN_FINGERPRINT)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_FINGERPRINT}


def fingerprint(inputs: list, cfg, tokenizer_source: str, n_val_files: int) -> str:
    """The sha256 that names a dataset: of the inputs (their digests; for the source key, their
    names, sizes and times), the options that change the output, and the tokenizer's source."""
    blob = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "inputs": inputs,
            "val_inputs": n_val_files,
            "options": options_of(cfg),
            "tokenizer": tokenizer_source,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def build_manifest(
    cfg,
    files,
    val_files,
    rows: list[dict],
    tok,
    source: str,
    source_key: str,
    dtype,
    shard_tokens: int,
    shards,
) -> Manifest:
    """The manifest of a dataset prepare has written: from the options (cfg), the input files
    (the val split's indices in val_files), the work items' summaries (rows), the tokenizer and
    its source, and each shard's (tokens, sha256) by name."""
    digests: dict[int, list[bytes]] = {}
    for r in rows:
        digests.setdefault(r["file"], []).append(r["pieces"])
    inputs = [
        {
            "uri": f.uri,
            "sha256_pieces": input_digest(digests.get(i, [])),
            "bytes": f.size,
            "mtime_ns": f.mtime_ns,
            "format": f.format,
            "gzip": f.gz,
            **({"split": "val" if i in val_files else "train"} if val_files else {}),
        }
        for i, f in enumerate(files)
    ]
    splits = {}
    for split in SPLITS:
        tokens = sum(r[f"tokens_{split}"] for r in rows)
        blocks = n_blocks(tokens, cfg.n_ctx)
        splits[split] = {
            "documents": sum(r[f"documents_{split}"] for r in rows),
            "tokens": tokens,
            "bytes": sum(r[f"bytes_{split}"] for r in rows),
            "blocks": blocks,
            "tokens_not_in_a_block": max(tokens - 1 - blocks * cfg.n_ctx, 0),
            "empty_documents": sum(r[f"empty_{split}"] for r in rows),
        }
    tok_text = tok.to_str()
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint([i["sha256_pieces"] for i in inputs], cfg, source, len(val_files)),
        "source_key": source_key,
        "inputs": inputs,
        "options": options_of(cfg),
        "tokenizer": {
            "sha256": hashlib.sha256(tok_text.encode("utf-8")).hexdigest(),
            "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "n_merges": n_merges(tok),
            "end_of_document": tok.token_to_id(END_OF_DOCUMENT),
            "source": cfg.tokenizer,
        },
        "n_ctx": cfg.n_ctx,
        "seed": cfg.seed,
        "dtype": str(dtype),
        "shard_tokens": shard_tokens,
        "splits": splits,
        "replaced_bytes": sum(r["n_replaced"] for r in rows),  # bytes that were not UTF-8, each now U+FFFD
        "shards": {name: {"tokens": n, "sha256": sha} for name, (n, sha) in shards.items()},
    }


def existing_manifest(out: remote.Location, overwrite: bool) -> dict | None:
    """The manifest of the dataset already at out, None where there is none. A damaged one is an
    error, unless --overwrite is to replace it anyway (then {})."""
    if not (out / "manifest.json").is_file():
        return None
    try:
        return read_manifest(out)
    except CorpusError:
        if not overwrite:
            raise
        return {}
