"""Reading an unlabeled corpus: inputs, formats, documents, normalisation.

Inputs are paths, globs, directories or URIs that pyarrow's filesystems read (s3://, gs://,
file://). Formats: plain text (a document per file, or documents separated by blank lines),
JSON Lines with a text field, Parquet with a text column, and gzip-compressed forms of each.

Uncompressed text and JSON Lines files are cut into byte ranges ("chunks") so that one large file
is read by many workers; a chunk owns the documents that start inside it, so the documents read
are the same whatever the chunk size.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import gzip
import hashlib
import json
import os
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from pipeline import remote
from pipeline.data.text import normalize
from pipeline.errors import UserError

FORMATS = ("text", "jsonl", "parquet")
_EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_BLOCK = 1 << 20


class CorpusError(UserError):
    """Bad input: reported as one line naming the file (and line), exit status 2."""


@dataclass(frozen=True)
class InputFile:
    uri: str  # what the user can recognise: a local path or a URI
    path: str  # the path inside its filesystem
    size: int
    format: str
    gz: bool
    mtime_ns: int | None = None  # as the filesystem reports it: with uri and size, what a re-run compares


@dataclass(frozen=True)
class ReadOptions:
    format: str = "auto"  # auto (by extension), text, jsonl or parquet
    text_split: str = "blank_line"  # text files: "blank_line" between documents, or "file"
    text_field: str = "text"  # JSON Lines field
    text_column: str = "text"  # Parquet column
    lowercase: bool = False


def filesystem(spec: str) -> tuple[pafs.FileSystem, str]:
    return remote.filesystem(spec, CorpusError)


def _format_of(name: str, forced: str) -> tuple[str, bool]:
    gz = name.endswith(".gz")
    base = name[:-3] if gz else name
    if forced != "auto":
        if forced not in FORMATS:
            raise CorpusError(f"format {forced!r}: expected auto or one of {', '.join(FORMATS)}")
        return forced, gz
    fmt = _EXTENSIONS.get(Path(base).suffix.lower())
    if fmt is None:
        raise CorpusError(
            f"{name}: cannot tell the format from the extension; expected one of "
            f"{', '.join(sorted(_EXTENSIONS))} (optionally .gz), or set format"
        )
    return fmt, gz


def _known(name: str) -> bool:
    return Path(name[:-3] if name.endswith(".gz") else name).suffix.lower() in _EXTENSIONS


def resolve_inputs(specs: list[str], forced_format: str = "auto") -> list[InputFile]:
    """Every file the specs name, in a deterministic order (spec order, then sorted paths)."""
    if not specs:
        raise CorpusError("no corpus given; expected one or more paths, globs, directories or URIs")
    files: list[InputFile] = []
    for spec in specs:
        fs, path = filesystem(spec)
        scheme = remote.scheme(spec)
        if any(c in path for c in "*?["):
            infos = _glob(fs, path, local=not scheme)
            if not infos:
                raise CorpusError(f"{spec}: the glob matches no files")
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise CorpusError(f"{spec}: no such file or directory")
            if info.type == pafs.FileType.Directory:
                infos = [
                    i
                    for i in (
                        fs.get_file_info(pafs.FileSelector(path, recursive=True))
                        if scheme
                        else [fs.get_file_info(p) for p in _walk_local(path)]
                    )
                    if i.type == pafs.FileType.File and not i.base_name.startswith(".")
                ]
                if forced_format == "auto":
                    # A directory's README, LICENSE or checksum file is not corpus: skipped, by
                    # name, on stderr. A file named on its own is refused instead (below).
                    unknown = [i for i in infos if not _known(i.base_name)]
                    for i in unknown:
                        print(
                            f"prepare: skipping {scheme}{i.path}: cannot tell its format from the extension "
                            f"(expected {', '.join(sorted(_EXTENSIONS))}, optionally .gz)",
                            file=sys.stderr,
                        )
                    infos = [i for i in infos if _known(i.base_name)]
                if not infos:
                    raise CorpusError(f"{spec}: the directory holds no corpus files")
            else:
                infos = [info]
        for i in sorted(infos, key=lambda i: i.path):
            fmt, gz = _format_of(i.base_name, forced_format)
            uri = (scheme + i.path) if scheme else i.path
            files.append(InputFile(uri, i.path, i.size, fmt, gz, i.mtime_ns))
    return files


def _walk_local(root: str) -> list[str]:
    """Every file under a local directory, each real file once: links to directories are followed
    once each (a link back up the tree would read it again and again), and a link that leads to
    a file already read, or nowhere (a loop, a missing target), is skipped, named on stderr."""
    seen_dirs, seen_files, out = set(), set(), []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            print(
                f"prepare: skipping {dirpath}: a link to a directory already read ({real})", file=sys.stderr
            )
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            _once(os.path.join(dirpath, name), seen_files, out)
    return out


def _once(path: str, seen: set, out: list) -> None:
    if not os.path.isfile(path):
        print(
            f"prepare: skipping {path}: a link that leads nowhere (a loop or a missing target)",
            file=sys.stderr,
        )
        return
    real = os.path.realpath(path)
    if real in seen:
        print(f"prepare: skipping {path}: a link to a file already read ({real})", file=sys.stderr)
        return
    seen.add(real)
    out.append(path)


def _glob(fs: pafs.FileSystem, pattern: str, local: bool) -> list[pafs.FileInfo]:
    if local:
        seen, paths = set(), []
        for p in sorted(glob.glob(pattern, recursive=True)):
            if not os.path.isdir(p):
                _once(p, seen, paths)
        return [fs.get_file_info(p) for p in paths]
    base = pattern[: min(pattern.find(c) for c in "*?[" if c in pattern)].rsplit("/", 1)[0]
    return [
        i
        for i in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, pattern)
    ]


def plan_chunks(files: list[InputFile], chunk_bytes: int, opts: ReadOptions) -> list[dict]:
    """Work items: byte ranges of uncompressed line-based files, whole files otherwise."""
    items = []
    for idx, f in enumerate(files):
        splittable = not f.gz and (
            f.format == "jsonl" or (f.format == "text" and opts.text_split == "blank_line")
        )
        starts = range(0, max(f.size, 1), chunk_bytes) if splittable else [0]
        for n, start in enumerate(starts):
            end = min(start + chunk_bytes, f.size) if splittable else None
            items.append({"file": idx, "chunk": n, "start": start, "end": -1 if end is None else end})
    return items


# --- documents -------------------------------------------------------------------------------


def decode(raw: bytes) -> tuple[str, int]:
    """UTF-8 text and the number of bytes that were not UTF-8 (each replaced by U+FFFD)."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="surrogateescape")
        bad = sum(1 for c in text if "\udc80" <= c <= "\udcff")
        return re.sub("[\udc80-\udcff]", "\ufffd", text), bad


def _lines(f, start: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for every line that starts at or after start; lines keep their newline.

    Reads in blocks, so a line of any length costs its own size and no more.
    """
    pos = max(start - 1, 0)
    if start > 0:
        f.seek(pos)
    skipping = start > 0  # the line holding byte start-1 belongs to the chunk before
    pieces: list[bytes] = []
    line_start = pos
    while True:
        data = f.read(_BLOCK)
        if not data:
            break
        nul = data.find(b"\0")
        if nul >= 0:
            raise _Binary(pos + nul)
        i = 0
        while True:
            j = data.find(b"\n", i)
            if j < 0:
                pieces.append(data[i:])
                break
            pieces.append(data[i : j + 1])
            if skipping:
                skipping = False
            else:
                yield line_start, b"".join(pieces)
            pieces = []
            line_start = pos + j + 1
            i = j + 1
        pos += len(data)
    tail = b"".join(pieces)
    if tail and not skipping:
        yield line_start, tail


class _Binary(Exception):
    def __init__(self, offset: int):
        self.offset = offset


_SPACE = b" \t\r\f\v"


def _empty(line: bytes) -> bool:
    """A blank line: nothing but whitespace."""
    return not line.strip(_SPACE + b"\n")


def _previous_line_empty(opener, p: int) -> bool:
    """Whether the line that ends just before offset p is blank (or p is the file's start).

    Scans backwards from p and stops at the first non-space byte or at the line's start, so it
    reads a few bytes in the usual case however long the line is.
    """
    if p == 0:
        return True
    with opener() as g:
        end = p - 1  # byte p-1 is the newline that ends the previous line
        while end > 0:
            start = max(end - 4096, 0)
            g.seek(start)
            block = g.read(end - start)
            for i in range(len(block) - 1, -1, -1):
                b = block[i : i + 1]
                if b == b"\n":
                    return True
                if b not in _SPACE:
                    return False
            end = start
    return True


def _blank_line_docs(f, opener, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """Documents separated by blank lines; a chunk owns those whose first line starts in it."""
    doc: list[bytes] = []
    doc_start = 0
    prev_empty = None
    for off, line in _lines(f, start):
        if prev_empty is None:
            prev_empty = _previous_line_empty(opener, off)
        if _empty(line):
            if doc:
                yield doc_start, _chomp(b"".join(doc))
                doc = []
            prev_empty = True
            continue
        if not doc:
            if not prev_empty:  # the tail of a document that an earlier chunk owns
                continue
            if end >= 0 and off >= end:
                return
            doc_start = off
        doc.append(line)
        prev_empty = False
    if doc:
        yield doc_start, _chomp(b"".join(doc))


def _chomp(raw: bytes) -> bytes:
    """A document's bytes without the line ending of its last line."""
    return raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw


def _line_number(opener, offset: int) -> int:
    with opener() as g:
        n, pos = 1, 0
        while pos < offset:
            data = g.read(min(_BLOCK, offset - pos))
            if not data:
                break
            n += data.count(b"\n")
            pos += len(data)
    return n


PIECE = 1 << 20  # an input's identity is the sha256 of the sha256s of its 1 MiB pieces


def input_digest(pieces: list[bytes]) -> str:
    """An input's sha256 over its pieces' sha256s, in order: the work items that read a file's byte
    ranges hash them as they read (no pass over the corpus beforehand), and the result is the same
    whatever the chunk size, since chunks are whole pieces."""
    return hashlib.sha256(b"".join(pieces)).hexdigest()


class _Hashed:
    """A stream that hashes the bytes of [start, end) passing through it, PIECE by PIECE, into
    pieces (a list of sha256 digests). Reads must be sequential; finish() reads what the reader
    left of the range."""

    def __init__(self, raw, start: int, end: int, pieces: list[bytes]):
        if start % PIECE:
            raise ValueError(f"a hashed range starts at {start}, not on a {PIECE}-byte piece")
        self.raw, self.pos, self.done, self.end, self.pieces = raw, 0, start, end, pieces
        self.h, self.in_piece = hashlib.sha256(), 0

    def seek(self, p: int, whence: int = 0) -> int:
        if whence or p > self.done:
            raise ValueError("a hashed stream seeks only backwards, before what it has hashed")
        self.pos = p
        return self.raw.seek(p)

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        lo = self.done - self.pos
        hi = len(data) if self.end < 0 else min(len(data), self.end - self.pos)
        if 0 <= lo < hi:
            self._take(memoryview(data)[lo:hi])
        self.pos += len(data)
        return data

    def _take(self, view) -> None:
        while len(view):
            k = min(PIECE - self.in_piece, len(view))
            self.h.update(view[:k])
            self.in_piece += k
            self.done += k
            view = view[k:]
            if self.in_piece == PIECE:
                self.pieces.append(self.h.digest())
                self.h, self.in_piece = hashlib.sha256(), 0

    def finish(self) -> None:
        while (self.end < 0 or self.done < self.end) and self.read(PIECE):
            pass
        if self.in_piece:
            self.pieces.append(self.h.digest())
            self.in_piece = 0

    def close(self) -> None:
        self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name):
        return getattr(self.raw, name)


def file_digest(f: InputFile) -> str:
    """input_digest of a whole file, read here in one pass (what the workers compute piece by
    piece as they read it)."""
    fs, _ = filesystem(f.uri)
    pieces: list[bytes] = []
    with fs.open_input_stream(f.path, compression=None) as raw:
        _Hashed(raw, 0, -1, pieces).finish()
    return input_digest(pieces)


def read_documents(
    f: InputFile, start: int, end: int, opts: ReadOptions, pieces: list[bytes] | None = None
) -> Iterator[tuple[int, str, int, int]]:
    """(offset, normalised text, raw UTF-8 bytes, bytes replaced) for each non-empty document that
    the chunk [start, end) owns. end = -1: to the end of the file.

    pieces: if a list, the sha256 of each PIECE of the file's bytes [start, end) is appended to it
    (once the documents are all read), from the same reads."""
    fs, _ = filesystem(f.uri)

    def raw_stream():
        return (
            fs.open_input_file(f.path)
            if start > 0 and not f.gz
            else fs.open_input_stream(f.path, compression=None)
        )

    def opener():  # seekable where a chunk starts inside the file (gzip always starts at 0)
        return gzip.open(raw_stream()) if f.gz else raw_stream()

    if f.format == "parquet":
        yield from _parquet_docs(fs, f, opts)
        if pieces is not None:
            with raw_stream() as s:
                _Hashed(s, 0, -1, pieces).finish()
        return
    hashed = _Hashed(raw_stream(), start, end, pieces) if pieces is not None else None
    main = (gzip.open(hashed) if f.gz else hashed) if hashed is not None else opener()  # noqa: SIM115 (closed below)
    # A gzip stream leaves the raw one it reads open: closed here too.
    with hashed if hashed is not None else contextlib.nullcontext(), main as stream:
        try:
            if f.format == "jsonl":
                for off, line in _lines(stream, start):
                    if end >= 0 and off >= end:
                        break
                    if not line.strip():
                        continue
                    text = _json_text(line, f, off, opener, opts.text_field)
                    raw = text.encode("utf-8", errors="surrogatepass")
                    yield off, normalize(text, opts.lowercase), len(raw), 0
                if hashed is not None:
                    hashed.finish()
                return
            if opts.text_split == "file":
                docs = [(0, _chomp(b"".join(line for _, line in _lines(stream, 0))))]
            elif opts.text_split == "blank_line":
                docs = _blank_line_docs(stream, opener, start, end)
            else:
                raise CorpusError(f"text_split {opts.text_split!r}: expected 'blank_line' or 'file'")
            for off, raw in docs:
                text, bad = decode(raw)
                yield off, normalize(text, opts.lowercase), len(raw), bad
            if hashed is not None:
                hashed.finish()
        except _Binary as b:
            raise CorpusError(
                f"{f.uri}: a NUL byte at offset {b.offset}; expected UTF-8 text, not a binary file"
            ) from None
        except (OSError, EOFError, zlib.error) as err:
            if f.gz and isinstance(err, (gzip.BadGzipFile, EOFError, zlib.error)):
                raise CorpusError(f"{f.uri}: not a valid gzip file ({err})") from None
            raise


def _json_text(line: bytes, f: InputFile, off: int, opener, field: str) -> str:
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorpusError(
            f"{f.uri}:{_line_number(opener, off)}: not valid JSON ({err.args[0] if err.args else err})"
        ) from None
    if not isinstance(obj, dict) or field not in obj:
        raise CorpusError(f"{f.uri}:{_line_number(opener, off)}: no field {field!r} in this JSON line")
    if not isinstance(obj[field], str):
        raise CorpusError(f"{f.uri}:{_line_number(opener, off)}: field {field!r} is not a string")
    return obj[field]


def _parquet_docs(fs, f: InputFile, opts: ReadOptions) -> Iterator[tuple[int, str, int, int]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        source = fs.open_input_file(f.path) if not f.gz else pa.BufferReader(_gunzipped(fs, f.path))
        pf = pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as err:
        raise CorpusError(f"{f.uri}: not a Parquet file ({str(err).splitlines()[0]})") from None
    names = pf.schema_arrow.names
    if opts.text_column not in names:
        raise CorpusError(f"{f.uri}: no column {opts.text_column!r} (columns: {', '.join(names)})")
    row = 0
    for batch in pf.iter_batches(columns=[opts.text_column], batch_size=1024):
        col = batch.column(0)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise CorpusError(f"{f.uri}: column {opts.text_column!r} is {col.type}, expected strings")
        for value in col.to_pylist():
            if value is not None:
                yield row, normalize(value, opts.lowercase), len(value.encode("utf-8")), 0
            row += 1


def _gunzipped(fs, path: str) -> bytes:
    """A gzipped file's bytes, its streams closed (Parquet wants the whole file to seek in)."""
    with fs.open_input_stream(path, compression=None) as raw, gzip.open(raw) as g:
        return g.read()
