"""KVCache: the keys and values of the tokens seen so far, for decoding one token at a time."""

from __future__ import annotations

import torch

from .config import bucket_length


class KVCache:
    """The keys and values of the tokens seen so far, so that decoding runs each new token alone
    instead of the whole sequence again. Each layer's are preallocated at [B, H, n_ctx, d_head]
    when the first tokens come, and a step attends over the filled slots' length bucket
    (config.bucket_length: a multiple of 64) with a mask of those filled. A decode step's shapes
    change once every 64 tokens, not at every token, so an attention kernel plans a handful of
    times instead of once per length, and a short sequence does not pay for all n_ctx slots."""

    def __init__(self, n_layer: int, n_ctx: int):
        self.n_ctx = n_ctx
        self.length = 0  # tokens held
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def span(self, T: int) -> int:
        """The slots T new tokens attend over: the bucket that holds them all."""
        return bucket_length(self.length + T, self.n_ctx)

    def mask(self, T: int, device) -> torch.Tensor:
        """[T, span] boolean (True = may attend) for T new tokens after the ones held: each sees
        the held tokens, the new ones up to itself, and no empty slot."""
        slots = torch.arange(self.span(T), device=device)
        return slots[None, :] <= self.length + torch.arange(T, device=device)[:, None]

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens' [B, H, T, d_head] keys and values after those held; returns the
        layer's buffers over the span."""
        if self.keys[layer] is None:
            B, H, _, D = k.shape
            self.keys[layer] = k.new_zeros(B, H, self.n_ctx, D)
            self.values[layer] = v.new_zeros(B, H, self.n_ctx, D)
        T = k.size(2)
        self.keys[layer][:, :, self.length : self.length + T] = k
        self.values[layer][:, :, self.length : self.length + T] = v
        span = self.span(T)
        return self.keys[layer][:, :, :span], self.values[layer][:, :, :span]

    def advance(self, T: int) -> None:
        """Every layer has stored T more tokens."""
        self.length += T
