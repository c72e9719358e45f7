"""KVCache: the keys and values of the tokens seen so far, for decoding one token at a time."""

from __future__ import annotations

import torch


class KVCache:
    """The keys and values of the tokens seen so far, one (k, v) pair per layer, so that decoding
    runs each new token alone instead of the whole sequence again. A cache takes a prompt at
    once, then one token at a time."""

    def __init__(self, n_layer: int):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer

    @property
    def length(self) -> int:
        return 0 if self.layers[0] is None else self.layers[0][0].size(2)
