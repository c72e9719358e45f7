"""generate: greedy and sampled continuation, stopping at n_ctx or an end token; the KV cache."""

import pytest
import torch

from model.generate import filter_logits


def greedy_by_hand(gpt, ids, n):
    for _ in range(n):
        ids = torch.cat([ids, gpt(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


def test_greedy_matches_repeated_argmax(tiny, ids):
    prompt = ids[:, :5]
    out = tiny.generate(prompt, 8, temperature=0)
    assert out.shape == (3, 13) and torch.equal(out[:, :5], prompt)
    assert torch.equal(out, greedy_by_hand(tiny, prompt, 8))


def test_top_k_one_and_tiny_top_p_are_greedy(tiny, ids):
    prompt = ids[:, :5]
    greedy = tiny.generate(prompt, 6, temperature=0)
    assert torch.equal(tiny.generate(prompt, 6, top_k=1), greedy)
    assert torch.equal(tiny.generate(prompt, 6, top_p=1e-6), greedy)


def test_sampling_is_seeded_and_varies(tiny, ids):
    prompt = ids[:, :5]
    a = tiny.generate(prompt, 10, temperature=1.5, generator=torch.Generator().manual_seed(0))
    b = tiny.generate(prompt, 10, temperature=1.5, generator=torch.Generator().manual_seed(0))
    c = tiny.generate(prompt, 10, temperature=1.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_filter_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.equal(filter_logits(logits, top_k=2).isinf(), torch.tensor([[True, False, False, True]]))
    p = logits.softmax(-1)[0]  # about [0.087, 0.644, 0.237, 0.032]
    kept = ~filter_logits(logits, top_p=0.7).isinf()
    assert kept.tolist() == [[False, True, True, False]] and p[1] < 0.7 <= p[1] + p[2]


def test_stops_at_n_ctx_and_end_token(tiny, ids):
    n_ctx = tiny.config.n_ctx
    long = torch.randint(0, 100, (1, n_ctx - 3))
    assert tiny.generate(long, 50, temperature=0).shape == (1, n_ctx)
    prompt = ids[:2, :5]
    greedy = tiny.generate(prompt, 8, temperature=0)
    end = int(greedy[0, 6])  # make row 0's second new token the end token
    out = tiny.generate(prompt, 8, temperature=0, end_token=end)
    assert out[0, 6] == end and (out[0, 6:] == end).all()
    row1_end = (greedy[1, 5:] == end).nonzero()
    stop = 5 + int(row1_end[0]) + 1 if len(row1_end) else 13
    assert out.shape[1] == min(stop, 13)
    assert tiny.training is False


def test_the_kv_cache_gives_the_recomputed_tokens_and_logits(tiny, ids):
    from model import KVCache

    prompt = ids[:, :5]
    for sampling in ({"temperature": 0}, {"temperature": 1.3, "top_k": 20}):
        with_cache = tiny.generate(prompt, 12, generator=torch.Generator().manual_seed(3), **sampling)
        without = tiny.generate(
            prompt, 12, generator=torch.Generator().manual_seed(3), use_cache=False, **sampling
        )
        assert torch.equal(with_cache, without), sampling
    # The logits themselves: the prompt at once, then one token at a time (or a few), as one
    # pass computes them; every step on the same preallocated buffers.
    tiny.eval()
    full = tiny(ids[:, :12])
    cache = KVCache(tiny.config.n_layer, tiny.config.n_ctx)
    steps = [tiny(ids[:, :5], cache=cache)] + [tiny(ids[:, t : t + 1], cache=cache) for t in range(5, 9)]
    buffers = cache.keys[0]
    steps.append(tiny(ids[:, 9:12], cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 12 and cache.keys[0] is buffers  # written in place, never grown
    assert buffers.shape == (ids.size(0), tiny.config.n_head, tiny.config.n_ctx, 16)
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        tiny(ids[:, :1].repeat(1, tiny.config.n_ctx - 11), cache=cache)


def test_gpt1_generate_prints_seeded_samples(task_checkpoint, capsys):
    from gpt1.cli import main

    args = [
        "generate",
        "--checkpoint",
        str(task_checkpoint),
        "--prompt",
        "the film was",
        "--max-new-tokens",
        "12",
    ]
    assert main([*args, "--num-samples", "2", "--temperature", "1.0", "--seed", "5"]) == 0
    first = capsys.readouterr().out
    assert first.count("--- sample ") == 2 and "</w>" not in first
    assert main([*args, "--num-samples", "2", "--temperature", "1.0", "--seed", "5"]) == 0
    assert capsys.readouterr().out == first  # a function of the seed
    assert main([*args, "--num-samples", "2", "--temperature", "1.0", "--seed", "6"]) == 0
    assert capsys.readouterr().out != first


def test_a_sample_that_stops_short_says_why(task_checkpoint, capsys):
    from gpt1.cli import main
    from model import GPT

    n_ctx = GPT.from_pretrained(task_checkpoint).config.n_ctx
    args = [
        "generate",
        "--checkpoint",
        str(task_checkpoint),
        "--prompt",
        "the film was",
        "--temperature",
        "0",
    ]
    assert main([*args, "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().err == ""  # all four came
    assert main([*args, "--max-new-tokens", str(n_ctx)]) == 0
    out = capsys.readouterr()
    assert (
        f"stopped before --max-new-tokens {n_ctx}: the model's context of {n_ctx} tokens was full" in out.err
    )
    assert "stopped" not in out.out


def test_the_released_vocabulary_decodes_to_words_with_spaces(tmp_path, capsys):
    from corpus_gen import released_vocabulary

    from gpt1.cli import main
    from model import GPT, GPTConfig
    from pipeline.data.tokenizer import encode_texts, load_tokenizer

    d = released_vocabulary(tmp_path / "release")
    tok = load_tokenizer(d)
    # The released encoder's words (spaCy, lower-cased), each ending in </w>: decoded with spaces.
    ids = encode_texts(tok, ["The movie was GREAT"])[0]
    assert len(ids) > 4 and tok.decode(ids) == "the movie was great"
    torch.manual_seed(0)
    GPT(GPTConfig.preset("tiny", vocab_size=tok.get_vocab_size())).save_pretrained(d)
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(d),
                "--prompt",
                "the movie",
                "--max-new-tokens",
                "20",
                "--temperature",
                "0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.strip()
    words = out.split(" ")
    assert len(words) >= 2 and "</w>" not in out and all(words), out


def test_generate_bad_input_is_one_line(task_checkpoint, tmp_path, capsys):
    import shutil

    from gpt1.cli import main

    def refused(args: list[str], expected: str) -> None:
        assert main(["generate", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err

    long = " ".join(["great"] * 200)  # tiny's n_ctx is 64
    refused(["--checkpoint", str(task_checkpoint), "--prompt", long], "expected at most 63 tokens")
    bare = tmp_path / "no-tokenizer"
    shutil.copytree(task_checkpoint, bare)
    (bare / "tokenizer.json").unlink()
    refused(["--checkpoint", str(bare), "--prompt", "hello"], "holds no tokenizer")
    refused(["--checkpoint", str(tmp_path / "nope"), "--prompt", "hello"], "no such model directory")
    refused(["--checkpoint", str(task_checkpoint), "--prompt", "hi", "--top-p", "1.5"], "--top-p 1.5")


def test_decode_steps_meet_one_shape_per_64_tokens():
    from model import KVCache

    cache = KVCache(n_layer=1, n_ctx=200)
    shapes = set()
    for length in range(0, 199):
        cache.length = length
        shapes.add(tuple(cache.mask(1, "cpu").shape))
    assert shapes == {(1, 64), (1, 128), (1, 192), (1, 200)}  # not 199 shapes, one per length
    cache.length = 70
    m = cache.mask(3, "cpu")  # 3 new tokens: each sees the 70 held and the new ones up to itself
    assert m.shape == (3, 128) and m.sum(1).tolist() == [71, 72, 73]
