"""The network: shapes, causality, padding, tying, size, init, dropout."""

import pytest
import torch

from model import GPT, GPTConfig
from model.dropout import dropout


def test_shapes(tiny, ids):
    cfg = tiny.config
    assert tiny(ids).shape == (3, 20, cfg.vocab_size)
    assert tiny.hidden_states(ids).shape == (3, 20, cfg.n_embd)
    assert tiny(ids).dtype == torch.float32
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        tiny(torch.zeros(1, cfg.n_ctx + 1, dtype=torch.long))


def test_causality(tiny, ids):
    base = tiny(ids)
    for t in (0, 7, 19):
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 1) % tiny.config.vocab_size
        out = tiny(changed)
        assert torch.equal(out[:, :t], base[:, :t]), f"changing token {t} moved earlier logits"
        assert not torch.allclose(out[:, t], base[:, t]), "the changed position itself must move"


def test_causality_holds_in_training_mode_with_dropout(tiny, ids):
    # Dropout (attention dropout included) must not open a path from later tokens.
    tiny.train()
    torch.manual_seed(5)
    base = tiny(ids)
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % tiny.config.vocab_size
    torch.manual_seed(5)
    out = tiny(changed)
    assert torch.equal(out[:, :10], base[:, :10])
    assert not torch.allclose(out[:, 10:], base[:, 10:])


def test_padding_does_not_change_extract_state(tiny):
    seq = torch.tensor([[5, 9, 3, 17, 4, 2]])  # last token stands for the extract token
    alone = tiny.hidden_states(seq)[0, -1]
    pad = torch.full((1, 4), 0)
    longer = torch.randint(0, 500, (1, 10))
    ones, zeros = torch.ones(1, 6), torch.zeros(1, 4)
    # right padding, in a batch with a longer sequence
    right = torch.cat([torch.cat([seq, pad], 1), longer])
    right_mask = torch.cat([torch.cat([ones, zeros], 1), torch.ones(1, 10)])
    h = tiny.hidden_states(right, right_mask)
    torch.testing.assert_close(h[0, 5], alone, atol=1e-5, rtol=1e-5)
    # left padding: positions count real tokens only, and pad keys are masked
    left = torch.cat([torch.cat([pad + 7, seq], 1), longer])
    left_mask = torch.cat([torch.cat([zeros, ones], 1), torch.ones(1, 10)])
    h = tiny.hidden_states(left, left_mask)
    torch.testing.assert_close(h[0, -1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h[1], tiny.hidden_states(longer)[0], atol=1e-5, rtol=1e-5)
    assert not torch.isnan(h).any()
    # without the mask the left pad tokens would leak in: the mask is doing the work
    assert not torch.allclose(tiny.hidden_states(left)[0, -1], alone, atol=1e-3)


def test_tied_embedding(tiny, ids):
    square = [
        n for n, p in tiny.named_parameters() if p.shape == (tiny.config.vocab_size, tiny.config.n_embd)
    ]
    assert square == ["tokens_embed.weight"], "the output layer must not have its own matrix"
    h = tiny.hidden_states(ids)
    torch.testing.assert_close(tiny(ids), h @ tiny.tokens_embed.weight.T)
    # A token that never occurs in the input still gets a gradient: through the output layer.
    absent = next(t for t in range(tiny.config.vocab_size) if not (ids == t).any())
    tiny(ids).logsumexp(-1).sum().backward()
    assert tiny.tokens_embed.weight.grad[absent].abs().sum() > 0


def test_gpt1_parameter_count():
    with torch.device("meta"):
        gpt = GPT(GPTConfig.preset("gpt1"))
    released = 116_534_784  # the sum of the shapes in params_shapes.json
    special = 3 * 768
    assert gpt.num_params() == released + special
    assert abs(gpt.num_params() - 116.5e6 - special) / (116.5e6 + special) < 1e-3
    cfg = gpt.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_ctx, cfg.vocab_size) == (12, 768, 12, 512, 40481)


def test_post_ln_block_structure(tiny):
    # h = LN(x + Attn(x)); out = LN(h + MLP(h)): the block's output is a LayerNorm output.
    tiny.eval()
    block = tiny.h[0]
    x = torch.randn(2, 5, tiny.config.n_embd)
    h = block.ln_1(x + block.attn(x))
    expected = block.ln_2(h + block.mlp(h))
    torch.testing.assert_close(block(x), expected)
    out = block(x)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)  # LN gains are 1 at init


def test_init_statistics():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.preset("mini"))
    w = gpt.h[0].mlp.c_fc.weight
    assert abs(w.std().item() - 0.02) < 1e-3
    assert gpt.h[0].mlp.c_fc.bias.abs().sum() == 0
    assert torch.equal(gpt.h[0].ln_1.weight, torch.ones_like(gpt.h[0].ln_1.weight))


def test_flops_per_token_follows_nanogpt_formula(tiny):
    cfg = tiny.config
    n = tiny.num_params() - cfg.n_ctx * cfg.n_embd
    assert tiny.flops_per_token(10) == 6 * n + 12 * cfg.n_layer * cfg.n_embd * 10


def test_cpu_dropout_rate_and_scale():
    torch.manual_seed(0)
    x = torch.ones(1_000_000)
    y = dropout(x, 0.1)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.9) < 2e-3
    assert abs(y.mean().item() - 1.0) < 3e-3  # unbiased: kept values are scaled up
    assert torch.equal(dropout(x, 0.1, training=False), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    # two draws differ, the same seed repeats
    torch.manual_seed(1)
    a = dropout(x, 0.5)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x, 0.5))
    assert not torch.equal(a, dropout(x, 0.5))


def test_training_mode_is_stochastic_and_eval_is_not(tiny, ids):
    assert torch.equal(tiny(ids), tiny(ids))
    tiny.train()
    assert not torch.equal(tiny(ids), tiny(ids))
