"""The padded token table and the chunked L1: the same logits, losses, gradients, tokens and files
as the unpadded model and the full-logits loss."""

import pytest
import torch

import model.config
from model import GPT, GPTConfig, build, from_pretrained, lm_loss
from model.losses import linear_cross_entropy

# 515 = tiny's 512 + 3 specials: a table padded to 640 rows, as gpt1's 40,481 is to 40,576.
CFG = GPTConfig.preset("tiny", vocab_size=515)


def unpadded(monkeypatch, cfg: GPTConfig, state: dict):
    """The same network built with no padding, holding the same weights."""
    with monkeypatch.context() as m:
        m.setattr(model.config, "VOCAB_MULTIPLE", 1)
        net = build(cfg)
        assert net.tokens_embed.weight.shape[0] == cfg.vocab_size
        net.load_state_dict(state)
    return net.eval()


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_the_padded_table_gives_the_unpadded_models_logits_and_tokens(monkeypatch, arch):
    cfg = CFG if arch == "transformer" else GPTConfig.preset("lstm-tiny", vocab_size=515)
    torch.manual_seed(0)
    net = build(cfg).eval()
    assert net.tokens_embed.weight.shape[0] == 640 == cfg.padded_vocab
    assert GPTConfig().padded_vocab == 40576
    assert net.num_params() == cfg.n_params()  # the padding is no parameter of the model
    ref = unpadded(monkeypatch, cfg, net.state_dict())
    x = torch.randint(0, cfg.vocab_size, (3, 20))
    out = net(x)
    assert out.shape == (3, 20, 515)
    torch.testing.assert_close(out, ref(x), rtol=0, atol=1e-6)
    # Generation: the padding's zero logits never win, even where every real logit is negative:
    # final states of (-1, 0, ...) against rows whose first entry is above 1.
    for m in (net, ref):
        last = m.h[-1].ln_2 if arch == "transformer" else m.proj
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            last.bias[0] = -1.0
            m.tokens_embed.weight[:515, 0] = 1.0 + m.tokens_embed.weight[:515, 0].abs()
    assert (net(x) < 0).all()
    prompt = x[:, :5]
    got = net.generate(prompt, 10, temperature=0)
    assert torch.equal(got, ref.generate(prompt, 10, temperature=0))
    assert int(got.max()) < 515


@pytest.mark.parametrize("fmt", ["native", "hf"])
def test_files_hold_the_real_rows_and_round_trip_exactly(tmp_path, fmt):
    from safetensors.torch import load_file

    torch.manual_seed(1)
    net = GPT(CFG)
    net.save_pretrained(tmp_path, format=fmt)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    table = next(v for k, v in tensors.items() if k.endswith("tokens_embed.weight"))
    assert table.shape == (515, CFG.n_embd)
    back = from_pretrained(tmp_path)
    assert back.tokens_embed.weight.shape[0] == 640
    assert not back.tokens_embed.weight[515:].any()
    a, b = net.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_special_rows_drawn_past_the_vocabulary_fit_in_the_padding():
    torch.manual_seed(2)
    net = GPT(GPTConfig.preset("tiny"))  # 512 rows: no padding to spare
    net.draw_token_rows([512, 513, 514])
    assert net.config.vocab_size == 515 and net.tokens_embed.weight.shape[0] == 640
    assert not net.tokens_embed.weight[515:].any()
    assert net.state_dict()["tokens_embed.weight"].shape[0] == 515
    net.draw_token_rows([515])  # grows within the padding: the table keeps its rows
    assert net.config.vocab_size == 516 and net.tokens_embed.weight.shape[0] == 640


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk", [7, 8192])
def test_the_chunked_l1_equals_the_full_logits_loss_and_its_gradients(reduction, chunk):
    torch.manual_seed(3)
    net = GPT(CFG)
    x = torch.randint(0, CFG.vocab_size, (3, 17))

    def grads(loss):
        net.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in net.named_parameters()}

    torch.manual_seed(4)  # the same dropout masks in both passes
    full = lm_loss(net(x[:, :-1]), x, reduction=reduction)
    g_full = grads(full)
    torch.manual_seed(4)
    h = net.hidden_states(x[:, :-1])
    chunked = linear_cross_entropy(h, net.tokens_embed.weight, x[:, 1:], CFG.vocab_size, reduction, chunk)
    g_chunked = grads(chunked)
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-6)
    atol = 1e-7 * (x[:, 1:].numel() if reduction == "sum" else 1)  # a sum's gradients are 48x a mean's
    for n in g_full:
        torch.testing.assert_close(g_chunked[n], g_full[n], rtol=1e-5, atol=atol, msg=n)
    assert not g_chunked["tokens_embed.weight"][515:].any()  # the padding learns nothing
    # The forward with targets is the same loss, and under no_grad it keeps no gradient.
    torch.manual_seed(4)
    torch.testing.assert_close(net(x[:, :-1], targets=x[:, 1:], reduction=reduction), full)
    with torch.no_grad():
        assert net.eval()(x[:, :-1], targets=x[:, 1:]).grad_fn is None


def test_the_chunked_l1_under_bf16_autocast_matches_the_full_logits_loss():
    torch.manual_seed(5)
    net = GPT(CFG).eval()
    x = torch.randint(0, CFG.vocab_size, (2, 33))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = lm_loss(net(x[:, :-1]), x)
        chunked = net(x[:, :-1], targets=x[:, 1:])
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, full, rtol=1e-3, atol=1e-3)


def test_the_task_models_l1_equals_the_masked_full_logits_loss():
    from model import GPTForTask, TaskHead

    torch.manual_seed(6)
    gpt = GPT(CFG).eval()
    task = GPTForTask(gpt, TaskHead(CFG.n_embd, "classification"), extract_token=514).eval()
    x = torch.randint(0, 500, (3, 12))
    mask = torch.ones_like(x)
    for row, n in enumerate((12, 7, 4)):  # right padding of differing lengths
        x[row, n - 1] = 514
        mask[row, n:] = 0
    out = task(x, mask, labels=torch.tensor([0, 1, 0]), lm_coef=0.5)
    torch.testing.assert_close(out.l1, lm_loss(gpt(x, mask), x, mask), rtol=1e-6, atol=1e-6)
