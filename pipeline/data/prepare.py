"""Stage 1's driver: an unlabeled corpus -> a tokenizer and token shards read by offset (the command
is prepare_cli.py, which says what the stage guarantees).

The driver coordinates; the workers read and write (work.py, run by items.py). It plans the work
items, learns or loads the tokenizer, has the items tokenized into part files, cuts those into
shards, and writes tokenizer.json and, last, the manifest (manifest.py builds it); it holds the
output (a lock, or a lease on object storage) while it does, and clears what a failed run wrote.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from pipeline import cluster, console, outdir
from pipeline import remote as remote_store
from pipeline.data.config import PrepareConfig, check
from pipeline.data.corpus import (
    CorpusError,
    InputFile,
    ReadOptions,
    file_digest,
    plan_chunks,
    resolve_inputs,
)
from pipeline.data.items import in_process, on_ray_data, word_counts
from pipeline.data.manifest import (
    Manifest,
    build_manifest,
    existing_manifest,
    fingerprint,
    is_dataset,
    manifest_json,
)
from pipeline.data.packing import SPLITS, plan_shards, shard_name, token_dtype
from pipeline.data.tokenizer import (
    load_tokenizer,
    tokenizer_from_counts,
    tokenizer_sha256,
)
from pipeline.data.work import (
    WORK,
    Tokenize,
    part_name,
    row_error,
    write_shard_task,
)
from pipeline.runtime import check_wait, ray_init
from pipeline.tracking import check_store, log_prepare, tracking_uri


def prepare(
    corpus: list[str],
    out,
    cfg: PrepareConfig,
    overwrite: bool = False,
    track: bool = True,
    val_corpus: list[str] | None = None,
    local: bool = False,
    wait_minutes: float = 30,
) -> dict:
    """Run the stage; returns the manifest. Raises CorpusError / ConfigError on bad input.

    val_corpus: held-out inputs that make up the val split (and val_fraction is not used).
    local: run the work in this process instead of on Ray, for a machine without Ray
    (bench/gpu_check.py) and small corpora; the output is the same, byte for byte.
    wait_minutes: on a cluster whose autoscaler adds nodes, how long to wait for the first CPU."""
    t0, cpu0 = time.time(), time.process_time()
    out = remote_store.Location.of(out, CorpusError)
    check(cfg)
    check_wait(wait_minutes)
    files = resolve_inputs(corpus, cfg.format)  # first: a missing file is refused without MLflow's start-up
    n_val = 0
    if val_corpus:
        val = resolve_inputs(val_corpus, cfg.format)
        files, n_val = files + val, len(val)
    if track:  # the store is checked before the work, not after it
        check_store(tracking_uri())
    val_files = frozenset(range(len(files) - n_val, len(files)))
    if cfg.tokenizer == "train":
        tok, source = None, f"train:{cfg.n_merges}"
    else:
        with remote_store.fetched(
            cfg.tokenizer, "a tokenizer.json or the released vocabulary's directory"
        ) as t:
            tok = load_tokenizer(t)
        source = tokenizer_sha256(tok)
    # What a re-run compares before reading a byte: the inputs' names, sizes and times.
    source_key = fingerprint([[f.uri, f.size, f.mtime_ns] for f in files], cfg, source, n_val)
    # One prepare of an output at a time: a second is refused while the first lives, so that it
    # never replaces (or mixes into) the first's dataset.
    with out.hold("prepare"):
        existing = existing_manifest(out, overwrite)
        if existing is not None and (
            existing.get("source_key") == source_key or _same_contents(existing, files, cfg, source, n_val)
        ):
            print(f"{out} is up to date (same inputs and options): nothing to do")
            return existing
        meta = Path(tempfile.mkdtemp(prefix="gpt1-prepare-"))  # manifest and tokenizer, also for MLflow
        try:
            with _written(out, existing, overwrite) as target:
                if not local:  # on a cluster whose head takes no work, the first CPU node
                    ray_init()
                    cluster.wait_for("CPU", 1, 1, "prepare's workers", wait_minutes)
                manifest = _work(files, cfg, val_files, tok, source, source_key, target, local, meta)
        except BaseException:
            shutil.rmtree(meta, ignore_errors=True)
            raise
        elapsed, cpu = time.time() - t0, time.process_time() - cpu0
        s = manifest["splits"]
        read = sum(f.size for f in files)
        print(
            f"prepared {out}: {s['train']['documents'] + s['val']['documents']:,} documents, "
            f"{s['train']['tokens'] + s['val']['tokens']:,} tokens ({s['train']['blocks']:,} train / "
            f"{s['val']['blocks']:,} val blocks of {cfg.n_ctx + 1}) from {console.size(read)} in {elapsed:,.1f} s "
            f"({console.rate(read, elapsed)}); the driver used {cpu:,.1f} s of CPU ({cpu / elapsed:.0%} of one core)"
        )
        if s["val"]["blocks"] == 0 and (
            cfg.val_fraction > 0 or n_val
        ):  # said, not left for pretraining's evaluation to find
            print(
                f"warning: {out}: the val split holds {s['val']['documents']:,} documents and no block of "
                f"{cfg.n_ctx + 1} tokens, so pretraining cannot measure a val loss on it; "
                f"{'give a longer --val-corpus' if n_val else 'raise val_fraction or give --val-corpus'}",
                file=sys.stderr,
                flush=True,
            )
        if track:
            log_prepare(out, cfg, manifest, files=meta)
        shutil.rmtree(meta, ignore_errors=True)
        return manifest


def _same_contents(
    existing: dict, files: list[InputFile], cfg: PrepareConfig, source: str, n_val: int
) -> bool:
    """Whether inputs whose names and sizes match the dataset's, but whose times do not (a
    corpus written again, a copy), still hold the same bytes: read and hashed once here, only
    in that case, and compared with the dataset's fingerprint."""
    listed = [(i.get("uri"), i.get("bytes")) for i in existing.get("inputs", [])]
    if listed != [(f.uri, f.size) for f in files]:
        return False
    return existing.get("fingerprint") == fingerprint([file_digest(f) for f in files], cfg, source, n_val)


def _work(
    files, cfg, val_files, tok, source, source_key, target: remote_store.Location, local, meta: Path
) -> Manifest:
    """The dataset's files under target: the tokenizer (learned first, where asked), the part
    files, the shards, then the manifest."""
    fs, base, out_uri = target.fs, target.path, str(target)
    items = [
        {"item": i, **it}
        for i, it in enumerate(
            plan_chunks(files, cfg.chunk_mb << 20, ReadOptions(cfg.format, cfg.text_split))
        )
    ]
    common = dict(files=files, cfg=cfg, val_files=val_files)
    if tok is None:
        tok = tokenizer_from_counts(word_counts(common, items, cfg, local), n_merges=cfg.n_merges)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab)
    tok_text = tok.to_str()
    run_items = in_process if local else on_ray_data
    batches = run_items(
        Tokenize, {**common, "tokenizer_json": tok_text, "out": out_uri, "dtype": dtype.str}, items, cfg
    )
    rows = _summaries(console.progress(batches, len(items), "prepare: work items tokenized", size=len))
    _check_summaries(rows, files, cfg)

    shard_tokens = max((cfg.shard_mb << 20) // dtype.itemsize, 1)
    jobs = []
    for split in SPLITS:
        for k, pieces in enumerate(plan_shards([r[f"tokens_{split}"] for r in rows], shard_tokens)):
            jobs.append(
                (
                    shard_name(split, k),
                    [
                        (part_name(rows[p]["item"], split), at * dtype.itemsize, n * dtype.itemsize)
                        for p, at, n in pieces
                    ],
                )
            )
    shas = _assemble(out_uri, jobs, local)
    # The part files, in batches (S3 deletes up to 1,000 objects a request), then their directory.
    fs.delete_dir_contents(f"{base}/{WORK}", missing_dir_ok=True)
    if fs.get_file_info(f"{base}/{WORK}").type == pafs.FileType.Directory:  # a local one, or a marker
        fs.delete_dir(f"{base}/{WORK}")

    (meta / "tokenizer.json").write_text(tok_text, encoding="utf-8")
    shards = {
        name: (sum(n for _, _, n in pieces) // dtype.itemsize, sha)
        for (name, pieces), sha in zip(jobs, shas, strict=True)
    }
    manifest = build_manifest(
        cfg, files, val_files, rows, tok, source, source_key, dtype, shard_tokens, shards
    )
    (meta / "manifest.json").write_text(manifest_json(manifest))
    for name in ("tokenizer.json", "manifest.json"):  # the manifest last: now it is a dataset
        pafs.copy_files(
            str(meta / name),
            f"{base}/{name}",
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=fs,
        )
    return manifest


def _summaries(tables) -> list[dict]:
    """The work items' summaries in item order; the first bad input (in input order) raised."""
    rows = []
    with contextlib.closing(iter(tables)) as it:
        for t in it:
            for r in t.to_pylist():
                if r["error"] is not None:
                    raise row_error(r["error"])
                rows.append(r)
    return sorted(rows, key=lambda r: r["item"])


def _check_summaries(rows: list[dict], files: list[InputFile], cfg: PrepareConfig) -> None:
    per_file = np.zeros((len(files), 2), np.int64)  # bytes replaced, bytes read
    for r in rows:
        per_file[r["file"]] += (r["n_replaced"], r["n_bytes"])
    for f, (bad, total) in zip(files, per_file, strict=True):
        if total and bad / total > cfg.max_replaced_fraction:
            raise CorpusError(
                f"{f.uri}: {bad:,} of its {total:,} bytes ({bad / total:.1%}) are not UTF-8; is it "
                f"a binary file? Expected text (the limit is max_replaced_fraction="
                f"{cfg.max_replaced_fraction:g}; --set max_replaced_fraction=1 takes it as it is)"
            )
    if not any(r[f"documents_{s}"] for r in rows for s in SPLITS):
        raise CorpusError(
            f"{', '.join(f.uri for f in files[:3])}{' ...' if len(files) > 3 else ''}: "
            "the corpus holds no documents (empty or whitespace only)"
        )


def _assemble(out_uri: str, jobs: list, local: bool) -> list[str]:
    """Each shard made from its part files' byte ranges, by Ray tasks (or in this process);
    returns their sha256s in order."""
    if local:
        return [write_shard_task(out_uri, name, pieces) for name, pieces in jobs]
    import ray

    task = ray.remote(write_shard_task).options(num_cpus=1, max_retries=3)
    return ray.get([task.remote(out_uri, name, pieces) for name, pieces in jobs])


@contextlib.contextmanager
def _written(
    out: remote_store.Location, existing: dict | None, overwrite: bool
) -> Iterator[remote_store.Location]:
    """Where the new dataset is written, once room is made for it: beside a local output (a marked
    sibling, renamed into place when the block ends), or on object storage in place (its old
    dataset's files deleted first, the manifest first of all). If the block fails, what it
    wrote is deleted again."""
    if out.local is None:
        out.delete(_remote_leftovers(out, existing, overwrite), first="manifest.json")
        try:
            yield out
        except BaseException:
            _clear(out)
            raise
        return
    outdir.check_replaceable(out.local, "a prepared dataset", is_dataset, overwrite, CorpusError)
    outdir.check_writable(out.local)
    outdir.remove_orphans(out.local)
    tmp = outdir.sibling(out.local, "tmp")
    try:
        yield remote_store.Location.of(tmp)
        outdir.swap_into_place(tmp, out.local)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _clear(out: remote_store.Location) -> None:
    """After a failed run on object storage: what it wrote (and nothing else) deleted again,
    the manifest first."""
    names = [n for n in out.files() if n != remote_store.LEASE]  # the lease: its holder's
    if remote_store.only_these(names, _DATASET_FILES) is None:
        out.delete(names, first="manifest.json")


# What prepare writes under its output, and nothing else: a prefix that holds other files is
# never cleared. (shard-*.parquet: format 2's, replaced with --overwrite.)
_DATASET_FILES = (
    r"manifest\.json|tokenizer\.json|(train|val)/shard-\d{5}\.(bin|parquet)"
    r"|_work/item-\d{6}-(train|val)\.bin|" + re.escape(remote_store.LEASE)
)


def _remote_leftovers(out: remote_store.Location, existing: dict | None, overwrite: bool) -> list[str]:
    """The files under an object-storage output that the new dataset replaces: an older dataset
    (only with --overwrite), or what an interrupted prepare left (no manifest). A prefix that
    holds anything else is refused, --overwrite or not."""
    names = out.files()
    foreign = remote_store.only_these(names, _DATASET_FILES)
    if foreign is not None:
        raise CorpusError(
            f"{out}: holds {foreign}, which prepare did not write; it is never replaced, "
            "--overwrite or not: choose another prefix"
        )
    if existing is not None and not overwrite:
        raise CorpusError(
            f"{out}: already holds a different prepared dataset; pass --overwrite to replace it"
        )
    return [n for n in names if n != remote_store.LEASE]
