"""A local S3 server for the benchmarks: moto_server on a free port of 127.0.0.1, with a bucket
`bench`, reached by pyarrow (and this process's children) through AWS_ENDPOINT_URL."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


@contextlib.contextmanager
def local_s3(bucket: str = "bench"):
    """Yields the server's pyarrow S3FileSystem; the server stops when the block ends."""
    import pyarrow.fs as pafs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    try:
        fs = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True
        )
        for _ in range(100):
            try:
                fs.create_dir(bucket)
                break
            except OSError:
                time.sleep(0.1)
        yield fs
    finally:
        moto.terminate()
        moto.wait()
