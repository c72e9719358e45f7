"""The registry: each registered version carries its model card, and the alias `champion` moves
to a new version only when its dev metric beats the champion's."""

import json
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.data.tasks import get
from tuning.finetune import FinetuneConfig, finetune
from tuning.tracking import CHAMPION, register_best


@pytest.fixture(scope="module")
def fine_tuned(task_checkpoint, sst2, tmp_path_factory):
    out = tmp_path_factory.mktemp("registry") / "model"
    finetune(get("sst-2"), sst2, task_checkpoint, FinetuneConfig(batch_size=16, max_steps=2), out=out)
    return out


def test_the_champion_moves_only_on_a_better_metric_and_every_version_has_its_card(
    fine_tuned, mlflow_uri, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # the runs' artifacts land here
    client = MlflowClient(mlflow_uri)
    exp = client.create_experiment("gpt1-finetune-sst-2")
    pretrain = client.create_run(
        client.create_experiment("gpt1-pretrain"), tags={"dataset": "s3://b/ds", "prepare_run_id": "p1"}
    )
    summary = [{"ablation": "full", "mean": 0.81, "std": 0.02, "seeds": 3}]

    def register(value: float) -> str:
        run = client.create_run(
            exp, tags={"pretrain_run_id": pretrain.info.run_id, "data_sha256.train": "ab"}
        )
        return register_best(client, get("sst-2"), run.info.run_id, fine_tuned, "accuracy", value, summary)

    champion = lambda: str(client.get_model_version_by_alias("gpt1-sst-2", CHAMPION).version)  # noqa: E731
    assert register(0.80) == "1" and champion() == "1"
    assert "gpt1-sst-2 version 1 is the champion: dev accuracy 0.8000" in capsys.readouterr().out
    assert register(0.70) == "2" and champion() == "1"  # worse: the alias stays
    assert "does not beat the champion, version 1 (0.8000): the alias stays" in capsys.readouterr().out
    assert register(0.80) == "3" and champion() == "1"  # a tie is no better
    assert register(math.nan) == "4" and champion() == "1"  # no metric never wins
    assert register(0.90) == "5" and champion() == "5"
    assert "is the champion: dev accuracy 0.9000 (was version 1, 0.8000)" in capsys.readouterr().out

    card = client.get_model_version("gpt1-sst-2", "5").description
    assert card.startswith("# gpt1-sst-2 version 5") and "dev accuracy **0.9000**" in card
    assert "- dataset: `s3://b/ds`" in card and "prepare run" in card and "data sha256 (train): `ab`" in card
    assert "| full | 0.8100 | 0.0200 | 3 |" in card and "`sentence`" in card
    assert "## Known deviations from the released code" in card
    # The best trial's score beside its settings' spread over seeds; an example curl can send;
    # the ledger as one Markdown list (items and their indented continuation lines).
    assert (
        "dev accuracy **0.9000**, chosen on that same dev set. Its settings over 3 seeds: 0.8100 ± 0.0200"
        in card
    )
    curl = next(line for line in card.splitlines() if line.startswith("curl "))
    assert json.loads(curl.split(" -d '", 1)[1].rstrip("'")) == {"sentence": "the sentence"}
    ledger = card.split("## Known deviations from the released code\n\n", 1)[1].strip().splitlines()
    assert ledger[0].startswith("- AdamW") and all(x.startswith(("- ", "  ")) for x in ledger), ledger[:4]
    assert not any(x.startswith("- - ") for x in ledger)
    # The same card as README.md beside the registered model.
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        artifact_uri="models:/gpt1-sst-2@champion",
        dst_path=str(tmp_path / "dl"),
        tracking_uri=mlflow_uri,
        registry_uri=mlflow_uri,
    )
    assert (Path(local) / "README.md").read_text() == card


def test_two_sweeps_finishing_together_leave_the_better_model_champion(
    fine_tuned, mlflow_uri, tmp_path, monkeypatch
):
    """The alias is a compare-and-set: whatever order two registrations interleave in, the better
    version holds it at the end (the probe saw 0.1 left as champion over 0.9)."""
    import threading

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(mlflow_uri)
    exp = client.create_experiment("gpt1-finetune-sst-2")
    for rnd in range(6):
        if rnd % 2:  # every other round races to create the first alias, where the store's unique key bites
            client.delete_registered_model_alias("gpt1-sst-2", CHAMPION)
        start = threading.Barrier(2)
        versions, failures = {}, []

        def finish(value: float, start=start, versions=versions, failures=failures):
            own = MlflowClient(mlflow_uri)  # each sweep its own client, as two processes would have
            run = own.create_run(exp).info.run_id
            start.wait()
            try:
                versions[value] = register_best(own, get("sst-2"), run, fine_tuned, "accuracy", value)
            except Exception as err:  # a thread's exception would otherwise be only a warning
                failures.append(repr(err))

        threads = [threading.Thread(target=finish, args=(v,)) for v in (0.1 + rnd / 100, 0.9 + rnd / 100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, (rnd, failures)
        champion = client.get_model_version_by_alias("gpt1-sst-2", CHAMPION)
        assert str(champion.version) == versions[0.9 + rnd / 100], (rnd, versions)
