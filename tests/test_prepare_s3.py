"""prepare to object storage (a real local S3 server, moto): the same files as a local run,
written in place with manifest.json last; re-runs, --overwrite and an interrupted upload's leftovers; a prefix
holding other files is never cleared; `gpt1 prepare --corpus s3://... --out s3://...` end to end."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from corpus_gen import documents

from pipeline.data.corpus import CorpusError
from pipeline.data.prepare import PrepareConfig, prepare
from pipeline.files import sha256_file

pytestmark = pytest.mark.slow  # a cluster, an S3 server or a Ray job: minutes

ROOT = Path(__file__).resolve().parent.parent
CFG = PrepareConfig(n_merges=100, n_ctx=32, val_fraction=0.1, shard_mb=1)


def bucket() -> pafs.FileSystem:
    return pafs.FileSystem.from_uri("s3://gpt1-test")[0]


def remote_files(prefix: str) -> dict[str, str]:
    fs = bucket()
    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    out = {}
    for i in infos:
        if i.type == pafs.FileType.File:
            with fs.open_input_stream(i.path) as f:
                out[i.path[len(prefix) + 1 :]] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_a_dataset_on_s3_holds_the_local_ones_files(s3, tmp_path, capsys):
    src = tmp_path / "c.txt"
    src.write_text("\n\n".join(documents(300, seed=5)) + "\n")
    local = prepare([str(src)], tmp_path / "local", CFG, track=False, local=True)
    m = prepare([str(src)], "s3://gpt1-test/ds", CFG, track=False, local=True)
    assert m == local
    files = remote_files("gpt1-test/ds")
    expected = {
        p.relative_to(tmp_path / "local").as_posix(): sha256_file(p)
        for p in (tmp_path / "local").rglob("*")
        if p.is_file()
    }
    assert files == expected and "manifest.json" in files and any(n.startswith("val/") for n in files)

    # The same command again: nothing to do. Other options: refused without --overwrite.
    prepare([str(src)], "s3://gpt1-test/ds", CFG, track=False, local=True)
    assert "is up to date" in capsys.readouterr().out
    other = PrepareConfig(**{**CFG.__dict__, "n_merges": 80})
    with pytest.raises(CorpusError, match="already holds a different prepared dataset; pass --overwrite"):
        prepare([str(src)], "s3://gpt1-test/ds", other, track=False, local=True)
    assert remote_files("gpt1-test/ds") == files
    m2 = prepare([str(src)], "s3://gpt1-test/ds", other, track=False, local=True, overwrite=True)
    after = remote_files("gpt1-test/ds")
    assert m2["fingerprint"] != m["fingerprint"] and set(after) == {
        "manifest.json",
        "tokenizer.json",
        *m2["shards"],
    }

    # A given tokenizer on S3 (a single tokenizer.json): the same dataset as from the local file.
    bucket().copy_file("gpt1-test/ds/tokenizer.json", "gpt1-test/tok.json")
    given = PrepareConfig(**{**other.__dict__, "tokenizer": "s3://gpt1-test/tok.json"})
    local_given = PrepareConfig(**{**other.__dict__, "tokenizer": str(tmp_path / "tok.json")})
    (tmp_path / "tok.json").write_bytes(bucket().open_input_stream("gpt1-test/tok.json").read())
    assert (
        prepare([str(src)], tmp_path / "given", given, track=False, local=True)["shards"]
        == prepare([str(src)], tmp_path / "given-local", local_given, track=False, local=True)["shards"]
        == m2["shards"]
    )


def test_leftovers_of_an_interrupted_upload_are_cleared_and_other_files_never(s3, tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("\n\n".join(documents(200, seed=6)) + "\n")
    fs = bucket()
    # What an upload cut off before its manifest leaves: shards, no manifest (not a dataset).
    fs.create_dir("gpt1-test/cut/train")
    with fs.open_output_stream("gpt1-test/cut/train/shard-00007.bin") as f:
        f.write(b"half a shard")
    with fs.open_output_stream("gpt1-test/cut/_work/item-000003-val.bin") as f:
        f.write(b"a part file")
    m = prepare([str(src)], "s3://gpt1-test/cut", CFG, track=False, local=True)
    assert set(remote_files("gpt1-test/cut")) == {"manifest.json", "tokenizer.json", *m["shards"]}
    # A prefix holding a file prepare does not write is refused, and left as it was.
    with fs.open_output_stream("gpt1-test/mine/notes.txt") as f:
        f.write(b"keep me")
    with pytest.raises(CorpusError, match="holds notes.txt, which prepare did not write"):
        prepare([str(src)], "s3://gpt1-test/mine", CFG, track=False, local=True, overwrite=True)
    assert list(remote_files("gpt1-test/mine")) == ["notes.txt"]
    # Bad input: one line, and nothing in the bucket.
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)) * 200)
    with pytest.raises(CorpusError, match="expected UTF-8 text, not a binary file"):
        prepare([str(tmp_path / "bin.txt")], "s3://gpt1-test/bad", CFG, track=False, local=True)
    assert remote_files("gpt1-test/bad") == {}


def test_gpt1_prepare_reads_and_writes_s3(s3, tmp_path):
    """The README's command: corpus on S3, dataset to S3, on Ray Data; exit 0, the manifest there."""
    fs = bucket()
    with fs.open_output_stream("gpt1-test/corpus/a.txt") as f:
        f.write(("\n\n".join(documents(300, seed=7)) + "\n").encode())
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **s3}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt1.cli",
            "prepare",
            "--corpus",
            "s3://gpt1-test/corpus/*.txt",
            "--out",
            "s3://gpt1-test/data",
            "--no-mlflow",
            "--set",
            "n_merges=100",
            "--set",
            "n_ctx=32",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads(fs.open_input_stream("gpt1-test/data/manifest.json").read())
    assert manifest["inputs"][0]["uri"] == "s3://gpt1-test/corpus/a.txt"
    assert set(remote_files("gpt1-test/data")) == {"manifest.json", "tokenizer.json", *manifest["shards"]}
