"""Directories on object storage (s3://, gs://, ...), where nothing can be renamed into place: a
directory is uploaded with one file last, whose presence says the rest is there (a dataset's
manifest.json, a checkpoint's trainer_state.json), and what a prefix held before is checked and
cleared by name, never wholesale."""
from __future__ import annotations

import contextlib
import json
import re
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs


def is_remote(spec) -> bool:
    """A URI that pyarrow opens as a filesystem other than this machine's (file:// is local)."""
    s = str(spec)
    return "://" in s and not s.startswith("file://")


def local_path(spec) -> Path:
    return Path(str(spec).removeprefix("file://")).absolute()


def files_under(fs: pafs.FileSystem, base: str) -> list[str]:
    """Paths relative to base of every file under it (none where base does not exist)."""
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        return []
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    return sorted(i.path[len(base.rstrip("/")) + 1:] for i in fs.get_file_info(selector) if i.type == pafs.FileType.File)


def read_json(fs: pafs.FileSystem, path: str):
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def delete(fs: pafs.FileSystem, base: str, names: list[str], first: str | None = None) -> None:
    """Delete base/name for each name, `first` before the others: once it is gone, what is left
    is no longer taken for a complete directory."""
    for name in sorted(names, key=lambda n: n != first):
        try:
            fs.delete_file(f"{base}/{name}")
        except FileNotFoundError:
            pass


def upload(local: Path, fs: pafs.FileSystem, base: str, last: str) -> None:
    """Copy the files under local to base, `last` after all others. If a copy fails, what was
    copied is deleted again (best effort) and the error raised."""
    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.name == last, p.as_posix()))
    done: list[str] = []
    try:
        for f in files:
            name = f.relative_to(local).as_posix()
            fs.create_dir(f"{base}/{name}".rpartition("/")[0], recursive=True)
            pafs.copy_files(str(f), f"{base}/{name}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)
            done.append(name)
    except BaseException:
        delete(fs, base, done, first=last)
        raise


def only_these(names: list[str], pattern: str) -> str | None:
    """The first name that does not match pattern (a full match), or None."""
    rx = re.compile(pattern)
    return next((n for n in names if not rx.fullmatch(n)), None)


@contextlib.contextmanager
def fetched(spec, what: str) -> Iterator[Path]:
    """A local directory with what spec names: the directory itself, or, for a URI on object
    storage, a temporary copy of it, or of every file under it (deleted when the block ends). For
    inputs that one process reads whole, such as a sweep's checkpoint and task files or prepare's
    tokenizer; a dataset is staged per node instead (pipeline/data/stage.py)."""
    from pipeline.errors import ConfigError

    if not is_remote(spec):
        yield local_path(spec)
        return
    uri = str(spec).rstrip("/")
    try:
        fs, base = pafs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for unknown schemes
        raise ConfigError(f"{uri}: cannot open this URI ({str(err).splitlines()[0]})") from None
    one = fs.get_file_info(base).type == pafs.FileType.File  # a single file, a tokenizer.json say
    names = [""] if one else files_under(fs, base)
    if not names:
        raise ConfigError(f"{uri}: nothing there; expected {what}")
    with tempfile.TemporaryDirectory(prefix="gpt1-fetched-") as tmp:
        local = Path(tmp) / uri.rsplit("/", 1)[-1]
        for name in names:
            dest = local / name if name else local
            dest.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(f"{base}/{name}" if name else base, str(dest), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
        yield local
