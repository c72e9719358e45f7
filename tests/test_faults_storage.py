"""Object storage that refuses or does not answer: one line naming the URI and the cause, exit
status 2 for what the user can fix (credentials, a bucket), 1 for a store that did not answer
after the client's bounded retries; the output location is checked before any work."""

import socket

import pytest
from corpus_gen import documents
from test_faults_inputs import one_line

from gpt1.cli import main as gpt1
from pipeline.errors import StorageUnavailable, UserError, storage_error


def test_pyarrows_s3_errors_become_one_line_naming_the_object():
    lost = storage_error(
        OSError(
            "When getting information for key 'ds/manifest.json' in bucket 'b': AWS Error "
            "NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could not connect"
        )
    )
    assert isinstance(lost, StorageUnavailable) and str(lost).startswith("s3://b/ds/manifest.json: ")
    denied = storage_error(
        OSError(
            "When reading information for key 'k' in bucket 'b': AWS Error ACCESS_DENIED "
            "during HeadObject operation: No response body."
        )
    )
    assert isinstance(denied, UserError) and "access denied" in str(denied) and "s3://b/k" in str(denied)
    other = storage_error(
        OSError(
            "When completing multiple part upload for key 'k' in bucket 'b': AWS Error "
            "UNKNOWN (HTTP status 500) during CompleteMultipartUpload operation: boom"
        )
    )
    assert isinstance(other, StorageUnavailable) and "HTTP 500" in str(other)
    assert storage_error(OSError("No space left on device")) is None
    assert storage_error(ValueError("AWS Error ACCESS_DENIED")) is None


def corpus(tmp_path):
    (tmp_path / "c.txt").write_text("\n\n".join(documents(50, seed=1)) + "\n")
    return str(tmp_path / "c.txt")


@pytest.mark.slow
def test_a_bucket_that_does_not_exist_is_found_before_any_work(s3, tmp_path, capsys):
    assert (
        gpt1(
            [
                "prepare",
                "--corpus",
                corpus(tmp_path),
                "--out",
                "s3://no-such-bucket/ds",
                "--no-mlflow",
                "--set",
                "n_merges=20",
                "--set",
                "n_ctx=16",
            ]
        )
        == 2
    )
    one_line(capsys, "s3://no-such-bucket", "no such bucket")
    assert "prepared" not in capsys.readouterr().out


@pytest.mark.slow
def test_an_endpoint_that_does_not_answer_is_one_line_and_status_1(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    assert (
        gpt1(
            [
                "prepare",
                "--corpus",
                corpus(tmp_path),
                "--out",
                "s3://bucket/ds",
                "--no-mlflow",
                "--set",
                "n_merges=20",
                "--set",
                "n_ctx=16",
            ]
        )
        == 1
    )
    one_line(capsys, "s3://bucket/ds", "did not answer", "AWS_ENDPOINT_URL")
    assert (
        gpt1(["pretrain", "--data", "s3://bucket/ds", "--storage", str(tmp_path / "runs"), "--no-mlflow"])
        == 1
    )
    one_line(capsys, "s3://bucket/ds", "did not answer")


@pytest.mark.slow
def test_a_store_lost_mid_prepare_is_one_line_and_status_1(tmp_path):
    """The S3 server stops while prepare's workers write their part files."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import pyarrow.fs as pafs

    root = Path(__file__).resolve().parent.parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONPATH": str(root),
    }
    try:
        fs = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            allow_bucket_creation=True,
            access_key="x",
            secret_key="y",
            region="us-east-1",
        )
        for _ in range(100):
            try:
                fs.create_dir("gpt1-lost")
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the moto server did not come up")
        (tmp_path / "c.txt").write_text(
            "\n\n".join(documents(20000, seed=4)) + "\n"
        )  # ~3 MB: many work items
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpt1.cli",
                "prepare",
                "--corpus",
                str(tmp_path / "c.txt"),
                "--out",
                "s3://gpt1-lost/ds",
                "--no-mlflow",
                "--set",
                "n_merges=50",
                "--set",
                "chunk_mb=1",
                "--set",
                "parallelism=1",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 300
        while not [
            i
            for i in fs.get_file_info(pafs.FileSelector("gpt1-lost/ds", recursive=True, allow_not_found=True))
            if "/_work/" in i.path
        ]:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.2)
    finally:
        moto.kill()
        moto.wait()
    out, err = proc.communicate(timeout=600)
    mine = [line for line in err.splitlines() if line.startswith("gpt1 prepare:")]
    assert proc.returncode == 1, err[-3000:]
    assert len(mine) == 1 and "did not answer" in mine[0] and "s3://gpt1-lost/ds" in mine[0], err[-3000:]
    assert "Traceback" not in err, err[-3000:]


def test_a_storage_error_inside_a_ray_train_failure_is_found():
    from ray.train import WorkerGroupError

    from pipeline.errors import user_error

    lost = OSError(
        "When uploading part for key 'runs/r/checkpoint_000000020/model.safetensors' in bucket 'b': "
        "AWS Error NETWORK_CONNECTION during UploadPart operation: connection reset"
    )
    found = user_error(WorkerGroupError("rank 0 failed", {0: lost}))
    assert isinstance(found, StorageUnavailable) and "s3://b/runs/r/checkpoint_000000020" in str(found)
