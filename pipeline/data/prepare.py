"""Stage 1, prepare: an unlabeled corpus -> a tokenizer and token shards read by offset.

    gpt1 prepare --corpus PATH_OR_URI... --out DIR_OR_URI [--config YAML] [--set key=value ...]
    python pipeline/prepare.py ...     the same options, as a `ray job submit` entrypoint

The driver coordinates; the workers read and write. Ray Data workers read the inputs in byte-range
chunks (hashing them as they read), normalise and tokenize them, and each writes its work item's
token stream, split by split, as a part file under the output; the driver receives only counts,
lengths and hashes. Ray tasks then cut the parts into the dataset's shards, each assembled from
the byte ranges it covers and hashed as it is written (pipeline/data/packing.py). The driver
writes tokenizer.json and, last, manifest.json: a directory or prefix without one is not a
dataset. The output is the same, byte for byte, whatever the parallelism and the chunk size.

What the workers run is pipeline/data/work.py; this module plans, schedules and commits.

The output is a local directory (written under a temporary name and renamed into place) or any
pyarrow filesystem URI (s3://, gs://, file://), written in place with the manifest last; a re-run
clears what an interrupted one left there.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from pipeline import cluster, configio, console, errors, outdir
from pipeline import remote as remote_store
from pipeline.data.corpus import (
    CorpusError,
    InputFile,
    ReadOptions,
    file_digest,
    filesystem,
    input_digest,
    plan_chunks,
    resolve_inputs,
)
from pipeline.data.manifest import FORMAT_VERSION, Manifest, is_dataset, manifest_json, read_manifest
from pipeline.data.packing import n_blocks, plan_shards, shard_name, token_dtype
from pipeline.data.tokenizer import (
    END_OF_DOCUMENT,
    load_tokenizer,
    n_merges,
    tokenizer_from_counts,
    tokenizer_sha256,
)
from pipeline.data.work import (
    ERROR_MARK,
    SPLITS,
    WORK,
    CountWords,
    Tokenize,
    part_name,
    row_error,
    write_shard_task,
)
from pipeline.runtime import add_wait_option, check_wait, ray_init


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


# Options that change how the work is spread, never the output: left out of the fingerprint.
_NOT_IN_FINGERPRINT = ("parallelism", "chunk_mb", "batch_docs", "max_replaced_fraction")


def _options(cfg: PrepareConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_FINGERPRINT}


def _key(inputs: list, cfg: PrepareConfig, tokenizer_source: str, n_val_files: int) -> str:
    blob = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "inputs": inputs,
            "val_inputs": n_val_files,
            "options": _options(cfg),
            "tokenizer": tokenizer_source,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


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
    remote = remote_store.is_remote(out)
    if remote:  # object storage: written in place, manifest.json last
        fs, base = filesystem(str(out))
        out = str(out).rstrip("/")
    else:
        out = remote_store.local_path(out)
    _check(cfg)
    check_wait(wait_minutes)
    files = resolve_inputs(corpus, cfg.format)  # first: a missing file is refused without MLflow's start-up
    n_val = 0
    if val_corpus:
        val = resolve_inputs(val_corpus, cfg.format)
        files, n_val = files + val, len(val)
    if track:  # the store is checked before the work, not after it
        from pipeline.tracking import check_store, tracking_uri

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
    source_key = _key([[f.uri, f.size, f.mtime_ns] for f in files], cfg, source, n_val)
    # One prepare of an output at a time: a second is refused while the first lives, so that it
    # never replaces (or mixes into) the first's dataset.
    with remote_store.lease(fs, base, out, "prepare") if remote else outdir.writer_lock(out, "prepare"):
        existing = _remote_manifest(fs, base, out, overwrite) if remote else _local_manifest(out, overwrite)
        if existing is not None and (
            existing.get("source_key") == source_key or _same_contents(existing, files, cfg, source, n_val)
        ):
            print(f"{out} is up to date (same inputs and options): nothing to do")
            return existing
        if remote:
            remote_store.delete(
                fs, base, _remote_leftovers(fs, base, out, existing, overwrite), first="manifest.json"
            )
        else:
            outdir.check_replaceable(out, "a prepared dataset", is_dataset, overwrite, CorpusError)
            outdir.check_writable(out)
            outdir.remove_orphans(out)
            tmp = outdir.sibling(out, "tmp")
            fs, base = pafs.LocalFileSystem(), str(tmp)
        if not local:  # on a cluster whose head takes no work, the first CPU node
            ray_init()
            cluster.wait_for("CPU", 1, 1, "prepare's workers", wait_minutes)
        meta = Path(tempfile.mkdtemp(prefix="gpt1-prepare-"))  # manifest and tokenizer, also for MLflow
        try:
            manifest = _work(
                files, cfg, val_files, tok, source, source_key, fs, base, out if remote else base, local, meta
            )
            if not remote:
                outdir.swap_into_place(tmp, out)
        except BaseException:
            if remote:
                _clear(fs, base)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
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
            from pipeline.tracking import log_prepare

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
    return existing.get("fingerprint") == _key([file_digest(f) for f in files], cfg, source, n_val)


def _work(files, cfg, val_files, tok, source, source_key, fs, base, out_uri, local, meta: Path) -> Manifest:
    """The dataset's files under base: the tokenizer (learned first, where asked), the part
    files, the shards, then the manifest."""
    items = [
        {"item": i, **it}
        for i, it in enumerate(
            plan_chunks(files, cfg.chunk_mb << 20, ReadOptions(cfg.format, cfg.text_split))
        )
    ]
    common = dict(files=files, cfg=cfg, val_files=val_files)
    if tok is None:
        tok = tokenizer_from_counts(_word_counts(common, items, cfg, local), n_merges=cfg.n_merges)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab)
    tok_text = tok.to_str()
    run_items = _in_process if local else _on_ray_data
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
    (meta / "tokenizer.json").write_text(tok_text, encoding="utf-8")
    manifest: Manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": _key([i["sha256_pieces"] for i in inputs], cfg, source, len(val_files)),
        "source_key": source_key,
        "inputs": inputs,
        "options": _options(cfg),
        "tokenizer": {
            "sha256": hashlib.sha256(tok_text.encode("utf-8")).hexdigest(),
            "vocab_size": vocab,
            "n_merges": n_merges(tok),
            "end_of_document": tok.token_to_id(END_OF_DOCUMENT),
            "source": cfg.tokenizer,
        },
        "n_ctx": cfg.n_ctx,
        "seed": cfg.seed,
        "dtype": str(dtype),
        "shard_tokens": shard_tokens,
        "splits": splits,
        "replaced_bytes": sum(
            r["n_replaced"] for r in rows
        ),  # bytes that were not UTF-8, each replaced by U+FFFD
        "shards": {
            name: {"tokens": sum(n for _, _, n in pieces) // dtype.itemsize, "sha256": sha}
            for (name, pieces), sha in zip(jobs, shas)
        },
    }
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
    for f, (bad, total) in zip(files, per_file):
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


def _clear(fs, base: str) -> None:
    """After a failed run on object storage: what it wrote (and nothing else) deleted again,
    the manifest first."""
    names = [
        n for n in remote_store.files_under(fs, base) if n != remote_store.LEASE
    ]  # the lease: its holder's
    if remote_store.only_these(names, _DATASET_FILES) is None:
        remote_store.delete(fs, base, names, first="manifest.json")


def _local_manifest(out: Path, overwrite: bool) -> dict | None:
    """The manifest of the dataset at out, None if there is none; a damaged one is an error,
    unless --overwrite is to replace it anyway."""
    if not (out / "manifest.json").exists():
        return None
    try:
        return read_manifest(out)
    except CorpusError:
        if not overwrite:
            raise
        return {}


def _remote_manifest(fs, base: str, out: str, overwrite: bool) -> dict | None:
    """The same for a dataset on object storage."""
    if fs.get_file_info(f"{base}/manifest.json").type != pafs.FileType.File:
        return None
    try:
        manifest = remote_store.read_json(fs, f"{base}/manifest.json")
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        return manifest
    except (ValueError, UnicodeDecodeError) as err:
        if not overwrite:
            raise CorpusError(
                f"{out}/manifest.json: not a readable manifest ({err}); the dataset is damaged: "
                "prepare it again with --overwrite"
            ) from None
        return {}


# What prepare writes under its output, and nothing else: a prefix that holds other files is
# never cleared. (shard-*.parquet: format 2's, replaced with --overwrite.)
_DATASET_FILES = (
    r"manifest\.json|tokenizer\.json|(train|val)/shard-\d{5}\.(bin|parquet)"
    r"|_work/item-\d{6}-(train|val)\.bin|" + re.escape(remote_store.LEASE)
)


def _remote_leftovers(fs, base: str, out: str, existing: dict | None, overwrite: bool) -> list[str]:
    """The files under an object-storage output that the new dataset replaces: an older dataset
    (only with --overwrite), or what an interrupted prepare left (no manifest). A prefix that
    holds anything else is refused, --overwrite or not."""
    names = remote_store.files_under(fs, base)
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


def _on_ray_data(worker_cls, kwargs: dict, items: list[dict], cfg: PrepareConfig, merge=None):
    """worker_cls's output for every work item, in input order, from a pool of Ray Data actors
    (or, with merge, what merge makes of that Dataset)."""
    import ray

    ray_init()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    if cfg.parallelism or not cluster.can_grow():
        # A pool of fixed size. More workers than CPUs, where asked for, share them.
        workers = min(cfg.parallelism or cpus, len(items))
        pool, num_cpus = ray.data.ActorPoolStrategy(size=workers), min(1.0, cpus / workers)
    else:
        # A pool that grows with the cluster: Ray Data adds workers while work waits, and the
        # autoscaler adds CPU nodes for them.
        pool, num_cpus = ray.data.ActorPoolStrategy(min_size=1, max_size=len(items)), 1.0
    # Each worker tokenizes with one thread: the parallelism is Ray's, not tokenizers'.
    env = {"env_vars": {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}}
    out = ds.map_batches(
        worker_cls,
        batch_size=1,
        fn_constructor_kwargs=kwargs,
        num_cpus=num_cpus,
        compute=pool,
        runtime_env=env,
    )
    if merge is not None:
        out = merge(out)
    fmt = "pyarrow" if worker_cls is Tokenize else "numpy"
    # Closed on the way out, also when a bad input or a full disk stops the reader: Ray Data then
    # shuts its executor down now, not later in a background thread of another command.
    with contextlib.closing(iter(out.iter_batches(batch_size=None, batch_format=fmt))) as batches:
        yield from batches


def _word_counts(kwargs: dict, items: list[dict], cfg: PrepareConfig, local: bool) -> Counter:
    """Each distinct word of the training split with its count over the whole corpus. On Ray,
    the work items' tables are merged by a groupby across the cluster; the driver receives the
    merged table only."""
    if local:
        batches = (
            {"word": b["word"], "sum(count)": b["count"]} for b in _in_process(CountWords, kwargs, items, cfg)
        )
    else:
        batches = _on_ray_data(
            CountWords, kwargs, items, cfg, merge=lambda ds: ds.groupby("word").sum("count")
        )
    counts: Counter = Counter()
    with contextlib.closing(iter(batches)) as it:
        for b in it:
            for word, c in zip(b["word"], b["sum(count)"]):
                if word.startswith(ERROR_MARK):
                    raise row_error(word[len(ERROR_MARK) :])
                counts[word] += int(c)
    return counts


def _in_process(worker_cls, kwargs: dict, items: list[dict], cfg: PrepareConfig):
    """The same, one work item after another in this process: no Ray."""
    work = worker_cls(**kwargs)
    for item in items:
        yield from work({k: [v] for k, v in item.items()})


def _check(cfg: PrepareConfig) -> None:
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise errors.ConfigError(f"val_fraction {cfg.val_fraction}: expected 0 <= val_fraction < 1")
    if cfg.n_ctx < 1 or cfg.shard_mb < 1 or cfg.chunk_mb < 1 or cfg.n_merges < 0:
        raise errors.ConfigError("n_ctx, shard_mb and chunk_mb must be positive, n_merges >= 0")
    configio.check_ranges(cfg, {"max_replaced_fraction": (0.0, 1.0)})
    if cfg.text_split not in ("blank_line", "file"):
        raise errors.ConfigError(f"text_split {cfg.text_split!r}: expected 'blank_line' or 'file'")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus",
        nargs="+",
        required=True,
        metavar="PATH",
        help="files, globs, directories or URIs (s3://, gs://, ...); .gz is read too",
    )
    p.add_argument(
        "--val-corpus",
        nargs="+",
        metavar="PATH",
        help="held-out inputs that make up the val split (instead of val_fraction of the documents)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="dataset directory to create, or an object-storage URI (s3://bucket/prefix)",
    )
    p.add_argument("--config", help="YAML file of PrepareConfig keys")
    configio.add_set_option(p, PrepareConfig, seed="which documents are held out as val")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing, different dataset (a directory that is not a dataset is never replaced)",
    )
    add_wait_option(p)
    p.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")


def run(args: argparse.Namespace) -> None:
    cfg = configio.load(PrepareConfig(), args.config, sets=args.set)
    if args.print_config:
        print(configio.dump(cfg), end="")
        return
    prepare(
        args.corpus,
        args.out,
        cfg,
        overwrite=args.overwrite,
        track=not args.no_mlflow,
        val_corpus=args.val_corpus,
        wait_minutes=args.wait_minutes,
    )


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("prepare", __doc__, add_arguments, run, argv)
