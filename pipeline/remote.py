"""Where files live: a path on this machine or a URI on object storage (s3://, gs://, ...), as one
type, Location, so that a caller joins, reads, lists, locks and publishes without asking which it
is. This module alone decides which it is.

On object storage nothing can be renamed into place: a directory is uploaded with one file last,
whose presence says the rest is there (a dataset's manifest.json, a checkpoint's
trainer_state.json), and what a prefix held before is checked and cleared by name, never
wholesale. A local directory is written beside its place and renamed into it (pipeline/outdir.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pyarrow.fs as pafs

from pipeline import outdir
from pipeline.errors import ConfigError, StorageUnavailable, UserError, classified


def is_remote(spec) -> bool:
    """A URI that pyarrow opens as a filesystem other than this machine's (file:// is local)."""
    s = str(spec)
    return "://" in s and not s.startswith("file://")


def local_path(spec) -> Path:
    """A local path or file:// URI as an absolute path."""
    return Path(os.path.abspath(str(spec).removeprefix("file://")))


def filesystem(spec, error: type[Exception] | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path that spec names: this machine's for a path or a file://
    URI (made absolute), else the one its URI's scheme opens. A URI pyarrow cannot open is one
    line (error, a UserError by default)."""
    if not is_remote(spec):
        return pafs.LocalFileSystem(), str(local_path(spec))
    try:
        return pafs.FileSystem.from_uri(str(spec))
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for unknown schemes
        raise (error or UserError)(f"{spec}: cannot open this URI ({str(err).splitlines()[0]})") from None


def scheme(spec) -> str:
    """What goes before a path to make it spec's kind again: 's3://' for s3://..., '' if local."""
    return str(spec).split("://", 1)[0] + "://" if is_remote(spec) else ""


@dataclass(frozen=True)
class Location:
    """A file or directory: an absolute path on this machine, or a URI on object storage (no
    trailing slash). Location.of takes what a user typed (a relative path, file://, s3://...).
    `error` is the UserError subclass a URI that cannot be opened raises."""

    uri: str
    error: type[Exception] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, spec: str | Path | Location, error: type[Exception] | None = None) -> Location:
        if isinstance(spec, Location):
            return spec
        s = str(spec)
        return cls(s.rstrip("/") if is_remote(s) else str(local_path(s)), error)

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, name: str) -> Location:
        return Location(f"{self.uri}/{name}", self.error)

    @property
    def local(self) -> Path | None:
        """Where it is on this machine; None for object storage, whose files are read through fs."""
        return None if "://" in self.uri else Path(self.uri)

    @cached_property
    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return filesystem(self.uri, self.error)

    @property
    def fs(self) -> pafs.FileSystem:
        return self._fs[0]

    @property
    def path(self) -> str:
        """Its path on fs (for object storage: bucket/key, without the scheme)."""
        return self._fs[1]

    def of_path(self, path: str) -> str:
        """A path on fs under it (a listing's, or Ray's, which drops the scheme) as a URI again."""
        return scheme(self.uri) + path.split("://", 1)[-1]

    def kind(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self.kind() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.kind() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.kind() == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def files(self) -> list[str]:
        """Paths relative to it of every file under it (none where it does not exist)."""
        return files_under(self.fs, self.path)

    def delete(self, names: list[str], first: str | None = None) -> None:
        """Delete each name under it, `first` before the others (see delete)."""
        delete(self.fs, self.path, names, first)

    def hold(self, what: str) -> contextlib.AbstractContextManager:
        """One writer (a `what`: "prepare", ...) at a time while the block runs; a second is refused
        in one line. Locally an flock (a killed writer leaves nothing stuck); on object storage,
        which has none, a lease: by conditional writes on S3 (s3_lease), else lease."""
        if self.local is None:
            if scheme(self.uri) == "s3://":
                return s3_lease(self.uri, what)
            return lease(self.fs, self.path, self.uri, what)
        return outdir.writer_lock(self.local, what)

    @contextlib.contextmanager
    def writing(self, tag: str) -> Iterator[Path]:
        """A local path at which to write the file it names, put in its place when the block ends
        without an error: from a marked directory beside it (one a killed writer leaves is
        removed by the next, outdir.remove_orphans), or, for object storage, uploaded whole from a
        temporary directory. A block that fails leaves nothing at the location."""
        if self.local is None:
            with tempfile.TemporaryDirectory(prefix=f"gpt1-{tag}-") as tmp:
                yield Path(tmp) / "out"
                pafs.copy_files(
                    str(Path(tmp) / "out"),
                    self.path,
                    source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=self.fs,
                )
            return
        staging = outdir.sibling(self.local, tag)
        try:
            yield staging / "out"
            os.replace(staging / "out", self.local)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def fetched(self, what: str) -> contextlib.AbstractContextManager[Path]:
        """A local directory (or file) with what it holds (see fetched)."""
        return fetched(self.uri, what)


def inside(root: Path, name: str, source: str) -> Path:
    """root/name, where name is someone else's text (an object's key, a name in a manifest):
    refused unless it resolves to a path under root, so that '..', an absolute name or a link
    never carries a write out of the directory it is meant for."""
    root = Path(root).resolve()
    dest = (root / name).resolve()
    if root not in dest.parents:
        raise UserError(
            f"{source}: the name {name!r} leads outside the directory it is copied to; "
            "refusing it (is the prefix or manifest someone else's?)"
        )
    return dest


def files_under(fs: pafs.FileSystem, base: str) -> list[str]:
    """Paths relative to base of every file under it (none where base does not exist)."""
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        return []
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    return sorted(
        i.path[len(base.rstrip("/")) + 1 :]
        for i in fs.get_file_info(selector)
        if i.type == pafs.FileType.File
    )


def read_json(fs: pafs.FileSystem, path: str):
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def delete(fs: pafs.FileSystem, base: str, names: list[str], first: str | None = None) -> None:
    """Delete base/name for each name, `first` before the others: once it is gone, what is left
    is no longer taken for a complete directory."""
    for name in sorted(names, key=lambda n: n != first):
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(f"{base}/{name}")


def upload(local: Path, fs: pafs.FileSystem, base: str, last: str) -> None:
    """Copy the files under local to base, `last` after all others (a staging directory's marker
    file is not copied). If a copy fails, what was copied is deleted again (best effort) and the
    error raised."""
    files = sorted(
        (p for p in local.rglob("*") if p.is_file() and p.name != outdir.MARKER_FILE),
        key=lambda p: (p.name == last, p.as_posix()),
    )
    done: list[str] = []
    try:
        for f in files:
            name = f.relative_to(local).as_posix()
            fs.create_dir(f"{base}/{name}".rpartition("/")[0], recursive=True)
            pafs.copy_files(
                str(f), f"{base}/{name}", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
            )
            done.append(name)
    except BaseException:
        delete(fs, base, done, first=last)
        raise


LEASE = "_lease.json"


def _holds(other, me: dict, ttl: float) -> bool:
    """Whether the lease `other` (as read) is another writer's that still holds: a live process of
    this machine, or another machine's renewed within ttl seconds."""
    if not isinstance(other, dict) or other.get("token") == me["token"]:
        return False
    here = other.get("host") == me["host"] and isinstance(other.get("pid"), int)
    if here:
        return outdir.alive(other["pid"])
    return time.time() - float(other.get("time", 0)) < ttl


def _refusal(other: dict, uri: str, what: str, ttl: float) -> UserError:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(other.get("time", 0))))
    return UserError(
        f"{uri}: another {what} is writing here (pid {other.get('pid')} on "
        f"{other.get('host')}, lease renewed {since}); wait for it to end (a lease not renewed "
        f"for {ttl:.0f} s is taken over), or choose another prefix"
    )


@contextlib.contextmanager
def _renewing(renew, ttl: float) -> Iterator[None]:
    """renew() every ttl/4 seconds in a thread while the block runs."""
    stop = threading.Event()

    def loop():
        while not stop.wait(ttl / 4):
            with contextlib.suppress(OSError):
                renew()

    renewer = threading.Thread(target=loop, name="gpt1-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()


@contextlib.contextmanager
def lease(fs: pafs.FileSystem, base: str, uri: str, what: str, ttl: float = 120.0) -> Iterator[None]:
    """Hold the prefix base for one writer while the block runs, where the store has no
    conditional write (on S3, s3_lease): an object base/_lease.json with the writer's host, pid, a
    random token and the time, written again every ttl/4 seconds. A second writer is refused
    while the lease is fresh (younger than ttl) or its writer is a live process of this machine;
    a lease its writer stopped renewing (killed, machine lost) is taken over. Two writers that
    start at the same moment both write theirs, wait, and read it back: the one whose token is
    not there steps back."""
    path = f"{base}/{LEASE}"
    me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}

    def held_by() -> dict | None:
        for _ in range(5):
            try:
                other = read_json(fs, path)
                break
            except FileNotFoundError:
                return None
            except (ValueError, UnicodeDecodeError, OSError):
                # Being written this moment (a local file is read while another writer fills it),
                # or cut off mid-write by a writer that died: read again before calling it nobody's.
                time.sleep(0.1)
        else:
            return None
        return other if _holds(other, me, ttl) else None

    def write():
        body = json.dumps({**me, "time": time.time()}).encode()
        if not isinstance(fs, pafs.LocalFileSystem):
            with fs.open_output_stream(path) as f:  # an object store's put replaces the object whole
                f.write(body)
            return
        # Two writers that open one local file at once interleave their bytes, and a torn lease
        # reads as nobody's, so both went on. Written beside it and renamed over it, a lease is
        # always one writer's whole (a rename replaces atomically).
        tmp = f"{path}.{me['token']}"
        try:
            with fs.open_output_stream(tmp) as f:
                f.write(body)
            fs.move(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(tmp)

    if (other := held_by()) is not None:
        raise _refusal(other, uri, what, ttl)
    write()
    time.sleep(min(1.0, ttl / 10))  # a writer that started at the same moment has written its own by now
    if (other := held_by()) is not None:
        raise _refusal(other, uri, what, ttl)
    try:
        with _renewing(write, ttl):
            yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if read_json(fs, path).get("token") == me["token"]:
                fs.delete_file(path)


# What S3 answers a conditional write that lost: the condition failed (412), or another
# conditional write to the key was in flight (409).
_LOST = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


@contextlib.contextmanager
def s3_lease(uri: str, what: str, ttl: float = 120.0) -> Iterator[None]:
    """lease's contract on S3, made safe by conditional writes (AWS S3 and moto honour them;
    pyarrow cannot send them, boto3 can): the lease object is created with If-None-Match: *,
    so of two writers exactly one creates it; a stale one (see _holds) is taken over with
    If-Match on the ETag read, so of two that find it stale exactly one replaces it; renewed
    and deleted with If-Match on the holder's own ETag, so a writer that was taken over from
    never overwrites or deletes its successor's."""
    import boto3
    import botocore.exceptions

    bucket, _, prefix = uri[len("s3://") :].partition("/")
    key = f"{prefix}/{LEASE}" if prefix else LEASE
    s3 = boto3.client("s3")
    me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
    held = {"etag": None}

    def put(**condition) -> str | None:
        """The new ETag, or None where the condition failed."""
        body = json.dumps({**me, "time": time.time()}).encode()
        try:
            return s3.put_object(Bucket=bucket, Key=key, Body=body, **condition)["ETag"]
        except botocore.exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") in _LOST:
                return None
            raise

    try:
        for _ in range(5):  # each pass loses only to a writer that won: a few at most
            if (etag := put(IfNoneMatch="*")) is not None:
                break
            try:
                got = s3.get_object(Bucket=bucket, Key=key)
            except s3.exceptions.NoSuchKey:
                continue  # released since: create it again
            try:
                other = json.loads(got["Body"].read())
            except (ValueError, UnicodeDecodeError):
                other = {}  # not a lease this code wrote whole: nobody's
            if _holds(other, me, ttl):
                raise _refusal(other, uri, what, ttl)
            if (etag := put(IfMatch=got["ETag"])) is not None:  # taken over, unless another was first
                break
        else:
            raise UserError(f"{uri}: the {what} lease kept changing hands; try again")
    except botocore.exceptions.NoCredentialsError:
        raise UserError(f"{uri}: no AWS credentials to write the {what} lease with") from None
    except botocore.exceptions.ClientError as err:
        e, meta = err.response.get("Error", {}), err.response.get("ResponseMetadata", {})
        raise classified(
            uri, str(e.get("Code", "")), meta.get("HTTPStatusCode"), str(e.get("Message", ""))
        ) from None
    except botocore.exceptions.BotoCoreError as err:
        raise StorageUnavailable(
            f"{uri}: the object store did not answer ({err}); check AWS_ENDPOINT_URL and the network"
        ) from None
    held["etag"] = etag

    def renew():
        if held["etag"] is None:
            return
        # Where the store does not answer this time, the lease stands until ttl: try again later.
        with contextlib.suppress(botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            held["etag"] = put(IfMatch=held["etag"])  # None: taken over (we were silent too long)

    try:
        with _renewing(renew, ttl):
            yield
    finally:
        if held["etag"] is not None:
            with contextlib.suppress(botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                s3.delete_object(Bucket=bucket, Key=key, IfMatch=held["etag"])


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
    loc = Location.of(spec)
    if loc.local is not None:
        yield loc.local
        return
    uri = str(loc)
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
            dest = inside(local, name, f"{uri}/{name}") if name else local
            dest.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(
                f"{base}/{name}" if name else base,
                str(dest),
                source_filesystem=fs,
                destination_filesystem=pafs.LocalFileSystem(),
            )
        yield local
