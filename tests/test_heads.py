"""Task heads for the four input transformations, regression, and L3 = L2 + λ·L1."""

import pytest
import torch

from model import GPT, GPTConfig, GPTForTask, TaskHead, lm_loss

START, DELIM, EXTRACT = 509, 510, 511  # the tiny vocabulary's last three ids play the specials


def seq(*parts):
    """start p1 delim p2 ... extract"""
    out = [START]
    for i, p in enumerate(parts):
        out += ([DELIM] if i else []) + p
    return out + [EXTRACT]


def batch(seqs, pad=0):
    T = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad] * (T - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
    return ids, mask


def task(transformation, n_labels=3, regression=False):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.preset("tiny"))
    head = TaskHead(gpt.config.n_embd, transformation, n_labels, clf_pdrop=0.1, regression=regression)
    return GPTForTask(gpt, head, EXTRACT).eval()


def test_classification_and_entailment_shapes():
    ids, mask = batch([seq([1, 2, 3]), seq([4, 5])])
    assert task("classification")(ids, mask).logits.shape == (2, 3)
    ids, mask = batch([seq([1, 2, 3], [7, 8]), seq([4], [5, 6, 7])])
    assert task("entailment")(ids, mask).logits.shape == (2, 3)


def test_head_reads_the_extract_token_state():
    m = task("classification")
    ids, mask = batch([seq([1, 2, 3]), seq([4, 5, 6, 7, 8])])
    h = m.gpt.hidden_states(ids, mask)
    pos = [4, 6]
    expected = m.head.linear(torch.stack([h[0, pos[0]], h[1, pos[1]]]))
    torch.testing.assert_close(m(ids, mask).logits, expected)
    # padding after the extract token changes nothing
    longer = torch.cat([ids, torch.full((2, 5), 3)], 1)
    torch.testing.assert_close(
        m(longer, torch.cat([mask, torch.zeros(2, 5, dtype=torch.long)], 1)).logits,
        m(ids, mask).logits,
        atol=1e-5,
        rtol=0,
    )
    with pytest.raises(ValueError, match="extract token"):
        m(torch.tensor([[START, 1, 2]]))


def test_similarity_sums_both_orders():
    m = task("similarity")
    a, b = [1, 2, 3], [7, 8]
    ids, mask = batch([seq(a, b), seq(b, a)])
    out = m(ids[None], mask[None]).logits  # [1, 2 orders, T]
    swapped = m(ids.flip(0)[None], mask.flip(0)[None]).logits
    torch.testing.assert_close(out, swapped)  # symmetric in A and B
    h = m.gpt.hidden_states(ids, mask)
    states = h[0, len(seq(a, b)) - 1] + h[1, len(seq(b, a)) - 1]
    torch.testing.assert_close(out[0], m.head.linear(states))


def test_multiple_choice_scores_each_candidate():
    m = task("multiple_choice")
    ctx = [1, 2, 3, 4]
    cands = [seq(ctx, [10, 11]), seq(ctx, [12]), seq(ctx, [13, 14, 15]), seq(ctx, [16])]
    ids, mask = batch(cands)
    logits = m(ids[None], mask[None]).logits
    assert logits.shape == (1, 4)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(m(ids[perm][None], mask[perm][None]).logits, logits[:, perm])
    out = m(ids[None], mask[None], labels=torch.tensor([2]), lm_coef=0.0)
    torch.testing.assert_close(out.l2, -logits.log_softmax(-1)[0, 2])  # softmax over candidates


def test_regression_head_for_stsb():
    m = task("similarity", regression=True)
    ids, mask = batch([seq([1, 2], [3]), seq([3], [1, 2])])
    out = m(
        ids[None].repeat(3, 1, 1), mask[None].repeat(3, 1, 1), labels=torch.tensor([0.5, 2.0, 4.0]), lm_coef=0
    )
    assert out.logits.shape == (3,)
    torch.testing.assert_close(out.l2, ((out.logits - torch.tensor([0.5, 2.0, 4.0])) ** 2).mean())


def test_the_releases_soft_stsb_target_and_its_expected_score():
    """regression_target soft: Tai et al.'s encoding of a score over the integer scores 0-5, as
    the released code's stsb_label_encoding writes it; the prediction is the expected score."""
    import math

    from model.losses import soft_label

    def release(y: float, n: int = 6) -> list[float]:  # its loop, as its utils.py states it
        return [
            y - math.floor(y)
            if i == math.floor(y) + 1
            else math.floor(y) - y + 1
            if i == math.floor(y)
            else 0.0
            for i in range(n)
        ]

    scores = torch.tensor([0.0, 3.4, 4.75, 5.0])
    torch.testing.assert_close(soft_label(scores, 6), torch.tensor([release(float(y)) for y in scores]))
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.preset("tiny"))
    m = GPTForTask(
        gpt, TaskHead(gpt.config.n_embd, "similarity", regression=True, soft_classes=6), EXTRACT
    ).eval()
    seen = []
    m.head.register_forward_hook(lambda module, args, output: seen.append(output))
    ids, mask = batch([seq([1, 2], [3]), seq([3], [1, 2])])
    labels = torch.tensor([0.5, 2.0, 4.0])
    out = m(ids[None].repeat(3, 1, 1), mask[None].repeat(3, 1, 1), labels=labels, lm_coef=0)
    (raw,) = seen  # the head's six logits per example
    assert raw.shape == (3, 6) and out.logits.shape == (3,)
    torch.testing.assert_close(out.logits, raw.softmax(-1) @ torch.arange(6.0))
    torch.testing.assert_close(out.l2, -(soft_label(labels, 6) * raw.log_softmax(-1)).sum(-1).mean())


def test_l3_is_l2_plus_lambda_l1():
    m = task("classification")
    ids, mask = batch([seq([1, 2, 3]), seq([4, 5, 6, 7, 8, 9])])
    labels = torch.tensor([0, 2])
    out = m(ids, mask, labels=labels, lm_coef=0.5)
    torch.testing.assert_close(out.l3, out.l2 + 0.5 * out.l1)
    torch.testing.assert_close(out.l2, torch.nn.functional.cross_entropy(out.logits, labels))
    torch.testing.assert_close(out.l1, lm_loss(m.gpt(ids, mask), ids, mask))
    no_aux = m(ids, mask, labels=labels, lm_coef=0.0)
    assert no_aux.l1 is None and torch.equal(no_aux.l3, no_aux.l2)


def test_l1_ignores_padding_and_weighs_sequences_equally():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    ids = torch.randint(0, 11, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    other = ids.clone()
    other[1, 3:] = (other[1, 3:] + 1) % 11  # change only the padding's ids
    assert torch.equal(lm_loss(logits, ids, mask), lm_loss(logits, other, mask))
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1), reduction="none"
    ).view(2, 5)
    expected = (per_token[0].mean() + per_token[1, :2].mean()) / 2
    torch.testing.assert_close(lm_loss(logits, ids, mask), expected)
    torch.testing.assert_close(lm_loss(logits, ids), per_token.mean())


def test_fine_tuning_step_learns():
    m = task("classification", n_labels=2).train()
    ids, mask = batch([seq([1, 2, 3]), seq([4, 5, 6]), seq([1, 1]), seq([5, 5])])
    labels = torch.tensor([0, 1, 0, 1])
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = m(ids, mask, labels=labels, lm_coef=0.5)
        first = first if first is not None else out.l2.item()
        opt.zero_grad()
        out.l3.backward()
        opt.step()
    assert out.l2.item() < first * 0.3


def test_unknown_transformation():
    with pytest.raises(ValueError, match="multiple_choice"):
        TaskHead(8, "ranking")
