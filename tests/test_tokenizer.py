"""pipeline.data.tokenizer: GPT-1's released format against transformers, training, loading."""
import json
import random
from pathlib import Path

import pytest

from pipeline.data.tokenizer import (END_OF_DOCUMENT, RESERVED_TOKENS, gpt1_tokenizer, load_tokenizer,
                                n_merges, save_tokenizer, train_tokenizer)

SHARED_VOCAB = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gpt1-vocab"

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
         "judges' jackets; \"Hello,\" said Mr. O'Neil -- at 10:30 on 2018-06-11 (really!)").split()


def _lexicon(n: int = 3000) -> list[str]:
    rng = random.Random(99)
    syllables = [c + v for c in "bcdfghklmnprstvwy" for v in ("a", "e", "i", "o", "u", "ou", "ea")]
    return WORDS + ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(n)]


LEXICON = _lexicon()


def english(n: int, seed: int) -> list[str]:
    """English-like sentences: real words and punctuation, and pronounceable made-up words,
    with a Zipf-like skew so that BPE has many merges to learn."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(LEXICON))]
    return [" ".join(rng.choices(LEXICON, weights, k=rng.randint(3, 30))).capitalize() + "."
            for _ in range(n)]


def write_release(tok, d: Path) -> None:
    """Write a trained tokenizer in the released format: encoder json + '#version' merges file."""
    spec = json.loads(tok.to_str())["model"]
    (d / "encoder_bpe_40000.json").write_text(json.dumps(spec["vocab"]))
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["merges"]]
    (d / "vocab_40000.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def reference(d: Path):
    from transformers import OpenAIGPTTokenizer
    # keyword names matter: vocab_file=/merges_file= silently give a one-token vocabulary
    return OpenAIGPTTokenizer(vocab=str(d / "encoder_bpe_40000.json"), merges=str(d / "vocab_40000.bpe"))


def test_released_format_ids_equal_transformers(tmp_path):
    write_release(train_tokenizer(english(2000, 0), n_merges=300), tmp_path)
    ours, ref = gpt1_tokenizer(tmp_path), reference(tmp_path)
    texts = english(200, 1) + ["Tabs\tand\nnewlines,   spaces; ÀCCENTS é and CAPS!", "x" * 50]
    assert len(ref.get_vocab()) > 300
    for t in texts:
        assert ours.encode(t).ids == ref(t)["input_ids"], t


@pytest.mark.skipif(not SHARED_VOCAB.exists(), reason="the released GPT-1 vocabulary is not at hand")
def test_the_released_gpt1_vocabulary_equals_transformers():
    ours, ref = gpt1_tokenizer(SHARED_VOCAB), reference(SHARED_VOCAB)
    assert ours.encode("hello world").ids == [3570, 1276]
    for t in english(300, 2) + ["It's 3:45pm -- isn't it?  \"Quoted\" (parenthesised) e-mail@x.org"]:
        assert ours.encode(t).ids == ref(t)["input_ids"], t
    assert [ours.token_to_id(t) for t in RESERVED_TOKENS] == [40478, 40479, 40480, 40481]


def test_training_keeps_exactly_n_merges_and_reserves_tokens():
    tok = train_tokenizer(iter(english(3000, 3)), n_merges=200)
    assert n_merges(tok) == 200
    ids = [tok.token_to_id(t) for t in RESERVED_TOKENS]
    assert ids == list(range(tok.get_vocab_size() - 4, tok.get_vocab_size()))
    enc = tok.encode(f"The lazy dog{END_OF_DOCUMENT}A new one")
    assert tok.token_to_id(END_OF_DOCUMENT) in enc.ids  # matched before lower-casing/splitting
    assert tok.decode(tok.encode("the quick brown fox").ids) == "the quick brown fox"
    small = train_tokenizer(["tiny tiny corpus corpus"], n_merges=10_000)
    assert 0 < n_merges(small) < 10_000  # a small corpus cannot make more


def test_training_consumes_a_stream_once():
    consumed = []

    def stream():
        for t in english(500, 4):
            consumed.append(t)
            yield t

    train_tokenizer(stream(), n_merges=50)
    assert len(consumed) == 500


def test_load_tokenizer_forms(tmp_path):
    tok = train_tokenizer(english(500, 5), n_merges=100)
    sha = save_tokenizer(tok, tmp_path / "tokenizer.json")
    assert len(sha) == 64
    for p in (tmp_path / "tokenizer.json", tmp_path):
        assert load_tokenizer(p).encode("the lazy dog").ids == tok.encode("the lazy dog").ids
    release = tmp_path / "release"
    release.mkdir()
    write_release(tok, release)
    assert load_tokenizer(release).token_to_id(END_OF_DOCUMENT) is not None
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(_empty(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d
