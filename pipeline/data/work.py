"""What the prepare workers run: a work item's documents read, split, counted or tokenized, and
its token streams written as part files; and the task that cuts the parts into shards.

Each runs on a Ray worker (pipeline/data/prepare.py is the driver that plans them, items.py schedules them)
or, without Ray, one after another in the driver's process. A bad input or a full disk found
here travels back as a row holding its one line, not as a task failure: Ray would print the
worker's traceback, and the user should see the line. `cfg` is the stage's PrepareConfig.
"""

from __future__ import annotations

import contextlib
import hashlib

import numpy as np
import pyarrow as pa

from pipeline import errors
from pipeline.data.corpus import CorpusError, ReadOptions, filesystem, read_documents
from pipeline.data.packing import SPLITS, to_bytes, write_shard
from pipeline.data.tokenizer import END_OF_DOCUMENT, encode_texts, word_counts

MAX_PIECE_CHARS = 100_000  # longer documents are tokenized in pieces cut at whitespace
# Characters handed to the tokenizer in one call: its per-token objects (Rust encodings, Python
# ints) cost ~100 bytes a token, so a call's memory is bounded by this, not by a document's length.
ENCODE_CHARS = 1 << 20
WORK = "_work"  # the part files, under the output until the shards are made from them


def is_val(seed: int, text: str, fraction: float) -> bool:
    """The split goes by document, from its text alone: the same whatever the parallelism, and a
    document that the corpus holds twice is never in both splits."""
    digest = hashlib.blake2b(
        text.encode("utf-8", errors="surrogatepass"), digest_size=8, key=str(seed).encode()
    ).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


class _Docs:
    """Shared by the Ray Data workers: the documents of one work item, with their split."""

    def __init__(self, files, cfg, val_files: frozenset = frozenset()):
        self.files, self.cfg, self.val_files = files, cfg, val_files
        self.opts = ReadOptions(cfg.format, cfg.text_split, cfg.text_field, cfg.text_column, cfg.lowercase)

    def of(self, item, pieces: list | None = None):
        i = int(item["file"])
        end = int(item["end"])
        for off, text, n_bytes, bad in read_documents(
            self.files[i], int(item["start"]), end, self.opts, pieces
        ):
            # Held-out files, when given, are the val split; otherwise a hash picks documents.
            yield (
                off,
                text,
                n_bytes,
                bad,
                (
                    i in self.val_files
                    if self.val_files
                    else is_val(self.cfg.seed, text, self.cfg.val_fraction)
                ),
            )

    def __call__(self, batch):
        # A bad input found here travels to the driver as data, not as a task failure: Ray
        # would print the worker's traceback, and the user should see one line.
        try:
            for i in range(len(batch["file"])):
                yield from self.process({k: batch[k][i] for k in batch})
        except CorpusError as err:
            yield self.error(str(err))
        except OSError as err:  # a full or read-only output, object storage failing: one line too
            line = errors.disk_error(err) or errors.storage_error(err)
            if line is None:
                raise
            yield self.error(
                (UNAVAILABLE_MARK if isinstance(line, errors.StorageUnavailable) else "") + str(line)
            )


# A bad input found while counting words travels as a "word" that text never holds (control
# characters are stripped from every document), through the same merge as the counts.
ERROR_MARK = "\x00"
# Before a row's error: object storage did not answer (exit status 1, not the input's fault).
UNAVAILABLE_MARK = "\x01"


def row_error(message: str) -> Exception:
    """The exception a worker's error row stands for."""
    if message.startswith(UNAVAILABLE_MARK):
        return errors.StorageUnavailable(message[len(UNAVAILABLE_MARK) :])
    return CorpusError(message)


class CountWords(_Docs):
    """Word counts of the training split's documents, for learning the tokenizer: a table per
    work item, merged by word before the driver sees them (a Ray Data groupby), so the driver
    receives each distinct word once and never the text."""

    def process(self, item):
        # Word by word from bounded pieces: a 50 MB line is never pre-tokenized whole.
        counts = word_counts(
            (p for _, t, _, _, val in self.of(item) if t and not val for p in _cut(t, MAX_PIECE_CHARS)),
            lowercase=True,
        )
        if counts:
            yield {
                "word": np.array(list(counts), dtype=object),
                "count": np.fromiter(counts.values(), dtype=np.int64, count=len(counts)),
            }

    def error(self, message: str):
        return {"word": np.array([ERROR_MARK + message], dtype=object), "count": np.zeros(1, np.int64)}


def part_name(item: int, split: str) -> str:
    return f"{WORK}/item-{item:06d}-{split}.bin"


# What a Tokenize worker tells the driver about its work item: counts and hashes, no tokens.
_SUMMARY = {
    "item": pa.int64(),
    "file": pa.int64(),
    "n_bytes": pa.int64(),
    "n_replaced": pa.int64(),
    "pieces": pa.binary(),
    "error": pa.string(),
    **{f"{k}_{s}": pa.int64() for s in SPLITS for k in ("tokens", "documents", "bytes", "empty")},
}


class Tokenize(_Docs):
    """A work item's documents -> token ids, written by this worker as the item's part files
    (each split's stream: documents in input order, each followed by the end-of-document token)."""

    def __init__(self, files, cfg, val_files: frozenset, tokenizer_json: str, out: str, dtype: str):
        super().__init__(files, cfg, val_files)
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(tokenizer_json)
        self.eod = self.tok.token_to_id(END_OF_DOCUMENT)
        self.dtype = np.dtype(dtype)
        self.fs, self.base = filesystem(out)

    def process(self, item):
        idx = int(item["item"])
        row = {k: 0 for k in _SUMMARY}
        pieces: list[bytes] = []
        with contextlib.ExitStack() as files:
            parts = {s: None for s in SPLITS}

            def write(split: str, tokens: np.ndarray) -> None:
                path = f"{self.base}/{part_name(idx, split)}"
                with errors.naming(path):
                    if parts[split] is None:
                        self.fs.create_dir(path.rpartition("/")[0], recursive=True)
                        parts[split] = files.enter_context(self.fs.open_output_stream(path))
                    parts[split].write(to_bytes(tokens, self.dtype))

            docs = []
            for doc in self.of(item, pieces):
                docs.append(doc)
                if len(docs) >= self.cfg.batch_docs:
                    self._encode(docs, row, write)
                    docs = []
            if docs:
                self._encode(docs, row, write)
        row.update(item=idx, file=int(item["file"]), pieces=b"".join(pieces), error=None)
        yield pa.table({k: pa.array([row[k]], t) for k, t in _SUMMARY.items()})

    def error(self, message: str) -> pa.Table:
        row = {k: None for k in _SUMMARY}
        row["error"] = message
        return pa.table({k: pa.array([row[k]], t) for k, t in _SUMMARY.items()})

    def _encode(self, docs, row: dict, write) -> None:
        arrays, owner, group, size = [], [], [], 0

        def encode_group():
            # Each call's ids become compact arrays at once: memory follows ENCODE_CHARS.
            arrays.extend(np.array(ids, dtype=np.int32) for ids in encode_texts(self.tok, group))
            group.clear()

        for d, (_, text, *_rest) in enumerate(docs):
            for piece in _cut(text, MAX_PIECE_CHARS):
                if size + len(piece) > ENCODE_CHARS and group:
                    encode_group()
                    size = 0
                group.append(piece)
                owner.append(d)
                size += len(piece)
        if group:
            encode_group()
        # Pieces are in document order, so their concatenation is the documents' concatenation.
        values = np.concatenate(arrays) if arrays else np.empty(0, np.int32)
        lengths = np.bincount(owner, weights=[len(a) for a in arrays], minlength=len(docs)).astype(np.int64)
        val = np.array([d[4] for d in docs], bool)
        n_bytes = np.array([d[2] for d in docs], np.int64)
        row["n_bytes"] += int(n_bytes.sum())
        row["n_replaced"] += sum(d[3] for d in docs)
        doc_of_token = np.repeat(np.arange(len(docs)), lengths)
        for split, flag in (("train", False), ("val", True)):
            row[f"empty_{split}"] += int(((val == flag) & (lengths == 0)).sum())
            mine = (val == flag) & (lengths > 0)
            if not mine.any():
                continue
            # Vectorised over the batch: the split's documents, each followed by the end-of-document token.
            stream = np.insert(values[mine[doc_of_token]], np.cumsum(lengths[mine]), self.eod)
            write(split, stream)
            row[f"tokens_{split}"] += len(stream)
            row[f"documents_{split}"] += int(mine.sum())
            row[f"bytes_{split}"] += int(n_bytes[mine].sum())


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


def write_shard_task(out_uri: str, name: str, pieces: list[tuple[str, int, int]]) -> str:
    fs, base = filesystem(out_uri)
    with errors.naming(f"{base}/{name}"):
        fs.create_dir(f"{base}/{name}".rpartition("/")[0], recursive=True)
        return write_shard(fs, f"{base}/{name}", [(f"{base}/{p}", at, n) for p, at, n in pieces])
