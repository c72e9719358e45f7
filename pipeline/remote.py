"""Directories on object storage (s3://, gs://, ...), where nothing can be renamed into place: a
directory is uploaded with one file last, whose presence says the rest is there (a dataset's
manifest.json, a checkpoint's trainer_state.json), and what a prefix held before is checked and
cleared by name, never wholesale."""
from __future__ import annotations

import json
import re
from pathlib import Path

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
