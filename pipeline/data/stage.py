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

import collections
import hashlib
import os
import threading
from pathlib import Path

import pyarrow.fs as pafs

from pipeline import env, remote
from pipeline.data.dataset import cache_key, read_dataset, verification_cache, verify_once
from pipeline.data.manifest import DataError, manifest_json
from pipeline.files import machine_lock

# Bytes per ranged GET while staging. A GET costs a round trip before its first byte (tens of ms
# on S3), so pieces are as large as keeps every stream busy: a whole shard of prepare's default
# 64 MiB, down to 8 MiB (AWS's suggested range size) when the dataset is too small to give each
# stream two pieces.
_PIECE_MAX, _PIECE_MIN = 64 << 20, 8 << 20


def piece_size(total: int, streams: int) -> int:
    return max(_PIECE_MIN, min(_PIECE_MAX, -(-total // (2 * streams))))


def local_copy(uri: str) -> tuple[Path, dict]:
    """The dataset at uri as a local directory, with its manifest: itself (verified once per
    machine), or, for object storage, this node's staged copy (downloaded and verified once per
    node)."""
    loc = remote.Location.of(uri)
    manifest = read_dataset(loc)
    if loc.local is not None:
        verify_once(loc.local, manifest)
        return loc.local, manifest
    dest = verification_cache() / cache_key(str(loc), manifest)
    with machine_lock(dest.with_suffix(".lock")):
        if not (dest / "manifest.json").exists():
            _download(str(loc), manifest, dest)
    return dest, manifest


def _download(uri: str, manifest: dict, dest: Path, streams: int | None = None) -> None:
    """Every file of the dataset at uri into dest, in pieces (piece_size) fetched by `streams`
    ranged reads at once (GPT1_STAGE_STREAMS, default 8): one S3 stream is bound by its round
    trips, not by the pipe. Each file is hashed once whole, and renamed into place only when its
    sha256 is the manifest's."""
    from concurrent.futures import ThreadPoolExecutor

    streams = streams or env.stage_streams()
    fs, base = pafs.FileSystem.from_uri(uri)
    want = {
        **{n: s["sha256"] for n, s in manifest["shards"].items()},
        "tokenizer.json": manifest["tokenizer"]["sha256"],
    }
    # Every name checked before a byte is written: each must land under dest.
    paths = {name: remote.inside(dest, name, f"{uri}/manifest.json") for name in sorted(want)}
    # Staged by an earlier attempt: renamed into place only once verified, so kept.
    todo = {name: path for name, path in paths.items() if not path.exists()}
    infos = fs.get_file_info([f"{base}/{name}" for name in todo])
    piece = piece_size(sum(info.size for info in infos if info.type == pafs.FileType.File), streams)
    pieces, parts = [], {}
    for (name, path), info in zip(todo.items(), infos, strict=True):
        if info.type != pafs.FileType.File:
            raise DataError(f"{uri}/{name}: missing, though the manifest lists it; prepare the dataset again")
        path.parent.mkdir(parents=True, exist_ok=True)
        parts[name] = tmp = path.with_name(path.name + f".part-{os.getpid()}")
        with open(tmp, "wb") as out:
            out.truncate(info.size)
        # An empty file still has one piece, so that the stream landing it hashes it.
        pieces += [(name, tmp, at, min(piece, info.size - at)) for at in range(0, info.size or 1, piece)]

    # One handle per file, opened (one HEAD request) by the first piece that needs it: ReadAt on
    # an S3 handle is a stateless ranged GET, so the streams share it. A file is hashed by the
    # stream that lands its last piece, while the others keep downloading.
    lock = threading.Lock()
    handles: dict[str, pafs.NativeFile] = {}
    left = collections.Counter(name for name, *_ in pieces)

    def fetch(piece) -> str | None:
        name, tmp, at, size = piece
        with lock:
            if name not in handles:
                handles[name] = fs.open_input_file(f"{base}/{name}")
            src = handles[name]
        data = src.read_at(size, at) if size else b""
        if len(data) != size:
            raise DataError(f"{uri}/{name}: shorter than when it was listed (it was changed); try again")
        fd = os.open(tmp, os.O_WRONLY)
        try:
            os.pwrite(fd, data, at)
        finally:
            os.close(fd)
        with lock:
            left[name] -= 1
            if left[name]:
                return None
            handles.pop(name).close()
        return verify(name)

    def verify(name: str) -> str | None:
        h = hashlib.sha256()
        with open(parts[name], "rb") as f:
            while data := f.read(_PIECE_MIN):
                h.update(data)
        return None if h.hexdigest() == want[name] else name

    try:
        with ThreadPoolExecutor(streams) as pool:
            bad = [name for name in pool.map(fetch, pieces) if name]
    except BaseException:
        for tmp in parts.values():
            tmp.unlink(missing_ok=True)
        raise
    finally:
        for src in handles.values():
            src.close()
    if bad:
        for tmp in parts.values():
            tmp.unlink(missing_ok=True)
        raise DataError(
            f"{uri}/{bad[0]}: sha256 differs from the manifest's (the file was changed or damaged); "
            "prepare the dataset again"
        )
    for name, tmp in parts.items():
        os.replace(tmp, paths[name])
    (dest / "manifest.json").write_text(manifest_json(manifest))  # last: the copy is complete


def staging_nodes(nodes: list[dict], resource: str, accelerator: str | None = None) -> list[tuple[str, int]]:
    """(node id, CPUs its staging task holds) for each live node of ray.nodes() that would host
    the run's workers: one with `resource`, and, with accelerator, of that accelerator type. The
    task holds a CPU where the node has one, so that Ray counts the node busy while it stages and
    the autoscaler never takes it for idle (ray#37733)."""
    out = []
    for n in nodes:
        res = n.get("Resources", {})
        if not n.get("Alive") or res.get(resource, 0) <= 0:
            continue
        if accelerator and res.get(f"accelerator_type:{accelerator}", 0) <= 0:
            continue
        out.append((n["NodeID"], 1 if res.get("CPU", 0) >= 1 else 0))
    return out


def stage_on_nodes(uri: str, resource: str, accelerator: str | None = None) -> list[str]:
    """Stage a dataset on object storage onto every node of the Ray cluster that would host the
    run's workers (staging_nodes), before the workers start: no rank then waits in a collective
    while another node downloads. A node that joins later stages in its first worker
    (local_copy). Returns the nodes staged on; raises DataError with the first node's line where
    a copy fails verification."""
    if remote.Location.of(uri).local is not None:
        return []
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def stage() -> str | None:
        try:
            local_copy(uri)
        except DataError as err:
            return str(err)
        return None

    nodes = staging_nodes(ray.nodes(), resource, accelerator)
    tasks = [
        ray.remote(num_cpus=cpus, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))(
            stage
        ).remote()
        for node, cpus in nodes
    ]
    failed = next((line for line in ray.get(tasks) if line), None)
    if failed:
        raise DataError(failed)
    return [node for node, _ in nodes]
