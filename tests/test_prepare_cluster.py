"""prepare on a simulated cluster: a head and two worker nodes of 1 CPU each
(ray.cluster_utils.Cluster), the corpus read from and the dataset written to a local S3 server
(moto). The manifest and every file equal those of a 1-worker run in this process; a driver
killed half-way leaves no dataset, and the same command then finishes; bad input leaves nothing
in the bucket."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from corpus_gen import documents

from pipeline.data.prepare import PrepareConfig, prepare

pytestmark = pytest.mark.slow  # a cluster, an S3 server or a Ray job: minutes

ROOT = Path(__file__).resolve().parent.parent
SETS = {"n_merges": 200, "n_ctx": 32, "val_fraction": 0.1, "shard_mb": 1, "chunk_mb": 1}


def bucket() -> pafs.FileSystem:
    return pafs.FileSystem.from_uri("s3://gpt1-test")[0]


def remote_files(prefix: str) -> dict[str, str]:
    fs = bucket()
    out = {}
    for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True)):
        if i.type == pafs.FileType.File:
            with fs.open_input_stream(i.path) as f:
                out[i.path[len(prefix) + 1 :]] = hashlib.sha256(f.read()).hexdigest()
    return out


def gpt1_prepare(cluster, out: str, corpus: str = "s3://gpt1-test/corpus/") -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    sets = [a for k, v in SETS.items() for a in ("--set", f"{k}={v}")]
    return subprocess.Popen(
        [sys.executable, "-m", "gpt1.cli", "prepare", "--corpus", corpus, "--out", out, "--no-mlflow", *sets],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_cluster_prepares_from_s3_to_s3_what_one_worker_does(cluster, tmp_path):
    fs = bucket()
    docs = documents(24_000, seed=11)
    for name, part in (("a.txt", docs[:14_000]), ("b.txt", docs[14_000:])):
        with fs.open_output_stream(f"gpt1-test/corpus/{name}") as f:
            f.write(("\n\n".join(part) + "\n").encode())

    # The reference: one worker, in this process, reading the same objects, writing locally.
    ref = prepare(
        ["s3://gpt1-test/corpus/"], tmp_path / "ref", PrepareConfig(**SETS), track=False, local=True
    )
    want = {
        p.relative_to(tmp_path / "ref").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (tmp_path / "ref").rglob("*")
        if p.is_file()
    }
    assert len(ref["shards"]) >= 3 and len(ref["inputs"]) == 2

    proc = gpt1_prepare(cluster, "s3://gpt1-test/ds")
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-3000:]
    assert "Ray: the cluster at" in log and "prepared s3://gpt1-test/ds" in log
    assert json.loads(fs.open_input_stream("gpt1-test/ds/manifest.json").read()) == ref
    assert remote_files("gpt1-test/ds") == want  # every file, and nothing else (no part files left)

    # Killed half-way, once the workers have written part files: no manifest, so no dataset.
    proc = gpt1_prepare(cluster, "s3://gpt1-test/killed")
    deadline = time.time() + 300
    while not any(n.startswith("_work/") for n in remote_files("gpt1-test/killed")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it wrote a part file"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = remote_files("gpt1-test/killed")
    assert left and "manifest.json" not in left
    # The same command again clears what the killed one left and finishes.
    proc = gpt1_prepare(cluster, "s3://gpt1-test/killed")
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-3000:]
    assert remote_files("gpt1-test/killed") == want

    # Bad input found once every worker has written its part files (a file that is mostly not
    # UTF-8): one line, exit 2, and nothing left under the output.
    with fs.open_output_stream("gpt1-test/bad/z.txt") as f:
        f.write(bytes(range(1, 256)) * 400)
    fs.copy_file("gpt1-test/corpus/a.txt", "gpt1-test/bad/a.txt")
    proc = gpt1_prepare(cluster, "s3://gpt1-test/bad-out", corpus="s3://gpt1-test/bad/")
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 2, log[-3000:]
    (line,) = [x for x in log.splitlines() if x.startswith("gpt1 prepare: ")]
    assert line.startswith("gpt1 prepare: s3://gpt1-test/bad/z.txt: ") and "are not UTF-8" in line
    assert "Traceback" not in log
    assert remote_files("gpt1-test/bad-out") == {}
