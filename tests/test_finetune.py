"""Fine-tuning with L3 = L2 + λ·L1: learns a synthetic task, keeps the best model, refuses bad input."""
import random

import pytest
import torch

from corpus_gen import WORDS
from model import GPT, GPTConfig
from pipeline.tokenizer import save_tokenizer, train_tokenizer
from tuning.finetune import FinetuneConfig, finetune, main
from tuning.tasks import get


def reviews(n: int, seed: int) -> list[tuple[str, str]]:
    """Label 1 when the sentence holds 'great', 0 when it holds 'awful': learnable from one word."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.random() < 0.5
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
        words.insert(rng.randrange(len(words) + 1), "great" if label else "awful")
        out.append((" ".join(words), str(int(label))))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    tok = train_tokenizer([s for s, _ in reviews(300, 9)], n_merges=200)
    torch.manual_seed(0)
    GPT(GPTConfig.preset("tiny", vocab_size=tok.get_vocab_size())).save_pretrained(d)
    save_tokenizer(tok, d / "tokenizer.json")
    return d


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    d = tmp_path_factory.mktemp("sst2")
    for split, n, seed in (("train", 400, 1), ("dev", 200, 2)):
        rows = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in reviews(n, seed)]
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    test = ["index\tsentence"] + [f"{i}\t{s}" for i, (s, _) in enumerate(reviews(50, 3))]
    (d / "test.tsv").write_text("\n".join(test) + "\n")
    return d


def test_finetune_beats_the_majority_class_and_keeps_the_best(checkpoint, sst2, tmp_path):
    cfg = FinetuneConfig(lr=2e-3, batch_size=16, epochs=6, warmup=0.05, eval_every=25)
    seen = []
    best = finetune(get("sst-2"), sst2, checkpoint, cfg, report=lambda m, s: seen.append((s, m)),
                    out=tmp_path / "best")
    gold = [int(line.rsplit("\t", 1)[1]) for line in (sst2 / "dev.tsv").read_text().splitlines()[1:]]
    majority = max(sum(gold), len(gold) - sum(gold)) / len(gold)
    assert best["accuracy"] > majority + 0.2, (best, majority)
    assert [s for s, _ in seen] == list(range(25, 150, 25)) + [150]  # every 25 steps and the end
    assert best["accuracy"] == max(m["accuracy"] for _, m in seen)
    assert best["train_examples"] == 400 and best["dev_examples"] == 200
    gpt = GPT.from_pretrained(tmp_path / "best")  # the kept model is a model directory
    assert (tmp_path / "best" / "head.safetensors").exists() and gpt.config.n_layer == 2
    # The best model's test predictions, in the GLUE submission format.
    lines = (tmp_path / "best" / "SST-2.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 51
    truth = [int("great" in s.split()) for s, _ in reviews(50, 3)]
    pred = [int(line.split("\t")[1]) for line in lines[1:]]
    assert [line.split("\t")[0] for line in lines[1:]] == [str(i) for i in range(50)]
    assert sum(p == t for p, t in zip(pred, truth)) / 50 > 0.7


def test_lambda_zero_and_from_scratch_run(checkpoint, sst2):
    cfg = FinetuneConfig(lr=2e-3, batch_size=32, max_steps=4, lm_coef=0.0)
    assert "accuracy" in finetune(get("sst-2"), sst2, checkpoint, cfg)
    assert "accuracy" in finetune(get("sst-2"), sst2, checkpoint, cfg, from_scratch=True)


def test_cli_errors_are_one_line(checkpoint, tmp_path, capsys):
    code = main(["--task", "sst-2", "--data", str(tmp_path), "--checkpoint", str(checkpoint)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "train.tsv: no such file" in err and len(err.splitlines()) == 1
    code = main(["--task", "nope", "--data", str(tmp_path), "--checkpoint", str(checkpoint)])
    assert code == 2 and "unknown task 'nope'" in capsys.readouterr().err
