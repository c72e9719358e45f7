"""Object storage that refuses or does not answer: one line naming the URI and the cause, exit
status 2 for what the user can fix (credentials, a bucket), 1 for a store that did not answer
after the client's bounded retries; the output location is checked before any work."""
import socket

import pytest

from corpus_gen import documents
from gpt1.cli import main as gpt1
from pipeline.errors import StorageUnavailable, UserError, storage_error
from test_faults_inputs import one_line


def test_pyarrows_s3_errors_become_one_line_naming_the_object():
    lost = storage_error(OSError("When getting information for key 'ds/manifest.json' in bucket 'b': AWS Error "
                                 "NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could not connect"))
    assert isinstance(lost, StorageUnavailable) and str(lost).startswith("s3://b/ds/manifest.json: ")
    denied = storage_error(OSError("When reading information for key 'k' in bucket 'b': AWS Error ACCESS_DENIED "
                                   "during HeadObject operation: No response body."))
    assert isinstance(denied, UserError) and "access denied" in str(denied) and "s3://b/k" in str(denied)
    other = storage_error(OSError("When completing multiple part upload for key 'k' in bucket 'b': AWS Error "
                                  "UNKNOWN (HTTP status 500) during CompleteMultipartUpload operation: boom"))
    assert isinstance(other, UserError) and "HTTP 500" in str(other)
    assert storage_error(OSError("No space left on device")) is None
    assert storage_error(ValueError("AWS Error ACCESS_DENIED")) is None


def corpus(tmp_path):
    (tmp_path / "c.txt").write_text("\n\n".join(documents(50, seed=1)) + "\n")
    return str(tmp_path / "c.txt")


@pytest.mark.slow
def test_a_bucket_that_does_not_exist_is_found_before_any_work(s3, tmp_path, capsys):
    assert gpt1(["prepare", "--corpus", corpus(tmp_path), "--out", "s3://no-such-bucket/ds", "--no-mlflow",
                 "--set", "n_merges=20", "--set", "n_ctx=16"]) == 2
    one_line(capsys, "s3://no-such-bucket", "no such bucket")
    assert "prepared" not in capsys.readouterr().out


def test_an_endpoint_that_does_not_answer_is_one_line_and_status_1(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
                 "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    assert gpt1(["prepare", "--corpus", corpus(tmp_path), "--out", "s3://bucket/ds", "--no-mlflow",
                 "--set", "n_merges=20", "--set", "n_ctx=16"]) == 1
    one_line(capsys, "s3://bucket/ds", "did not answer", "AWS_ENDPOINT_URL")
    assert gpt1(["pretrain", "--data", "s3://bucket/ds", "--storage", str(tmp_path / "runs"), "--no-mlflow"]) == 1
    one_line(capsys, "s3://bucket/ds", "did not answer")
