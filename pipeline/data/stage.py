"""Where training reads a dataset from: a local directory, verified once per machine, or a copy of
a dataset on object storage, staged once per node and verified as it is written.

Every shard's sha256 is checked once per node and dataset, not on every submit: a node keeps a
stamp of what it verified (each shard's size and modification time), and a shard that changed
since is hashed again. A dataset on object storage is downloaded by the first worker on each node
(an flock; the others wait for it, then find it there) into the node's cache, each shard hashed
as it streams in and renamed into place only when it matches; manifest.json comes last. A node
spends the dataset's size of disk, once, however many workers it runs; the workers then
memory-map the same files, so the tokens sit once in its page cache.

The cache is GPT1_DATA_CACHE, else ~/.cache/gpt1/data, one directory per dataset fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow.fs as pafs

from pipeline import remote
from pipeline.data.dataset import cache_key, machine_lock, read_dataset, verification_cache, verify_once
from pipeline.data.manifest import DataError, manifest_json

_PIECE = 1 << 24  # bytes per read while staging


def local_copy(uri: str) -> tuple[Path, dict]:
    """The dataset at uri as a local directory, with its manifest: itself (verified once per
    machine), or, for object storage, this node's staged copy (downloaded and verified once per
    node)."""
    manifest = read_dataset(uri)
    if not remote.is_remote(uri):
        d = remote.local_path(uri)
        verify_once(d, manifest)
        return d, manifest
    dest = verification_cache() / cache_key(uri.rstrip("/"), manifest)
    with machine_lock(dest.with_suffix(".lock")):
        if not (dest / "manifest.json").exists():
            _download(uri.rstrip("/"), manifest, dest)
    return dest, manifest


def _download(uri: str, manifest: dict, dest: Path) -> None:
    fs, base = pafs.FileSystem.from_uri(uri)
    want = {
        **{n: s["sha256"] for n, s in manifest["shards"].items()},
        "tokenizer.json": manifest["tokenizer"]["sha256"],
    }
    # Every name checked before a byte is written: each must land under dest.
    paths = {name: remote.inside(dest, name, f"{uri}/manifest.json") for name in sorted(want)}
    for name, path in paths.items():
        if path.exists():  # staged by an earlier attempt: renamed into place only once verified
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".part-{os.getpid()}")
        h = hashlib.sha256()
        with fs.open_input_stream(f"{base}/{name}") as src, open(tmp, "wb") as out:
            while data := src.read(_PIECE):
                h.update(data)
                out.write(data)
        if h.hexdigest() != want[name]:
            tmp.unlink()
            raise DataError(
                f"{uri}/{name}: sha256 differs from the manifest's (the file was changed or damaged); "
                "prepare the dataset again"
            )
        os.replace(tmp, path)
    (dest / "manifest.json").write_text(manifest_json(manifest))  # last: the copy is complete
