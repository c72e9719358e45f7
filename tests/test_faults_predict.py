"""gpt1 predict never loses data and checks its inputs before Ray starts: an --out that is an
input, exists or is a directory; inputs that are missing, empty, not UTF-8 or without the task's
columns; a bad --actors. Each is one line and exit 2, with every file as it was. Then, on Ray,
the rows that used to crash or mangle the output: mixed JSON types, a skipped first batch into
CSV, control characters, gzipped and non-UTF-8 input."""

import gzip
import json
import os

import pandas as pd
import pytest
from test_faults_inputs import one_line

from gpt1.cli import main as gpt1
from pipeline.data.tasks import get
from tuning.finetune import FinetuneConfig, finetune


@pytest.fixture(scope="module")
def fine_tuned(task_checkpoint, sst2, tmp_path_factory):
    out = tmp_path_factory.mktemp("fine-tuned") / "m"
    finetune(
        get("sst-2"), sst2, task_checkpoint, FinetuneConfig(lr=2e-3, batch_size=16, max_steps=5), out=out
    )
    return out


def snapshot(d):
    return {str(p): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_predict_refuses_an_out_that_would_lose_data_before_any_work(fine_tuned, tmp_path, capsys):
    (tmp_path / "in.csv").write_text("sentence\ngood film\n")
    (tmp_path / "old.csv").write_text("my earlier predictions\n")
    (tmp_path / "dir.csv").mkdir()
    dead = tmp_path / ".new.csv.gpt1-predict-999999-abcd1234"  # a killed run's staging directory
    dead.mkdir()
    (dead / ".gpt1-staging").write_text("999999\n")
    before = snapshot(tmp_path)
    model = ["predict", "--model", str(fine_tuned)]
    for args, words in (
        (["--input", "in.csv", "--out", "in.csv"], "is (or lies in) the --input"),
        (["--input", "in.csv", "--out", "in.csv", "--overwrite"], "is (or lies in) the --input"),
        (["--input", "in.csv", "--out", "old.csv"], "already exists; pass --overwrite"),
        (["--input", "in.csv", "--out", "dir.csv"], "is a directory"),
        (["--input", "nothing-*.csv", "--out", "o.csv"], "matches no file"),
        (["--input", "missing.csv", "--out", "o.csv"], "missing.csv: no such file"),
        (["--input", "in.csv", "--out", "o.csv", "--actors", "-1"], "--actors -1"),
    ):
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            assert gpt1([*model, *args]) == 2, args
        finally:
            os.chdir(cwd)
        one_line(capsys, words)
    assert snapshot(tmp_path) == before
    # A refusal after the out checks: the dead run's staging directory is gone, nothing else.
    (tmp_path / "cols.csv").write_text("text\ngood film\n")
    assert gpt1([*model, "--input", str(tmp_path / "cols.csv"), "--out", str(tmp_path / "new.csv")]) == 2
    one_line(capsys, "has no column 'sentence'", "--columns")
    assert not dead.exists() and not (tmp_path / "new.csv").exists()


@pytest.mark.parametrize(
    "name, data, words",
    [
        ("empty.csv", b"", "is empty; expected a header line"),
        ("latin1.csv", b"s\xe9ntence\nfine\n", "byte 0xe9"),
        ("notjson.jsonl", b"sentence: fine\n", "line 1: not a JSON object"),
        ("blank.jsonl", b"\n\n", "is empty"),
    ],
)
def test_predict_says_what_is_wrong_with_an_input_in_one_line(
    fine_tuned, tmp_path, capsys, name, data, words
):
    (tmp_path / name).write_bytes(data)
    out = tmp_path / "o.csv"
    assert (
        gpt1(["predict", "--model", str(fine_tuned), "--input", str(tmp_path / name), "--out", str(out)]) == 2
    )
    one_line(capsys, name, words)
    assert not out.exists()


@pytest.mark.slow
def test_predict_keeps_mixed_and_skipped_rows_whole(fine_tuned, tmp_path, ray_session, capsys):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        "\n".join(json.dumps({"sentence": v}) for v in (5, None, ["a"], "good film", "\u0000\u0001")) + "\n"
    )
    assert (
        gpt1(
            ["predict", "--model", str(fine_tuned), "--input", str(mixed), "--out", str(tmp_path / "m.jsonl")]
        )
        == 0
    )
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["sentence"] for r in rows] == ["5", None, '["a"]', "good film", "\u0000\u0001"]
    assert [r["label"] is None for r in rows] == [True, True, True, False, True]
    assert rows[4]["error"] == "'sentence' is empty (control characters only)"
    assert not list(tmp_path.glob(".m.jsonl*"))
    # The first 300 rows bad, skipped, into CSV: one header, then the good rows only.
    with gzip.open(tmp_path / "in.csv.gz", "wt") as f:
        f.write("id,sentence\n" + "".join(f"{i},\n" for i in range(300)) + "300,good film\n301,bad film\n")
    out = tmp_path / "s.csv"
    args = ["--input", str(tmp_path / "in.csv.gz"), "--out", str(out), "--on-bad-row", "skip"]
    assert gpt1(["predict", "--model", str(fine_tuned), *args]) == 0
    assert out.read_text().count("id,sentence") == 1
    assert list(pd.read_csv(out)["id"]) == [300, 301]
    assert "300 malformed row(s) skipped" in capsys.readouterr().out
    # A byte that is not UTF-8 past the header: pyarrow's own words, with the file.
    (tmp_path / "bad.csv").write_bytes(b"sentence\nfine\n\xff\xfebad\n")
    assert (
        gpt1(
            [
                "predict",
                "--model",
                str(fine_tuned),
                "--input",
                str(tmp_path / "bad.csv"),
                "--out",
                str(tmp_path / "b.csv"),
            ]
        )
        == 2
    )
    one_line(capsys, "bad.csv: line 3:", "invalid UTF8")
    # A line longer than pyarrow's read block: its line, not "a row does not have its header's fields".
    (tmp_path / "long.csv").write_text("sentence\nfine\n" + "x" * (2 << 20) + "\n")
    assert (
        gpt1(
            [
                "predict",
                "--model",
                str(fine_tuned),
                "--input",
                str(tmp_path / "long.csv"),
                "--out",
                str(tmp_path / "l.csv"),
            ]
        )
        == 2
    )
    one_line(capsys, "long.csv: line 3:", "longer than the reader's 1 MiB block")


@pytest.mark.slow
@pytest.mark.parametrize("sig, delay", [("SIGINT", 0.5), ("SIGINT", 3), ("SIGTERM", 3)])
def test_a_signal_while_predict_starts_up_is_one_line_and_its_status(fine_tuned, tmp_path, sig, delay):
    """Ctrl-C while torch is imported, or while Ray starts: one line, 130 (143 for SIGTERM), no
    traceback, whatever Ray's own shutdown does."""
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "in.csv").write_text("sentence\ngood film\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpt1.cli",
            "predict",
            "--model",
            str(fine_tuned),
            "--input",
            "in.csv",
            "--out",
            "o.csv",
            "--ray",  # in this process, two rows would be done before the signal
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(delay)
    proc.send_signal(getattr(signal, sig))
    out, _ = proc.communicate(timeout=180)
    if "row(s) to" in out:
        pytest.skip("predict finished before the signal came")
    assert proc.returncode == 128 + getattr(signal, sig), out[-3000:]
    assert "Traceback" not in out and out.strip().splitlines()[-1].endswith("interrupted"), out[-3000:]


@pytest.mark.slow
def test_predict_checks_objects_and_buckets_before_any_work(fine_tuned, tmp_path, s3, capsys):
    import pyarrow.fs as pafs

    fs = pafs.FileSystem.from_uri("s3://gpt1-test")[0]
    with fs.open_output_stream("gpt1-test/in.csv") as f:
        f.write(b"sentence\ngood film\n")
    with fs.open_output_stream("gpt1-test/old.csv") as f:
        f.write(b"earlier predictions\n")
    model = ["predict", "--model", str(fine_tuned)]
    for args, words in (
        (
            ["--input", "s3://gpt1-test/missing.csv", "--out", str(tmp_path / "o.csv")],
            "missing.csv: no such file",
        ),
        (
            ["--input", "s3://gpt1-test/in.csv", "--out", "s3://no-such-bucket/o.csv"],
            "no bucket 'no-such-bucket'",
        ),
        (
            ["--input", "s3://gpt1-test/in.csv", "--out", "s3://gpt1-test/old.csv"],
            "already exists; pass --overwrite",
        ),
        (
            ["--input", "s3://gpt1-test/in.csv", "--out", "s3://gpt1-test/in.csv", "--overwrite"],
            "is one of the --input",
        ),
    ):
        assert gpt1([*model, *args]) == 2, args
        one_line(capsys, words)
    with fs.open_input_stream("gpt1-test/old.csv") as f:
        assert f.read() == b"earlier predictions\n"


def test_the_scan_counts_rows_and_finds_blank_lines_outside_quotes(tmp_path):
    """A blank line inside a quoted CSV field is text of its row; one outside is passed over by
    the reader, so the scan names it; the rows it counts are the rows the reader gives."""
    import pyarrow.csv as pacsv

    from tuning.rows import batches, csv_options, scan

    csv = tmp_path / "q.csv"
    csv.write_text('id,sentence\n1,"a field\n\nover lines"\n\n2,"say ""hi"""\n3,plain\n\n')
    found = scan(str(csv), "csv")
    assert (found.rows, found.blank) == (3, [5, 8])
    parse, convert = csv_options("csv", ["id", "sentence"])
    assert pacsv.read_csv(csv, parse_options=parse, convert_options=convert).num_rows == found.rows
    got = pd.concat(list(batches([str(csv)], "csv", lambda p: ["id", "sentence"], 2)))
    assert list(got["sentence"]) == ["a field\n\nover lines", 'say "hi"', "plain"]
    with gzip.open(tmp_path / "j.jsonl.gz", "wt") as f:
        f.write('{"sentence": "a"}\n   \n{"sentence": "b"}')
    found = scan(str(tmp_path / "j.jsonl.gz"), "jsonl")
    assert (found.rows, found.blank) == (2, [2])
    got = pd.concat(list(batches([str(tmp_path / "j.jsonl.gz")], "jsonl", None, 1)))
    assert list(got["sentence"]) == ["a", "b"]
    (tmp_path / "t.tsv").write_text('sentence\n"quoted\n\n')  # a TSV has no quoting
    assert scan(str(tmp_path / "t.tsv"), "tsv").blank == [3]
