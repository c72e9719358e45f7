"""gpt1 evaluate: the sliding window scores each token once; loss, perplexity and bits per byte
equal what is computed by hand for a tiny model; every checkpoint format gives the same figures;
the run is in MLflow with the checkpoint's lineage; bad input is one line."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from corpus_gen import documents, released_vocabulary

from model import GPT, GPTConfig
from pipeline.data.tokenizer import END_OF_DOCUMENT, encode_texts, load_tokenizer
from pipeline.eval.evaluate import evaluate, windows


@pytest.mark.parametrize(
    "n,n_ctx,stride", [(10, 64, 32), (200, 64, 32), (200, 64, 63), (201, 64, 7), (65, 64, 1), (64, 64, 5)]
)
def test_the_window_scores_every_token_once_with_the_stated_context(n, n_ctx, stride):
    scored = []
    for i, (start, end, first) in enumerate(windows(n, n_ctx, stride)):
        assert end - start <= n_ctx and start < first <= end
        scored += range(first, end)
        if i:  # past the first window, every target sees at least n_ctx - stride tokens
            assert first - start >= n_ctx - stride and end - start == n_ctx
    assert scored == list(range(1, n))


def corpus(tmp_path: Path, n_docs: int) -> Path:
    f = tmp_path / "held-out.txt"
    f.write_text("\n\n".join(documents(n_docs, seed=21, max_words=30)) + "\n")
    return f


def by_hand(gpt, tok, text_file: Path, stride: int) -> tuple[float, int, int]:
    """(mean nats, tokens, bytes): every target p scored alone, from its window's tokens before it."""
    docs = text_file.read_text().strip("\n").split("\n\n")
    ids = []
    for d in encode_texts(tok, docs):
        ids += d + [tok.token_to_id(END_OF_DOCUMENT)]
    gpt.eval()
    nats = []
    with torch.no_grad():
        for start, end, first in windows(len(ids), gpt.config.n_ctx, stride):
            for p in range(first, end):
                logits = gpt(torch.tensor([ids[start:p]]))[0, -1]
                nats.append(F.cross_entropy(logits[None], torch.tensor([ids[p]])).item())
    return float(np.mean(nats)), len(ids), sum(len(d.encode()) for d in docs)


def test_figures_equal_those_computed_by_hand(task_checkpoint, tmp_path):
    gpt, tok = GPT.from_pretrained(task_checkpoint), load_tokenizer(task_checkpoint)
    # Short: one window, so perplexity is exp of the plain mean token loss of one forward pass.
    short = corpus(tmp_path, 2)
    r = evaluate(task_checkpoint, [str(short)])
    ids = []
    for d in encode_texts(tok, short.read_text().strip("\n").split("\n\n")):
        ids += d + [tok.token_to_id(END_OF_DOCUMENT)]
    assert len(ids) <= gpt.config.n_ctx and r["tokens"] == len(ids) and r["tokens_scored"] == len(ids) - 1
    gpt.eval()
    with torch.no_grad():
        loss = F.cross_entropy(gpt(torch.tensor([ids]))[0, :-1], torch.tensor(ids[1:])).item()
    assert r["loss"] == pytest.approx(loss, rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    # Longer than n_ctx: windows that move by the stride, against every target scored alone.
    (tmp_path / "long").mkdir()
    long = corpus(tmp_path / "long", 12)
    for stride in (32, 63):
        r = evaluate(task_checkpoint, [str(long)], stride=stride)
        mean, n_tokens, n_bytes = by_hand(gpt, tok, long, stride)
        assert r["tokens"] == n_tokens > 2 * gpt.config.n_ctx and r["bytes"] == n_bytes
        assert r["loss"] == pytest.approx(mean, rel=1e-5)
        assert r["bits_per_byte"] == pytest.approx(mean / math.log(2) * n_tokens / n_bytes, rel=1e-5)


def to_release(gpt: GPT, d: Path) -> None:
    """gpt's weights in the original OpenAI release's files (the inverse of model/weights.py's reader)."""
    from model.weights import _CONV1D, _OPENAI_BLOCK

    sd = gpt.state_dict()
    arrays = [sd["positions_embed.weight"], sd["tokens_embed.weight"]]
    for i in range(gpt.config.n_layer):
        for name in _OPENAI_BLOCK:
            a = sd[f"h.{i}.{name}"]
            arrays.append(a.t().unsqueeze(0) if _CONV1D.search("." + name) else a)
    arrays = [a.numpy().astype(np.float32) for a in arrays]
    (d / "params_shapes.json").write_text(json.dumps([list(a.shape) for a in arrays]))
    for i, part in enumerate(np.array_split(np.concatenate([a.ravel() for a in arrays]), 10)):
        np.save(d / f"params_{i}.npy", part)


def test_every_checkpoint_format_gives_the_same_figures(tmp_path):
    release = released_vocabulary(tmp_path / "release")
    tok = load_tokenizer(release)
    torch.manual_seed(0)
    # n_head 12, as the release's format implies. Its reader adds the released train.py's three
    # special rows; the other formats then hold that very network.
    to_release(GPT(GPTConfig.preset("tiny", vocab_size=tok.get_vocab_size(), n_head=12, n_embd=48)), release)
    gpt = GPT.from_pretrained(release)
    assert gpt.config.vocab_size == tok.get_vocab_size() + 3
    for fmt in ("native", "hf"):
        gpt.save_pretrained(tmp_path / fmt, format=fmt)
        for f in ("encoder_bpe_40000.json", "vocab_40000.bpe"):
            shutil.copy(release / f, tmp_path / fmt / f)
    text = tmp_path / "reviews.txt"
    text.write_text("the movie was great\n\nthe film was awful and long\n\nwhat a great story\n")
    results = [evaluate(tmp_path / fmt, [str(text)]) for fmt in ("native", "hf")]
    results.append(evaluate(release, [str(text)]))
    assert results[0]["tokens"] > 10
    for r in results[1:]:
        assert r["tokens"] == results[0]["tokens"]
        assert r["loss"] == pytest.approx(results[0]["loss"], rel=1e-5)


def test_gpt1_evaluate_logs_to_mlflow_and_refuses_bad_input(task_checkpoint, tmp_path, mlflow_uri, capsys):
    from mlflow.tracking import MlflowClient

    from gpt1.cli import main
    from pipeline.tracking import weights_sha256

    text = corpus(tmp_path, 20)
    assert (
        main(["evaluate", "--checkpoint", str(task_checkpoint), "--corpus", str(text), "--stride", "16"]) == 0
    )
    out = capsys.readouterr().out
    assert "bits per byte" in out and "moving 16" in out
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gpt1-evaluate").experiment_id])
    assert run.data.tags["checkpoint_sha256"] == weights_sha256(task_checkpoint)
    assert run.data.params["stride"] == "16"
    r = evaluate(task_checkpoint, [str(text)], stride=16)
    assert run.data.metrics["perplexity"] == pytest.approx(r["perplexity"])

    def refused(args: list[str], expected: str) -> None:
        assert main(["evaluate", "--no-mlflow", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err

    bare = tmp_path / "bare"
    shutil.copytree(task_checkpoint, bare)
    (bare / "tokenizer.json").unlink()
    refused(["--checkpoint", str(bare), "--corpus", str(text)], "holds no tokenizer")
    refused(["--checkpoint", str(task_checkpoint), "--corpus", str(text), "--stride", "0"], "--stride 0")
    refused(["--checkpoint", str(task_checkpoint), "--corpus", str(tmp_path / "nope.txt")], "nope.txt")
