"""The four input transformations, token by token; truncation; padding; missing special tokens."""

import pytest
import torch

from pipeline.data.tasks import Example, TaskError
from pipeline.data.tokenizer import DELIMITER, EXTRACT, START, train_tokenizer
from tuning.encode import Encoder, collate


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(
        ["the cat sat on the mat", "a dog ran in the park", "is it raining today"], n_merges=40
    )


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
    (e,) = Encoder(tok, "multiple_choice", 64).encode(
        [Example(("the cat sat",), 1, "0", ("a dog ran", "is it"))]
    )
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
    enc = Encoder(tok, "multiple_choice", 64).encode(
        [
            Example(("the cat",), 0, "0", ("a dog", "is it raining today")),
            Example(("a dog ran in the park",), 1, "1", ("the mat", "it")),
        ]
    )
    x, mask, y = collate(enc)
    T = max(len(q) for e in enc for q in e.sequences)
    assert x.shape == mask.shape == (2, 2, T) and y.tolist() == [0, 1]
    assert mask[0, 1].sum() == len(enc[0].sequences[1]) and x[0, 0, mask[0, 0].sum() :].eq(0).all()
    x, mask, y = collate(
        Encoder(tok, "classification", 64).encode([Example(("it",), 0.25, "0")]), regression=True
    )
    assert x.shape == (1, len(ids(tok, "it")) + 2) and y.dtype == torch.float32


def test_a_vocabulary_without_the_special_tokens_is_refused(tok):
    with pytest.raises(TaskError, match="lacks the special token"):
        Encoder(tok, "classification", 64, vocab_size=tok.token_to_id(START))


def test_multiple_choice_cuts_the_document_alone_and_counts_each_example_once(tok):
    """RACE as the paper has it, [z; q; $; a_k]: the question and every answer stay whole; the
    article is cut, keeping its beginning, to what they leave."""
    s, d, x = (tok.token_to_id(t) for t in (START, DELIMITER, EXTRACT))
    article = " ".join(["the cat sat on the mat"] * 20)
    question, answers = "is it raining today", ("a dog ran in the park", "the cat", "it", "a dog")
    n_ctx = 32
    (e,) = Encoder(tok, "multiple_choice", n_ctx).encode([Example((article, question), 2, "0", answers)])
    q, longest = ids(tok, question), max(len(ids(tok, a)) for a in answers)
    kept = n_ctx - 3 - len(q) - longest
    assert e.truncated == 1 and len(e.sequences) == 4
    for seq, a in zip(e.sequences, answers, strict=True):
        assert seq == [s, *ids(tok, article)[:kept], *q, d, *ids(tok, a), x]
        assert len(seq) <= n_ctx
    # Story Cloze's layout (a story and its endings): the same rule; nothing cut when it fits.
    (e,) = Encoder(tok, "multiple_choice", 64).encode([Example(("the cat sat",), 0, "1", ("a dog", "it"))])
    assert e.truncated == 0 and e.sequences[0] == [s, *ids(tok, "the cat sat"), d, *ids(tok, "a dog"), x]


@pytest.mark.parametrize("released", [False, True])
def test_reserved_strings_in_text_are_text(tok, tmp_path, released):
    """A task text holding _start_, _delimiter_, _classify_ or _end_of_document_ never yields those
    ids: each sequence has exactly one start, its own delimiters and one extract, at the end."""
    from pipeline.data.tokenizer import END_OF_DOCUMENT, gpt1_tokenizer

    if released:  # the same vocabulary, as the released encoder reads it
        import json

        spec = json.loads(tok.to_str())["model"]
        vocab = {t: i for t, i in spec["vocab"].items() if not t.startswith("_") or t.endswith("</w>")}
        (tmp_path / "encoder_bpe_40000.json").write_text(json.dumps(vocab))
        merges = [" ".join(m) if isinstance(m, list) else m for m in spec["merges"]]
        (tmp_path / "vocab_40000.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = gpt1_tokenizer(tmp_path)
    reserved = {tok.token_to_id(t) for t in (START, DELIMITER, EXTRACT, END_OF_DOCUMENT)}
    s, d, x = (tok.token_to_id(t) for t in (START, DELIMITER, EXTRACT))
    a, b = f"the {EXTRACT} cat {START}sat", f"a dog{DELIMITER} ran {END_OF_DOCUMENT}"
    examples = {
        "classification": Example((a,), 0, "0"),
        "entailment": Example((a, b), 0, "0"),
        "similarity": Example((a, b), 0.5, "0"),
        "multiple_choice": Example((a, b), 0, "0", (b, a)),
    }
    for transformation, ex in examples.items():
        (e,) = Encoder(tok, transformation, 64).encode([ex])
        for seq in e.sequences:
            assert seq[0] == s and seq[-1] == x, transformation
            inner = seq[1:-1]
            assert not (set(inner) - {d}) & reserved, transformation
            # the transformation's own delimiter: none for one segment, one between two
            assert inner.count(d) == (transformation != "classification"), transformation
            assert len(inner) > 10, transformation  # the reserved strings became ordinary pieces


@pytest.mark.parametrize("transformation", ["classification", "similarity", "multiple_choice"])
def test_batches_padded_to_a_length_bucket_give_the_longest_padded_results(transformation):
    from model import GPT, GPTConfig, GPTForTask, TaskHead
    from tuning.encode import Encoded

    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", vocab_size=515, n_ctx=100)  # 100: the last bucket is n_ctx itself
    net = GPTForTask(GPT(cfg), TaskHead(cfg.n_embd, transformation), extract_token=514).eval()
    S = {"classification": 1, "similarity": 2, "multiple_choice": 3}[transformation]
    for lengths in ((5, 9, 13), (70, 3, 41), (98, 2, 60)):
        batch = [
            Encoded([[*torch.randint(0, 500, (n - 1 + s,)).tolist(), 514] for s in range(S)], b % 2, 0)
            for b, n in enumerate(lengths)
        ]
        x, mask, y = collate(batch)
        bx, bmask, by = collate(batch, n_ctx=cfg.n_ctx)
        assert bx.shape[-1] == min(-(-x.shape[-1] // 64) * 64, 100)
        assert torch.equal(bx[..., : x.shape[-1]], x) and not bmask[..., x.shape[-1] :].any()
        a, b = net(x, mask, y), net(bx, bmask, by)
        for got, want in ((b.logits, a.logits), (b.l1, a.l1), (b.l2, a.l2)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_batches_are_bucketed_on_a_gpu_and_padded_to_the_longest_on_a_cpu():
    """A length bucket pays where shapes repeat matter (CUDA); on a CPU a padded token is only work."""
    from model.config import bucketed

    assert bucketed(64, "cuda") == 64 and bucketed(64, "cuda:1") == 64
    assert bucketed(64, "cpu") is None and bucketed(64, torch.device("cpu")) is None
