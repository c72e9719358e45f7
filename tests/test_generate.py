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
        without = tiny.generate(prompt, 12, generator=torch.Generator().manual_seed(3), use_cache=False, **sampling)
        assert torch.equal(with_cache, without), sampling
    # The logits themselves: the prompt at once, then one token at a time, as one pass computes them.
    tiny.eval()
    full = tiny(ids[:, :9])
    cache = KVCache(tiny.config.n_layer)
    steps = [tiny(ids[:, :5], cache=cache)] + [tiny(ids[:, t:t + 1], cache=cache) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 9
    with pytest.raises(ValueError, match="one token at a time"):
        tiny(ids[:, 9:11], cache=cache)
