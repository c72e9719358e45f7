"""The LSTM baseline (Table 5, Figure 2): the network's contract beside the Transformer's, its
files, its task heads, and pretraining through the same Ray Train loop with exact resume."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from corpus_gen import documents

from model import LSTMLM, GPTConfig, GPTForTask, TaskHead, build, from_pretrained
from pipeline.configio import load
from pipeline.data.prepare import PrepareConfig, prepare
from pipeline.train.pretrain import PRESETS_DIR, PretrainConfig, pretrain


@pytest.fixture
def lstm() -> LSTMLM:
    torch.manual_seed(0)
    return build(GPTConfig.preset("lstm-tiny"))


def test_the_paper_lstm_is_one_layer_of_2048_units_with_the_transformers_embedding():
    cfg = GPTConfig.preset("lstm")
    net = build(GPTConfig.preset("lstm", vocab_size=64, n_ctx=8))
    assert isinstance(net, LSTMLM) and cfg.arch == "lstm" and cfg.n_layer == 1 and cfg.lstm_units == 2048
    assert cfg.n_embd == GPTConfig.preset("gpt1").n_embd and cfg.n_ctx == 512
    assert net.num_params() == net.config.n_params()  # counted without building it, as for GPT


def test_an_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="arch 'gru': expected one of transformer, lstm"):
        GPTConfig(arch="gru")


def test_a_state_sees_only_the_tokens_before_it(lstm, ids):
    lstm.eval()
    full = lstm(ids)
    assert full.shape == (*ids.shape, lstm.config.vocab_size)
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % lstm.config.vocab_size
    assert torch.allclose(lstm(changed)[:, :10], full[:, :10], atol=1e-6)
    assert not torch.allclose(lstm(changed)[:, 10:], full[:, 10:])


def test_right_padding_leaves_the_real_tokens_alone_and_left_padding_is_refused(lstm, ids):
    lstm.eval()
    mask = torch.ones_like(ids)
    mask[:, 12:] = 0
    assert torch.allclose(lstm(ids, mask)[:, :12], lstm(ids[:, :12]), atol=1e-6)
    with pytest.raises(ValueError, match="padding on the right only"):
        lstm(ids, mask.flip(-1))


def test_saved_and_loaded_gives_the_same_network(lstm, ids, tmp_path):
    lstm.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["arch"] == "lstm"
    again = from_pretrained(tmp_path)
    assert isinstance(again, LSTMLM)
    lstm.eval(), again.eval()
    assert torch.equal(lstm(ids), again(ids))
    with pytest.raises(ValueError, match="native format only"):
        lstm.save_pretrained(tmp_path / "hf", format="hf")


def test_generation_with_the_carried_state_equals_running_it_all_again(lstm, ids):
    g = dict(max_new_tokens=8, temperature=0)
    assert torch.equal(lstm.generate(ids[:, :6], **g), lstm.generate(ids[:, :6], use_cache=False, **g))


def test_the_task_heads_read_the_lstm_at_the_extract_token(lstm):
    extract = lstm.config.vocab_size - 1
    ids = torch.randint(0, extract, (2, 3, 10))
    ids[:, :, 6] = extract
    model = GPTForTask(lstm, TaskHead(lstm.config.n_embd, "multiple_choice"), extract)
    out = model(ids, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.l3)
    out.l3.backward()
    assert lstm.lstm.weight_hh_l0.grad.abs().sum() > 0


STEPS = 40


@pytest.mark.slow
def test_lstm_pretrains_through_ray_train_and_resumes_exactly(tmp_path, ray_session, monkeypatch, sst2):
    """gpt1 pretrain --config lstm-tiny: the loss falls, the zero-shot curve is logged (Figure 2,
    right, dashed), and a run resumed from an earlier checkpoint retraces itself step by step."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "corpus.txt").write_text("\n\n".join(documents(600, seed=5)) + "\n")
    prepare(
        [str(tmp_path / "corpus.txt")],
        tmp_path / "data",
        PrepareConfig(n_merges=200, n_ctx=64, val_fraction=0.1, shard_mb=1),
        track=False,
    )
    sets = [f"max_steps={STEPS}", "checkpoint_every=10", "eval_every=20", "keep_checkpoints=4", "log_every=1"]
    cfg = load(
        PretrainConfig(),
        "lstm-tiny",
        PRESETS_DIR,
        [*sets, f"zero_shot=[sst-2={sst2}]", "zero_shot_examples=20"],
    )
    out = pretrain(tmp_path / "data", cfg, workers=1, name="lstm")
    client = MlflowClient()

    def history(run_id, key="loss"):
        h = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
        return {m.step: m.value for m in h}

    first = history(out["run_id"])
    assert sorted(first) == list(range(1, STEPS + 1))
    assert sum(first[s] for s in range(STEPS - 4, STEPS + 1)) < sum(first[s] for s in range(1, 6)) - 2.5
    run = client.get_run(out["run_id"])
    assert run.data.params["model_config.arch"] == "lstm"
    assert sorted(history(out["run_id"], "zero_shot_sst-2_accuracy")) == [20, 40]
    ckpts = sorted((tmp_path / "runs" / "lstm").glob("checkpoint_0*"))
    assert isinstance(from_pretrained(ckpts[-1]), LSTMLM)

    # Resumed at step 20: steps 21-40 again, the same losses to the last bit.
    for c in ckpts:
        if int(c.name.split("_")[1]) > 20:
            shutil.rmtree(c)
    out = pretrain(tmp_path / "data", cfg, workers=1, name="lstm")
    again = history(out["run_id"])
    assert out["metrics"]["step"] == STEPS
    assert [again[s] for s in range(21, STEPS + 1)] == [first[s] for s in range(21, STEPS + 1)]
    assert Path(ckpts[-1]).exists()


def test_an_lstm_exports_natively_and_refuses_the_hugging_face_layout_in_one_line(lstm, tmp_path, capsys):
    from gpt1.cli import main

    lstm.save_pretrained(tmp_path / "src")
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "hf"), "--format", "hf"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "has no Hugging Face layout" in err and len(err.splitlines()) == 1 and not (tmp_path / "hf").exists()
    )
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "native")]) == 0
    assert isinstance(from_pretrained(tmp_path / "native"), LSTMLM)
