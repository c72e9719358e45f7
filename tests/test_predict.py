"""gpt1 predict: a fine-tuned model's labels on new rows, in this process and through Ray Data,
as its own evaluation gives them, in input order, with malformed rows marked, skipped or refused; from a registered
model and to and from S3."""

import json

import pandas as pd
import pyarrow.fs as pafs
import pytest

from pipeline.data.tasks import get
from tuning.finetune import FinetuneConfig, finetune, load_task_model, predict
from tuning.predict import main

pytestmark = pytest.mark.slow  # Ray Data actors: a minute


@pytest.fixture(scope="module")
def fine_tuned(task_checkpoint, sst2, tmp_path_factory):
    out = tmp_path_factory.mktemp("fine-tuned") / "model"
    finetune(
        get("sst-2"), sst2, task_checkpoint, FinetuneConfig(lr=2e-3, batch_size=16, max_steps=30), out=out
    )
    return out


def own_labels(model_dir, examples) -> list[str]:
    tm = load_task_model(model_dir)
    return [tm.task.labels[int(i)] for i in predict(tm, tm.encoder.encode(examples))]


@pytest.mark.parametrize("where", ["in-process", "--ray"])
def test_predict_gives_the_models_own_labels_in_input_order(
    fine_tuned, sst2, tmp_path, ray_session, capsys, where
):
    """The same rows, labels, errors and lines whether the rows run in this process (a small
    input) or on Ray Data's actors."""
    ray = [where] if where == "--ray" else []
    dev = get("sst-2").load(sst2, "dev")[:40]
    rows = [{"id": f"r{i:03d}", "sentence": e.text[0]} for i, e in enumerate(dev)]
    rows[7]["sentence"] = ""  # malformed: an empty field
    pd.DataFrame(rows).to_csv(tmp_path / "in.tsv", sep="\t", index=False)
    lines = (tmp_path / "in.tsv").read_text().splitlines()
    (tmp_path / "in.tsv").write_text("\n".join([*lines[:4], "", *lines[4:]]) + "\n")  # a blank line 5
    assert (
        main(
            [
                *ray,
                "--model",
                str(fine_tuned),
                "--input",
                str(tmp_path / "in.tsv"),
                "--out",
                str(tmp_path / "out.jsonl"),
            ]
        )
        == 0
    )
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == [r["id"] for r in rows]  # every row, in order, its columns kept
    want = own_labels(fine_tuned, [e for i, e in enumerate(dev) if i != 7])
    assert [r["label"] for i, r in enumerate(out) if i != 7] == want
    assert out[7]["label"] is None and out[7]["error"] == "'sentence' is empty"
    for r in out[:3]:
        assert r["p_0"] + r["p_1"] == pytest.approx(1.0, abs=1e-5) and r["error"] is None
    said = capsys.readouterr().out
    assert "first at " in said and "in.tsv: line 10" in said, said  # the header, 8 rows, the blank line
    assert "1 blank line(s) in the input, not rows, left out: first " in said and "in.tsv: line 5" in said
    assert ("in this process" in said) == (where == "in-process"), said

    # skip: left out and counted; fail: one line naming the file and line, nothing written.
    assert (
        main(
            [
                *ray,
                "--model",
                str(fine_tuned),
                "--input",
                str(tmp_path / "in.tsv"),
                "--out",
                str(tmp_path / "s.csv"),
                "--on-bad-row",
                "skip",
            ]
        )
        == 0
    )
    skipped = pd.read_csv(tmp_path / "s.csv")
    assert (
        len(skipped) == 39
        and "error" not in skipped
        and "1 malformed row(s) skipped" in capsys.readouterr().out
    )
    assert (
        main(
            [
                *ray,
                "--model",
                str(fine_tuned),
                "--input",
                str(tmp_path / "in.tsv"),
                "--out",
                str(tmp_path / "f.parquet"),
                "--on-bad-row",
                "fail",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("predict: ") and "in.tsv: line 10: 'sentence' is empty" in err, err
    assert not (tmp_path / "f.parquet").exists() and not list(tmp_path.glob(".f.parquet*"))
    # A row of the wrong width is no row of the task at all: one line, exit 2, nothing written.
    lines = (tmp_path / "in.tsv").read_text().splitlines()
    (tmp_path / "wide.tsv").write_text("\n".join([*lines[:5], lines[5] + "\textra", *lines[6:]]) + "\n")
    assert (
        main(
            [
                *ray,
                "--model",
                str(fine_tuned),
                "--input",
                str(tmp_path / "wide.tsv"),
                "--out",
                str(tmp_path / "w.csv"),
            ]
        )
        == 2
    )
    ours = [x for x in capsys.readouterr().err.splitlines() if x.startswith("predict: ")]  # Ray's log aside
    # The line (the header is line 1, the widened row lines[5] line 6), and pyarrow's own words.
    assert len(ours) == 1 and "wide.tsv: line 6: a row does not have its header's fields" in ours[0], ours
    assert "Expected 2 columns, got 3" in ours[0]
    assert not (tmp_path / "w.csv").exists()


def test_predict_reads_a_registered_model_and_s3(fine_tuned, sst2, tmp_path, ray_session, mlflow_uri, s3):
    from mlflow.tracking import MlflowClient

    from tuning.tracking import register_best

    client = MlflowClient(mlflow_uri)
    run = client.create_run(client.create_experiment("gpt1-finetune-sst-2"))
    version = register_best(client, "sst-2", run.info.run_id, fine_tuned)
    dev = get("sst-2").load(sst2, "dev")[:20]
    fs = pafs.FileSystem.from_uri("s3://gpt1-test")[0]
    with fs.open_output_stream("gpt1-test/in/rows.parquet") as f:
        pd.DataFrame({"text": [e.text[0] for e in dev]}).to_parquet(f)
    args = ["--model", f"models:/gpt1-sst-2/{version}", "--input", "s3://gpt1-test/in/rows.parquet"]
    assert main([*args, "--out", "s3://gpt1-test/out/preds.parquet", "--columns", "text"]) == 0
    with fs.open_input_file("gpt1-test/out/preds.parquet") as f:
        out = pd.read_parquet(f)
    assert list(out["text"]) == [e.text[0] for e in dev]
    assert list(out["label"]) == own_labels(fine_tuned, dev)
    # A field the task does not have (no such column here without --columns): one line, before any work.
    assert main([*args, "--out", str(tmp_path / "o.jsonl")]) == 2
    assert not (tmp_path / "o.jsonl").exists()
