"""The paper's optimiser: schedules with opt.py's values, and which parameters decay."""

import math

import pytest
import torch

from model import GPT, GPTConfig, make_optimizer, make_schedule, param_groups
from model.optim import warmup_constant, warmup_cosine, warmup_linear


@pytest.mark.parametrize(
    "x, expected",
    [
        (0.0, 0.0),
        (0.001, 0.5),
        (0.002, 1.0),  # linear warm-up over the first 0.2%
        (0.0021, 0.5 * (1 + math.cos(math.pi * 0.0021))),  # then cosine over all of x, not 1.0
        (0.25, 0.8535533905932737),
        (0.5, 0.5),
        (0.75, 0.14644660940672627),
        (1.0, 0.0),
    ],
)
def test_warmup_cosine(x, expected):
    assert warmup_cosine(x) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "x, expected", [(0.0, 0.0), (0.001, 0.5 * 0.999), (0.002, 0.998), (0.5, 0.5), (0.9, 0.1), (1.0, 0.0)]
)
def test_warmup_linear(x, expected):
    assert warmup_linear(x) == pytest.approx(expected, abs=1e-12)


def test_warmup_constant_and_custom_warmup():
    assert warmup_constant(0.05, warmup=0.1) == pytest.approx(0.5)
    assert warmup_constant(0.7, warmup=0.1) == 1.0
    assert warmup_cosine(0.05, warmup=0.1) == pytest.approx(0.5)


def test_schedule_drives_the_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=2.5e-4)
    sched = make_schedule(opt, "warmup_cosine", total_steps=1000, warmup=0.01)
    lrs = []
    for _ in range(1000):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0  # opt.py: update 0 has lr 0
    assert lrs[5] == pytest.approx(2.5e-4 * 0.5)  # half way through warm-up
    assert lrs[10] == pytest.approx(2.5e-4)  # end of warm-up
    assert lrs[500] == pytest.approx(2.5e-4 * 0.5)  # cosine of x = 0.5
    assert lrs[999] == pytest.approx(2.5e-4 * 0.5 * (1 + math.cos(math.pi * 0.999)))
    with pytest.raises(ValueError, match="warmup_linear"):
        make_schedule(opt, "linear", 10)


def test_weight_decay_only_on_weights_of_rank_two_or_more():
    gpt = GPT(GPTConfig.preset("tiny"))
    decay, no_decay = param_groups(gpt, 0.01)
    names = {id(p): n for n, p in gpt.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert decayed == sorted(
        ["tokens_embed.weight", "positions_embed.weight"]
        + [
            f"h.{i}.{m}.weight"
            for i in range(2)
            for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        ]
    )
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert all(n.endswith(".bias") or ".ln_" in n for n in not_decayed)
    assert len(decayed) + len(not_decayed) == len(names)


def test_decay_is_decoupled_and_skips_biases_and_gains():
    gpt = GPT(GPTConfig.preset("tiny"))
    with torch.no_grad():
        gpt.h[0].ln_1.weight.fill_(2.0)
        gpt.h[0].mlp.c_fc.bias.fill_(1.0)
    before = {n: p.detach().clone() for n, p in gpt.named_parameters()}
    opt = make_optimizer(gpt, lr=0.1, weight_decay=0.01)
    for p in gpt.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decay can move a parameter
    opt.step()
    w = "h.0.mlp.c_fc.weight"
    torch.testing.assert_close(dict(gpt.named_parameters())[w], before[w] * (1 - 0.1 * 0.01))
    assert torch.equal(gpt.h[0].ln_1.weight, before["h.0.ln_1.weight"])
    assert torch.equal(gpt.h[0].mlp.c_fc.bias, before["h.0.mlp.c_fc.bias"])
