"""Stage 1, prepare: an unlabeled corpus -> a tokenizer and packed, sharded, checksummed tokens.

    python pipeline/prepare.py --corpus PATH... --out DIR_OR_URI [--config YAML] [--set key=value ...]

Ray Data reads the inputs in byte-range chunks, normalises and tokenizes them in parallel; the
driver packs the ordered token stream into blocks of n_ctx + 1 and writes Parquet shards. The
output is the same, byte for byte, whatever the parallelism. A local directory is written under
a temporary name and renamed into place; on object storage (s3://...) the dataset is written
locally and uploaded with manifest.json last. Either way manifest.json comes last: a directory
without one is not a dataset.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from pipeline import configio, errors, outdir
from pipeline import remote as remote_store
from pipeline.data.corpus import CorpusError, InputFile, ReadOptions, filesystem, plan_chunks, read_documents, resolve_inputs
from pipeline.data.manifest import FORMAT_VERSION, Manifest, is_dataset, read_manifest, write_manifest
from pipeline.data.packing import Packer, token_dtype
from pipeline.runtime import ray_init
from pipeline.data.tokenizer import (END_OF_DOCUMENT, encode_texts, load_tokenizer, n_merges, save_tokenizer,
                                tokenizer_from_counts, tokenizer_sha256, word_counts)

MAX_PIECE_CHARS = 100_000  # longer documents are tokenized in pieces cut at whitespace


@dataclass
class PrepareConfig:
    format: str = "auto"  # auto (by extension), text, jsonl, parquet
    text_split: str = "blank_line"  # text: documents separated by empty lines, or one per "file"
    text_field: str = "text"  # JSON Lines field holding the text
    text_column: str = "text"  # Parquet column holding the text
    lowercase: bool = False  # GPT-1's own vocabulary lower-cases in its normaliser anyway
    tokenizer: str = "train"  # "train", or a tokenizer.json / released-vocabulary directory
    n_merges: int = 40000  # BPE merges when training, as in the paper
    n_ctx: int = 512
    val_fraction: float = 0.01  # of documents, chosen by a hash of (seed, file, offset)
    seed: int = 0
    shard_mb: int = 64  # Parquet shard size
    chunk_mb: int = 4  # byte range of a file that one task reads: small enough to balance the workers
    parallelism: int = 0  # tokenizing workers; 0 = one per CPU in the cluster
    batch_docs: int = 2048  # documents per encode_batch call and per table sent to the driver
    max_replaced_fraction: float = 0.01  # a file with a larger share of bytes that are not UTF-8 is refused


# Options that change how the work is spread, never the output: left out of the fingerprint.
_NOT_IN_FINGERPRINT = ("parallelism", "chunk_mb", "batch_docs", "max_replaced_fraction")


def file_sha256(f: InputFile) -> str:
    fs, _ = filesystem(f.uri)
    h = hashlib.sha256()
    with fs.open_input_stream(f.path, compression=None) as s:
        while chunk := s.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def is_val(seed: int, file_sha: str, offset: int, fraction: float) -> bool:
    """The split goes by document, from its identity alone: the same whatever the parallelism."""
    digest = hashlib.blake2b(f"{seed}:{file_sha}:{offset}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2 ** 64


class _Docs:
    """Shared by the Ray Data workers: the documents of one work item, with their split."""

    def __init__(self, files, shas, cfg: PrepareConfig, val_files: frozenset = frozenset()):
        self.files, self.shas, self.cfg, self.val_files = files, shas, cfg, val_files
        self.opts = ReadOptions(cfg.format, cfg.text_split, cfg.text_field, cfg.text_column, cfg.lowercase)

    def of(self, item):
        i = int(item["file"])
        for off, text, n_bytes, bad in read_documents(self.files[i], int(item["start"]), int(item["end"]), self.opts):
            # Held-out files, when given, are the val split; otherwise a hash picks documents.
            yield off, text, n_bytes, bad, (i in self.val_files if self.val_files else
                                            is_val(self.cfg.seed, self.shas[i], off, self.cfg.val_fraction))

    def __call__(self, batch):
        # A bad input found here travels to the driver as data, not as a task failure: Ray
        # would print the worker's traceback, and the user should see one line.
        try:
            for i in range(len(batch["file"])):
                yield from self.process({k: batch[k][i] for k in batch})
        except CorpusError as err:
            yield self.error(str(err))


# A bad input found while counting words travels as a "word" that text never holds (control
# characters are stripped from every document), through the same merge as the counts.
ERROR_MARK = "\x00"


class CountWords(_Docs):
    """Word counts of the training split's documents, for learning the tokenizer: a table per
    work item, merged by word before the driver sees them (a Ray Data groupby), so the driver
    receives each distinct word once and never the text."""

    def process(self, item):
        counts = word_counts((t for _, t, _, _, val in self.of(item) if t and not val), lowercase=True)
        if counts:
            yield {"word": np.array(list(counts), dtype=object),
                   "count": np.fromiter(counts.values(), dtype=np.int64, count=len(counts))}

    def error(self, message: str):
        return {"word": np.array([ERROR_MARK + message], dtype=object), "count": np.zeros(1, np.int64)}


class Tokenize(_Docs):
    """Documents -> token ids, in input order, a table per batch of documents."""

    def __init__(self, files, shas, cfg: PrepareConfig, val_files: frozenset, tokenizer_json: str):
        super().__init__(files, shas, cfg, val_files)
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_str(tokenizer_json)

    def process(self, item):
        docs = []
        for doc in self.of(item):
            docs.append(doc)
            if len(docs) >= self.cfg.batch_docs:
                yield self._encode(item["file"], docs)
                docs = []
        if docs:
            yield self._encode(item["file"], docs)

    def error(self, message: str) -> pa.Table:
        return self._table([-1], [(0, "", 0, 0, False)], [0, 0], np.empty(0, np.int32), [message])

    def _encode(self, file_idx, docs) -> pa.Table:
        pieces, owner = [], []
        for d, (_, text, *_rest) in enumerate(docs):
            for piece in _cut(text, MAX_PIECE_CHARS):
                pieces.append(piece)
                owner.append(d)
        arrays = [np.array(ids, dtype=np.int32) for ids in encode_texts(self.tok, pieces)]
        # Pieces are in document order, so their concatenation is the documents' concatenation.
        values = np.concatenate(arrays) if arrays else np.empty(0, np.int32)
        lengths = np.bincount(owner, weights=[len(a) for a in arrays], minlength=len(docs)).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        return self._table([int(file_idx)] * len(docs), docs, offsets, values, [None] * len(docs))

    @staticmethod
    def _table(files, docs, offsets, values, errors) -> pa.Table:
        return pa.table({
            "file": pa.array(files, pa.int32()),
            "offset": pa.array([d[0] for d in docs], pa.int64()),
            "n_bytes": pa.array([d[2] for d in docs], pa.int64()),
            "n_replaced": pa.array([d[3] for d in docs], pa.int64()),
            "val": pa.array([d[4] for d in docs], pa.bool_()),
            "tokens": pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(values, pa.int32())),
            "error": pa.array(errors, pa.string()),
        })


def _raise_worker_error(errors) -> None:
    message = next((e for e in errors if isinstance(e, str)), None)  # no error: None (or NaN)
    if message is not None:
        raise CorpusError(message)


def _cut(text: str, limit: int):
    """Pieces of at most limit characters, cut at whitespace where there is some, so that
    tokenizing the pieces gives the tokens of the whole (the pre-tokenizer splits there too)."""
    start = 0
    while len(text) - start > limit:
        cut = max(text.rfind(" ", start, start + limit), text.rfind("\n", start, start + limit))
        cut = cut if cut > start else start + limit
        yield text[start:cut]
        start = cut
    if start < len(text):
        yield text[start:]


def _fingerprint(cfg: PrepareConfig, shas: list[str], tokenizer_source: str, n_val_files: int) -> str:
    opts = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    opts["tokenizer"] = tokenizer_source
    inputs = {"inputs": shas, "val_inputs": n_val_files} if n_val_files else {"inputs": shas}
    blob = json.dumps({"format_version": FORMAT_VERSION, **inputs, "options": opts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def prepare(corpus: list[str], out, cfg: PrepareConfig, overwrite: bool = False, track: bool = True,
            val_corpus: list[str] | None = None, local: bool = False) -> dict:
    """Run the stage; returns the manifest. Raises CorpusError / ConfigError on bad input.

    val_corpus: held-out inputs that make up the val split (and val_fraction is not used).
    local: run the work items in this process instead of on Ray Data, for a machine without
    Ray (bench/gpu_check.py) and small corpora; the output is the same, byte for byte."""
    t0, cpu0 = time.time(), time.process_time()
    remote = remote_store.is_remote(out)
    if remote:  # object storage: written locally, then uploaded with manifest.json last
        fs, base = filesystem(str(out))
        out = str(out).rstrip("/")
    else:
        out = remote_store.local_path(out)
    _check(cfg)
    if track:  # the store is checked before the work, not after it
        from pipeline.tracking import check_store, tracking_uri
        check_store(tracking_uri())
    files = resolve_inputs(corpus, cfg.format)
    n_val = 0
    if val_corpus:
        val = resolve_inputs(val_corpus, cfg.format)
        files, n_val = files + val, len(val)
    val_files = frozenset(range(len(files) - n_val, len(files)))
    shas = [file_sha256(f) for f in files]
    if cfg.tokenizer == "train":
        tok, source = None, f"train:{cfg.n_merges}"
    else:
        tok = load_tokenizer(cfg.tokenizer)
        source = tokenizer_sha256(tok)
    fingerprint = _fingerprint(cfg, shas, source, n_val)
    existing = _remote_manifest(fs, base, out, overwrite) if remote else _local_manifest(out, overwrite)
    if existing is not None and existing.get("fingerprint") == fingerprint:
        print(f"{out} is up to date (same inputs and options): nothing to do")
        return existing
    if remote:
        stale = _remote_leftovers(fs, base, out, existing, overwrite)
    else:
        outdir.check_replaceable(out, "a prepared dataset", is_dataset, overwrite, CorpusError)
        outdir.check_writable(out)
        outdir.remove_orphans(out)

    items = plan_chunks(files, cfg.chunk_mb << 20, ReadOptions(cfg.format, cfg.text_split))
    common = dict(files=files, shas=shas, cfg=cfg, val_files=val_files)
    run_items = _in_process if local else _on_ray_data
    if tok is None:
        tok = tokenizer_from_counts(_word_counts(common, items, cfg, local), n_merges=cfg.n_merges)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    eod = tok.token_to_id(END_OF_DOCUMENT)
    tables = run_items(Tokenize, {**common, "tokenizer_json": tok.to_str()}, items, cfg)

    tmp = Path(tempfile.mkdtemp(prefix="gpt1-prepare-")) / "dataset" if remote else outdir.sibling(out, "tmp")
    try:
        manifest = _write(tmp, tables, tok, cfg, files, shas, fingerprint, vocab, eod, val_files)
        if remote:
            remote_store.delete(fs, base, stale, first="manifest.json")
            remote_store.upload(tmp, fs, base, last="manifest.json")
        else:
            outdir.swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp.parent if remote else tmp, ignore_errors=True)
        raise
    elapsed, cpu = time.time() - t0, time.process_time() - cpu0
    s = manifest["splits"]
    mb = sum(f.size for f in files) / 1e6
    print(f"prepared {out}: {s['train']['documents'] + s['val']['documents']:,} documents, "
          f"{s['train']['tokens'] + s['val']['tokens']:,} tokens ({s['train']['blocks']:,} train / "
          f"{s['val']['blocks']:,} val blocks of {cfg.n_ctx + 1}) from {mb:,.1f} MB in {elapsed:,.1f} s "
          f"({mb / elapsed:,.2f} MB/s); the driver used {cpu:,.1f} s of CPU ({cpu / elapsed:.0%} of one core)")
    if track:
        from pipeline.tracking import log_prepare
        log_prepare(out, cfg, manifest, files=tmp if remote else None)
    if remote:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return manifest


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
            raise CorpusError(f"{out}/manifest.json: not a readable manifest ({err}); the dataset is damaged: "
                              "prepare it again with --overwrite") from None
        return {}


# What prepare writes under its output, and nothing else: a prefix that holds other files is
# never cleared.
_DATASET_FILES = r"manifest\.json|tokenizer\.json|(train|val)/shard-\d{5}\.parquet"


def _remote_leftovers(fs, base: str, out: str, existing: dict | None, overwrite: bool) -> list[str]:
    """The files under an object-storage output that the new dataset replaces: an older dataset
    (only with --overwrite), or what an interrupted prepare left (no manifest). A prefix that
    holds anything else is refused, --overwrite or not."""
    names = remote_store.files_under(fs, base)
    foreign = remote_store.only_these(names, _DATASET_FILES)
    if foreign is not None:
        raise CorpusError(f"{out}: holds {foreign}, which prepare did not write; it is never replaced, "
                          "--overwrite or not: choose another prefix")
    if existing is not None and not overwrite:
        raise CorpusError(f"{out}: already holds a different prepared dataset; pass --overwrite to replace it")
    return names


def _on_ray_data(worker_cls, kwargs: dict, items: list[dict], cfg: PrepareConfig, merge=None):
    """worker_cls's output for every work item, in input order, from a pool of Ray Data actors
    (or, with merge, what merge makes of that Dataset)."""
    import ray

    ray_init()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the token stream follows the input order
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    workers = min(cfg.parallelism or max(int(ray.cluster_resources().get("CPU", 1)), 1), len(items))
    # Each worker tokenizes with one thread: the parallelism is Ray's, not tokenizers'.
    env = {"env_vars": {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}}
    out = ds.map_batches(worker_cls, batch_size=1, fn_constructor_kwargs=kwargs,
                         compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, runtime_env=env)
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
        batches = ({"word": b["word"], "sum(count)": b["count"]} for b in _in_process(CountWords, kwargs, items, cfg))
    else:
        batches = _on_ray_data(CountWords, kwargs, items, cfg, merge=lambda ds: ds.groupby("word").sum("count"))
    counts: Counter = Counter()
    with contextlib.closing(iter(batches)) as it:
        for b in it:
            for word, c in zip(b["word"], b["sum(count)"]):
                if word.startswith(ERROR_MARK):
                    raise CorpusError(word[len(ERROR_MARK):])
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


def _pack(tables, packers: dict, counts: dict, per_file: np.ndarray, eod: int) -> None:
    """Each table's documents, split by split, into the packers; counts and per-file bytes
    (replaced, read) added up as they go."""
    for table in tables:
        if table.column("error").null_count < table.num_rows:
            _raise_worker_error(table.column("error").to_pylist())
        col = table.column("tokens").combine_chunks()
        lengths = np.diff(col.offsets.to_numpy())
        values = col.values.to_numpy()
        val = table.column("val").to_numpy(zero_copy_only=False)
        n_bytes = table.column("n_bytes").to_numpy()
        n_replaced = table.column("n_replaced").to_numpy()
        file_of = table.column("file").to_numpy()
        np.add.at(per_file, (file_of, 0), n_replaced)
        np.add.at(per_file, (file_of, 1), n_bytes)
        # Vectorised over the table: each split's documents, joined by the end-of-document token.
        doc_of_token = np.repeat(np.arange(len(lengths)), lengths)
        for split, flag in (("train", False), ("val", True)):
            docs = (val == flag) & (lengths > 0)
            counts[split]["empty_documents"] += int(((val == flag) & (lengths == 0)).sum())
            if not docs.any():
                continue
            counts[split]["bytes"] += int(n_bytes[docs].sum())
            tokens_s = values[docs[doc_of_token]]
            ends = np.cumsum(lengths[docs])
            packers[split].add(np.insert(tokens_s, ends, eod), int(docs.sum()))


def _write(tmp: Path, tables, tok, cfg, files, shas, fingerprint, vocab, eod, val_files) -> dict:
    dtype = token_dtype(vocab)
    shard_blocks = max((cfg.shard_mb << 20) // (dtype.itemsize * (cfg.n_ctx + 1)), 1)
    packers = {}
    for split in ("train", "val"):
        (tmp / split).mkdir(parents=True)
        packers[split] = Packer(tmp / split, cfg.n_ctx, eod, dtype, shard_blocks)
    counts = {s: {"bytes": 0, "empty_documents": 0} for s in packers}
    per_file = np.zeros((len(files), 2), np.int64)  # bytes replaced, bytes read
    with contextlib.closing(iter(tables)) as it:
        _pack(it, packers, counts, per_file, eod)
    replaced = int(per_file[:, 0].sum())
    for f, (bad, total) in zip(files, per_file):
        if total and bad / total > cfg.max_replaced_fraction:
            raise CorpusError(f"{f.uri}: {bad:,} of its {total:,} bytes ({bad / total:.1%}) are not UTF-8; is it "
                              f"a binary file? Expected text (the limit is max_replaced_fraction="
                              f"{cfg.max_replaced_fraction:g}; --set max_replaced_fraction=1 takes it as it is)")
    if packers["train"].documents + packers["val"].documents == 0:
        raise CorpusError(f"{', '.join(f.uri for f in files[:3])}{' ...' if len(files) > 3 else ''}: "
                          "the corpus holds no documents (empty or whitespace only)")
    splits, shards = {}, {}
    for split, p in packers.items():
        left_over = p.close()
        splits[split] = {"documents": p.documents, "tokens": p.tokens, "bytes": counts[split]["bytes"],
                         "blocks": p.n_blocks, "tokens_not_in_a_block": left_over,
                         "empty_documents": counts[split]["empty_documents"]}
        shards.update({f"{split}/{name}": sha for name, sha in p.shards.items()})
    tok_sha = save_tokenizer(tok, tmp / "tokenizer.json")
    manifest: Manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "inputs": [{"uri": f.uri, "sha256": sha, "bytes": f.size, "format": f.format, "gzip": f.gz,
                    **({"split": "val" if i in val_files else "train"} if val_files else {})}
                   for i, (f, sha) in enumerate(zip(files, shas))],
        "options": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_FINGERPRINT},
        "tokenizer": {"sha256": tok_sha, "vocab_size": vocab, "n_merges": n_merges(tok),
                      "end_of_document": eod, "source": cfg.tokenizer},
        "n_ctx": cfg.n_ctx, "seed": cfg.seed, "dtype": str(np.dtype(token_dtype(vocab))),
        "splits": splits,
        "replaced_bytes": replaced,  # bytes that were not UTF-8, each replaced by U+FFFD
        "shards": shards,
    }
    write_manifest(tmp, manifest)
    return manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", nargs="+", required=True, metavar="PATH",
                   help="files, globs, directories or URIs (s3://, gs://, ...); .gz is read too")
    p.add_argument("--val-corpus", nargs="+", metavar="PATH",
                   help="held-out inputs that make up the val split (instead of val_fraction of the documents)")
    p.add_argument("--out", required=True, help="dataset directory to create, or an object-storage URI (s3://bucket/prefix)")
    p.add_argument("--config", help="YAML file of PrepareConfig keys")
    configio.add_set_option(p, PrepareConfig)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing, different dataset (a directory that is not a dataset is never replaced)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")


def run(args: argparse.Namespace) -> None:
    cfg = configio.load(PrepareConfig(), args.config, sets=args.set)
    prepare(args.corpus, args.out, cfg, overwrite=args.overwrite, track=not args.no_mlflow,
            val_corpus=args.val_corpus)


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("prepare", __doc__, add_arguments, run, argv)

