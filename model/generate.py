"""Continuation of a prompt: greedy or sampled (temperature, top-k, top-p)."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens ranked above it already reach top_p: the most likely
        # token always stays.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def generate(
    gpt,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    end_token: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Append up to max_new_tokens to each [B, T] prompt. temperature 0 is greedy.

    Stops at n_ctx tokens in all, or once every row has produced end_token; rows that ended
    earlier are filled with end_token. With use_cache (the default), the prompt runs once and
    then each new token alone against the cached keys and values (a KVCache, or the LSTM's state); without,
    the whole sequence runs again for every token. Both give the same tokens.
    """
    was_training = gpt.training
    gpt.eval()
    idx = input_ids
    cache = gpt.make_cache() if use_cache else None
    fresh = idx  # what the network has not seen yet: the prompt, then each new token
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        if idx.size(1) >= gpt.config.n_ctx:
            break
        logits = (gpt(fresh, cache=cache) if cache is not None else gpt(idx))[:, -1, :].float()
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if end_token is not None:
            nxt = torch.where(done, torch.full_like(nxt, end_token), nxt)
            done |= nxt == end_token
        idx = torch.cat([idx, nxt[:, None]], dim=1)
        fresh = nxt[:, None]
        if end_token is not None and bool(done.all()):
            break
    gpt.train(was_training)
    return idx
