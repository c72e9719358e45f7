"""The four input transformations, token by token; truncation; padding; missing special tokens."""
import pytest
import torch

from pipeline.data.tokenizer import DELIMITER, EXTRACT, START, train_tokenizer
from tuning.encode import Encoder, collate
from tuning.tasks import Example, TaskError


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["the cat sat on the mat", "a dog ran in the park", "is it raining today"], n_merges=40)


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def test_each_transformation_token_by_token(tok):
    s, d, x = (tok.token_to_id(t) for t in (START, DELIMITER, EXTRACT))
    a, b, c = ids(tok, "the cat sat"), ids(tok, "a dog ran"), ids(tok, "is it")

    (e,) = Encoder(tok, "classification", 64).encode([Example(("the cat sat",), 1, "0")])
    assert e.sequences == [[s, *a, x]] and e.label == 1 and e.truncated == 0
    (e,) = Encoder(tok, "entailment", 64).encode([Example(("the cat sat", "a dog ran"), 0, "0")])
    assert e.sequences == [[s, *a, d, *b, x]]
    (e,) = Encoder(tok, "similarity", 64).encode([Example(("the cat sat", "a dog ran"), 0.5, "0")])
    assert e.sequences == [[s, *a, d, *b, x], [s, *b, d, *a, x]]  # both orders
    (e,) = Encoder(tok, "multiple_choice", 64).encode([Example(("the cat sat",), 1, "0", ("a dog ran", "is it"))])
    assert e.sequences == [[s, *a, d, *b, x], [s, *a, d, *c, x]]  # one per candidate


def test_truncation_cuts_every_segment_to_the_same_budget_and_counts(tok):
    long = " ".join(["the cat sat on the mat"] * 10)
    n_ctx = 16  # two segments: (16 - 3) // 2 = 6 tokens each, as the released n_ctx // 2 - 2
    (e,) = Encoder(tok, "entailment", n_ctx).encode([Example((long, "a dog"), 0, "0")])
    seq = e.sequences[0]
    assert len(seq) <= n_ctx and e.truncated == 1
    assert seq[1:7] == ids(tok, long)[:6] and seq[-1] == tok.token_to_id(EXTRACT)
    (e,) = Encoder(tok, "similarity", n_ctx).encode([Example((long, long), 0.0, "0")])
    assert e.truncated == 2 and all(len(q) == 15 for q in e.sequences)
    (e,) = Encoder(tok, "classification", n_ctx).encode([Example((long,), 0, "0")])
    assert len(e.sequences[0]) == n_ctx  # one segment: n_ctx - 2 tokens


def test_collate_pads_right_with_a_mask(tok):
    enc = Encoder(tok, "multiple_choice", 64).encode([
        Example(("the cat",), 0, "0", ("a dog", "is it raining today")),
        Example(("a dog ran in the park",), 1, "1", ("the mat", "it"))])
    x, mask, y = collate(enc)
    T = max(len(q) for e in enc for q in e.sequences)
    assert x.shape == mask.shape == (2, 2, T) and y.tolist() == [0, 1]
    assert mask[0, 1].sum() == len(enc[0].sequences[1]) and x[0, 0, mask[0, 0].sum():].eq(0).all()
    x, mask, y = collate(Encoder(tok, "classification", 64).encode([Example(("it",), 0.25, "0")]), regression=True)
    assert x.shape == (1, len(ids(tok, "it")) + 2) and y.dtype == torch.float32


def test_a_vocabulary_without_the_special_tokens_is_refused(tok):
    with pytest.raises(TaskError, match="lacks the special token"):
        Encoder(tok, "classification", 64, vocab_size=tok.token_to_id(START))
