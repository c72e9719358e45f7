"""gpt1 report: the paper's tables beside ours, read from MLflow runs laid out as a sweep logs
them, with the paper's numbers, the differences, mean ± std over seeds, and cells without runs."""

import pytest
from mlflow.tracking import MlflowClient
from test_faults_inputs import one_line

from gpt1.cli import main
from tuning import paper


def sweep_parent(client, task: str, metrics: dict, status: str = "FINISHED") -> str:
    """A finished sweep parent run of gpt1-finetune-<task>, with a trial under it."""
    exp = client.get_experiment_by_name(f"gpt1-finetune-{task}")
    exp = exp.experiment_id if exp else client.create_experiment(f"gpt1-finetune-{task}")
    run = client.create_run(exp, tags={"task": task, "sweep_key": "k"}).info.run_id
    for k, v in metrics.items():
        client.log_metric(run, k, v)
    trial = client.create_run(exp, tags={"task": task, "sweep_key": "k", "mlflow.parentRunId": run})
    client.log_metric(trial.info.run_id, "best_accuracy", 0.99)  # a trial's: never read as the sweep's
    client.set_terminated(trial.info.run_id)
    client.set_terminated(run, status)
    return run


def table5_line(text: str, name: str) -> list[str]:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"| {name} |")]
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_report_sets_table5_beside_the_paper_and_says_where_there_is_no_run(tmp_path, mlflow_uri, capsys):
    client = MlflowClient(mlflow_uri)
    sweep_parent(client, "sst-2", {"best_accuracy": 0.5, "ablation_full_accuracy": 0.1})  # older: not read
    newest = sweep_parent(
        client,
        "sst-2",
        {
            "best_accuracy": 0.905,
            "ablation_full_accuracy": 0.9,
            "ablation_full_accuracy_std": 0.01,
            "ablation_lstm_accuracy": 0.85,
            "ablation_lstm_accuracy_std": 0.02,
            "ablation_no_aux_lm_accuracy": 0.88,
            "ablation_no_pretraining_accuracy": 0.7,
        },
    )
    sweep_parent(
        client, "cola", {"best_matthews": 0.3, "ablation_full_matthews": 0.25, "ablation_lstm_matthews": 0.2}
    )
    sweep_parent(client, "rte", {"best_accuracy": 0.6}, status="FAILED")  # unfinished: not read
    assert main(["report", "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert text.strip() in capsys.readouterr().out  # printed, as written
    assert newest in text
    # Table 5 as the paper labels it (it names no split; its figures are its test-server ones),
    # and ours said for what they are: dev scores at settings chosen on dev.
    assert "### Table 5: ablations\n" in text and "GLUE dev" not in text
    assert "name no split" in text and "chose on the same dev sets" in text
    assert paper.TABLE5_ROWS["full"][2][5] == round((82.1 + 81.4) / 2, 1)  # MNLI: the mean of m and mm
    # The paper's averages, 74.7 / 59.9 / 75.0 / 69.1, beside ours.
    for row, (name, avg, _cells) in paper.TABLE5_ROWS.items():
        line = table5_line(text, name)
        assert str(avg) in line[1], (row, line)
    full = table5_line(text, "Transformer w/ aux LM (full)")
    assert full[3] == "90.0 ± 1.0 \\| 91.3 \\| -1.3"  # SST-2: ours ± std | paper | Δ
    assert full[2] == "25.0 \\| 45.4 \\| -20.4"  # CoLA, one seed
    assert full[4].startswith("no run")  # MRPC: no sweep
    # Part of a row: ours over the 2 tasks there, against the paper's over the same two.
    assert full[1] == f"57.5 \\| {(45.4 + 91.3) / 2:.1f} (2 of 8 tasks; all 8: 74.7) \\| {57.5 - 68.35:+.1f}"
    lstm = table5_line(text, "LSTM w/ aux LM")
    assert lstm[3] == "85.0 ± 2.0 \\| 90.5 \\| -5.5"
    no_pre = table5_line(text, "Transformer w/o pre-training")
    assert no_pre[2].startswith("no run") and no_pre[3] == "70.0 \\| 84.0 \\| -14.0"
    # Tables 2-4 from the best trial's metric; RTE's sweep never finished.
    assert "| 90.5 \\| 91.3 \\| -0.8 |" in text and "no run \\| 56.0" in text
    assert "Deliberate deviations" in text and "AdamW" in text  # docs/finetune.md's ledger
    exp = client.get_experiment_by_name("gpt1-report")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["sweep.sst-2"] == newest
    assert "report.md" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_bad_tag_or_experiment_is_one_line(tmp_path, mlflow_uri, capsys):
    for args, expected in (
        (["--tag", "nokey"], "expected KEY=VALUE"),
        (["--experiment", "nope"], "no such MLflow experiment"),
    ):
        assert main(["report", "--no-mlflow", "--out", str(tmp_path / "r"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "r").exists()  # nothing left behind
    # A tag value holding a quote is matched as text, never read as the filter's syntax.
    client = MlflowClient(mlflow_uri)
    run = sweep_parent(client, "sst-2", {"best_accuracy": 0.8})
    client.set_tag(run, "note", "it's")
    assert main(["report", "--no-mlflow", "--out", str(tmp_path / "q"), "--tag", "note=it's"]) == 0
    assert run in (tmp_path / "q" / "report.md").read_text()
    assert main(["report", "--no-mlflow", "--out", str(tmp_path / "q2"), "--tag", "note=it\"s'"]) == 2
    assert "both ' and \"" in capsys.readouterr().err


def test_report_writes_only_its_own_files_and_uploads_only_them(tmp_path, mlflow_uri, capsys, monkeypatch):
    client = MlflowClient(mlflow_uri)
    sweep_parent(client, "sst-2", {"best_accuracy": 0.9})
    home = tmp_path / "home"
    (home / "report" / ".ssh").mkdir(parents=True)
    (home / "report" / ".ssh" / "id_rsa").write_text("PRIVATE KEY")
    (home / "notes").mkdir()
    (home / "notes" / "report.md").write_text("my thesis notes")
    (home / "afile").write_text("x")
    monkeypatch.chdir(home)
    before = sorted(str(p) for p in home.rglob("*"))
    for out, words in (
        (".", "is the working directory"),
        (str(home), "is the working directory"),
        ("report", ".ssh"),  # the default's name, a user's folder
        ("notes", "not one gpt1 report wrote"),
        ("afile", "is not a directory"),
        (str(tmp_path / "mlartifacts" / "x"), "inside MLflow's artifact store"),
    ):
        assert main(["report", "--out", out]) == 2, out
        one_line(capsys, words)
    assert sorted(str(p) for p in home.rglob("*")) == before
    assert (home / "notes" / "report.md").read_text() == "my thesis notes"
    assert client.get_experiment_by_name("gpt1-report") is None  # no run, nothing uploaded
    # Its own directory, twice: the second replaces the first's report; only its files are logged.
    assert main(["report", "--out", "mine"]) == 0
    assert main(["report", "--out", "mine"]) == 0
    exp = client.get_experiment_by_name("gpt1-report")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"report.md"}


def test_a_damaged_n_transfer_parameter_is_one_line_naming_its_run(tmp_path, mlflow_uri, capsys):
    client = MlflowClient(mlflow_uri)
    parent = sweep_parent(client, "race", {"best_accuracy": 0.4})
    exp = client.get_experiment_by_name("gpt1-finetune-race").experiment_id
    trials = []
    for k in ("0", "all"):
        t = client.create_run(exp, tags={"mlflow.parentRunId": parent, "row": "trial"}).info.run_id
        client.log_param(t, "n_transfer", k)
        client.log_metric(t, "best_train_accuracy", 0.35)
        trials.append(t)
    assert main(["report", "--out", str(tmp_path / "r")]) == 2
    one_line(capsys, trials[1], "n_transfer")
    assert not (tmp_path / "r").exists()


def test_figure2_draws_transferred_layers_and_both_networks_zero_shot_curves(tmp_path, mlflow_uri):
    from tuning.report import report

    client = MlflowClient(mlflow_uri)
    parent = sweep_parent(client, "race", {"best_accuracy": 0.4})
    exp = client.get_experiment_by_name("gpt1-finetune-race").experiment_id
    for k in (0, 1, 2):
        t = client.create_run(exp, tags={"mlflow.parentRunId": parent, "row": "trial"}).info.run_id
        client.log_param(t, "n_transfer", k)
        client.log_metric(t, "best_accuracy", 0.3 + k / 10)
        client.log_metric(t, "best_train_accuracy", 0.35 + k / 10)
    pre = client.create_experiment("gpt1-pretrain")
    for arch in ("transformer", "lstm"):
        run = client.create_run(pre).info.run_id
        client.log_param(run, "model_config.arch", arch)
        for step, value in ((100, 0.55), (200, 0.6)):
            client.log_metric(run, "zero_shot_sst-2_accuracy", value, step=step)
    found = report(client, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert (tmp_path / "figure2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Figure 2 (left): race, dev solid and train dashed." in text
    assert "sst-2 (transformer" in text and "sst-2 (lstm" in text
    # The bounds of the normalisation, and where the upper one comes from.
    assert "sst-2 0.5 to 0.932 (Table 4's sparse byte mLSTM)" in text
    assert found["sweeps"]["race"] == parent


def test_table5_sets_mnlis_matched_and_mismatched_mean_beside_the_papers(tmp_path, mlflow_uri):
    """The paper's MNLI cell (81.8) is the mean of its matched and mismatched scores: ours is too,
    where the sweep scored both, each seed's mean then their mean ± std."""
    from tuning.report import report
    from tuning.tracking import ablation_summary, matched_and_mismatched

    rows = [
        {"ablation": "full", "seed": 0, "accuracy": 0.80, "mismatched_accuracy": 0.78},
        {"ablation": "full", "seed": 1, "accuracy": 0.82, "mismatched_accuracy": 0.76},
    ]
    both = matched_and_mismatched(rows, "accuracy")
    assert [r["matched_mismatched_accuracy"] for r in both] == pytest.approx([0.79, 0.79])
    (summary,) = ablation_summary(both, "matched_mismatched_accuracy")
    assert (summary["mean"], summary["std"]) == pytest.approx((0.79, 0.0))
    assert matched_and_mismatched([{"ablation": "full", "accuracy": 0.8}], "accuracy") == []  # not MNLI
    client = MlflowClient(mlflow_uri)
    sweep_parent(
        client,
        "mnli",
        {
            "best_accuracy": 0.81,
            "ablation_full_accuracy": 0.81,
            "ablation_full_matched_mismatched_accuracy": 0.79,
            "ablation_full_matched_mismatched_accuracy_std": 0.01,
            "ablation_no_aux_lm_accuracy": 0.78,  # matched alone: the sweep scored no mismatched
        },
    )
    report(client, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert table5_line(text, "Transformer w/ aux LM (full)")[7] == "79.0 ± 1.0 \\| 81.8 \\| -2.8"
    assert table5_line(text, "Transformer w/o aux LM")[7] == "78.0 \\| 81.1 \\| -3.1"


def test_a_results_table_holds_every_rows_columns(tmp_path):
    """A trial never scored has none of the extra columns (MNLI's mismatched, test labels) that
    the others carry: the table has them all, its cells empty."""
    import csv

    from tuning.tracking import results_table

    rows = [
        {"trial": "a", "accuracy": float("nan")},
        {"trial": "b", "accuracy": 0.8, "mismatched_accuracy": 0.7},
    ]
    csv_path, md = results_table(rows, tmp_path / "results")
    assert list(csv.DictReader(csv_path.read_text().splitlines())) == [
        {"trial": "a", "accuracy": "nan", "mismatched_accuracy": ""},
        {"trial": "b", "accuracy": "0.8", "mismatched_accuracy": "0.7"},
    ]
    assert md.read_text().splitlines()[0] == "| trial | accuracy | mismatched_accuracy |"


def test_a_public_test_split_is_reported_with_the_dev_score_beside_it(tmp_path, mlflow_uri):
    """Where a task's test labels are public and the sweep scored them, the report gives the test
    score of the model chosen on dev, and that dev score beside it."""
    from tuning.report import report

    client = MlflowClient(mlflow_uri)
    sweep_parent(client, "snli", {"best_accuracy": 0.88, "best_test_accuracy": 0.87})
    report(client, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "87.0 \\| 89.9 \\| -2.9 (test; dev 88.0)" in text
    assert "Ours: the best trial's dev score, the trial chosen on that same dev set" in text
