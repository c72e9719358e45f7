"""gpt1 serve refuses what it cannot serve before Ray starts, each as one line and exit 2: a
port that is not one or is taken, a listening address beyond loopback without a token, and a
damaged model. What one request may ask of a replica is bounded (tuning/serve.py); the running
server's side of it is in test_serve.py."""

import json
import socket

import pytest
from test_faults_inputs import one_line

from gpt1.cli import main as gpt1


def test_serve_refuses_a_port_that_is_not_one_or_is_taken(task_checkpoint, capsys):
    for port in ("99999", "0", "-1"):
        assert gpt1(["serve", "--model", str(task_checkpoint), "--port", port]) == 2
        one_line(capsys, f"--port {port}", "expected a port from 1 to 65535")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert gpt1(["serve", "--model", str(task_checkpoint), "--port", port]) == 2
        one_line(capsys, f"--port {port}", "cannot listen", "choose another --port")


def test_serve_beyond_loopback_refuses_to_start_without_a_token(task_checkpoint, capsys, monkeypatch):
    monkeypatch.delenv("GPT1_SERVE_TOKEN", raising=False)
    assert gpt1(["serve", "--model", str(task_checkpoint), "--host", "0.0.0.0"]) == 2
    one_line(capsys, "--host 0.0.0.0", "needs a bearer token", "--token")


@pytest.mark.parametrize("damage", ["truncated weights", "corrupt task.json", "corrupt config.json"])
def test_serve_and_predict_say_a_damaged_model_in_one_line(task_checkpoint, tmp_path, capsys, damage):
    import shutil

    from tuning.predict import check_model

    model = tmp_path / "model"
    shutil.copytree(task_checkpoint, model)
    if damage == "truncated weights":
        (weights,) = model.glob("*.safetensors")
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "corrupt config.json":
        (model / "config.json").write_text("{not json")
    else:
        (model / "head.safetensors").write_bytes(b"")
        (model / "task.json").write_text(json.dumps({"task": "x"}))  # no transformation
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    assert gpt1(["serve", "--model", str(model), "--port", port]) == 2
    one_line(capsys, str(model))
    (tmp_path / "in.csv").write_text("sentence\nfine\n")
    assert (
        gpt1(
            [
                "predict",
                "--model",
                str(model),
                "--input",
                str(tmp_path / "in.csv"),
                "--out",
                str(tmp_path / "o.csv"),
            ]
        )
        == 2
    )
    one_line(capsys, str(model))
    assert not (tmp_path / "o.csv").exists()
    with pytest.raises(Exception) as err:
        check_model(model, f"--model {model}")
    assert type(err.value).__name__ == "UserError" and "\n" not in str(err.value)


def test_a_row_is_checked_alone_candidates_count_surrogates_and_control_characters():
    from tuning.inputs import BadRow, example_of

    fields = ("context", "candidates")
    example_of({"context": "c", "candidates": ["a", "b", "c", "d"]}, "multiple_choice", fields, 4)
    for n in (2, 8):  # a model fine-tuned on 4 candidates never answers label 6
        with pytest.raises(BadRow, match=f"holds {n} candidates; the model was fine-tuned on 4"):
            example_of({"context": "c", "candidates": list("abcdefgh"[:n])}, "multiple_choice", fields, 4)
    with pytest.raises(BadRow, match="not valid Unicode"):
        example_of({"sentence": "ok \ud800"}, "classification", ("sentence",))
    with pytest.raises(BadRow, match=r"is empty \(control characters only\)"):
        example_of({"sentence": "\u0000\u200b\u0007"}, "classification", ("sentence",))


def test_one_row_the_tokenizer_refuses_fails_alone(task_checkpoint, sst2, tmp_path):
    """label_rows encodes the rows together; where that fails, one at a time, so that the row at
    fault gets its reason and the others their labels."""
    from pipeline.data.tasks import get
    from tuning.finetune import FinetuneConfig, finetune, load_task_model
    from tuning.predict import label_rows

    finetune(
        get("sst-2"), sst2, task_checkpoint, FinetuneConfig(batch_size=16, max_steps=1), out=tmp_path / "m"
    )
    tm = load_task_model(tmp_path / "m")
    real = tm.encoder.encode

    def picky(examples):
        if any("poison" in e.text[0] for e in examples):
            raise ValueError("the tokenizer refused it")
        return real(examples)

    tm.encoder.encode = picky
    out = label_rows(
        tm,
        [{"sentence": "good film"}, {"sentence": "poison"}, {"sentence": "bad film"}],
        ("sentence",),
        "cpu",
    )
    assert out[0][0] is not None and out[2][0] is not None
    assert out[1] == (None, "cannot be encoded (the tokenizer refused it)")
