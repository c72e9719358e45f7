"""A prepared dataset's manifest.json: its schema and format version, written by prepare, read
and checked (fields, shards) before training reads a block.

The manifest, as Manifest below spells it: format_version; fingerprint (the sha256 of the
inputs' sha256s and the options that change the output); inputs (uri, sha256, bytes, format,
gzip, and split where held-out files make the val split); options; tokenizer (sha256,
vocab_size, n_merges, end_of_document id, source); n_ctx; seed; dtype of the token ids; splits
(per split: documents, tokens, bytes, blocks, tokens_not_in_a_block, empty_documents);
replaced_bytes (bytes that were not UTF-8); shards (split/shard-NNNNN.parquet -> sha256).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

from pipeline.data.corpus import CorpusError
from pipeline.errors import UserError

# 2: the reserved tokens are in the tokenizer's vocabulary (text that holds them is ordinary text),
# and GPT-1's released vocabulary splits text as its released encoder did.
FORMAT_VERSION = 2


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


class Manifest(TypedDict):
    format_version: int
    fingerprint: str
    inputs: list[dict]
    options: dict
    tokenizer: TokenizerInfo
    n_ctx: int
    seed: int
    dtype: str
    splits: dict[str, Split]  # train and val
    replaced_bytes: int
    shards: dict[str, str]


def is_dataset(d: Path) -> bool:
    """A directory that prepare wrote (or was writing, when only its manifest is damaged)."""
    return (d / "manifest.json").is_file()


def read_manifest(d: Path) -> Manifest:
    """manifest.json of a dataset directory, or one line saying why it cannot be read."""
    path = Path(d) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CorpusError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); the dataset is "
                          f"damaged: prepare it again with --overwrite") from None
    except UnicodeDecodeError:
        raise CorpusError(f"{path}: not UTF-8 text; the dataset is damaged: prepare it again with --overwrite") from None
    if not isinstance(manifest, dict):
        raise CorpusError(f"{path}: expected a JSON object; the dataset is damaged: prepare it again with --overwrite")
    return manifest


def write_manifest(d: Path, manifest: Manifest) -> None:
    """Written last: a directory with a manifest is complete."""
    (Path(d) / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


_DAMAGED = "; the manifest was edited or damaged: prepare the dataset again"


def check_fields(manifest: dict, where: Path) -> None:
    """The keys that training reads, with the types it expects."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise DataError(f"{where}: {what}{_DAMAGED}")

    for key, kind in (("splits", dict), ("shards", dict), ("tokenizer", dict), ("n_ctx", int), ("dtype", str),
                      ("fingerprint", str)):
        need(isinstance(manifest.get(key), kind), f"expected {key!r} ({kind.__name__})")
    for split in ("train", "val"):
        s = manifest["splits"].get(split)
        need(isinstance(s, dict), f"no {split!r} split")
        for key in ("documents", "tokens", "bytes", "blocks"):
            need(isinstance(s.get(key), int) and s[key] >= 0, f"splits.{split}.{key} is not a count")
    need(set(manifest["splits"]) == {"train", "val"}, f"splits {sorted(manifest['splits'])}, expected train and val")
    need(all(n.split("/")[0] in ("train", "val") for n in manifest["shards"]), "a shard outside train/ and val/")
    t = manifest["tokenizer"]
    need(isinstance(t.get("vocab_size"), int) and t["vocab_size"] > 0, "tokenizer.vocab_size is not a positive count")
    need(isinstance(t.get("sha256"), str), "no tokenizer.sha256")


def check_shards(d: Path, manifest: dict) -> None:
    """The shards on disk are the manifest's, and hold the blocks its splits count."""
    import pyarrow.parquet as pq

    where = d / "manifest.json"
    for split in ("train", "val"):
        listed = sorted(n for n in manifest["shards"] if n.startswith(f"{split}/"))
        on_disk = sorted(f"{split}/{p.name}" for p in (d / split).glob("*.parquet")) if (d / split).is_dir() else []
        extra = sorted(set(on_disk) - set(listed))
        if extra:
            raise DataError(f"{d / extra[0]}: a shard that the manifest does not list{_DAMAGED}")
        blocks = sum(pq.ParquetFile(d / n).metadata.num_rows for n in listed)
        if blocks != manifest["splits"][split]["blocks"]:
            raise DataError(f"{where}: splits.{split}.blocks is {manifest['splits'][split]['blocks']:,} but its "
                          f"shards hold {blocks:,} blocks{_DAMAGED}")
