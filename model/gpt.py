"""The GPT-1 network: a post-LN decoder-only Transformer with a tied input/output embedding."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig
from .dropout import Dropout
from .kvcache import KVCache
from .losses import linear_cross_entropy
from .vocab import keep_real_rows, pad_rows, padded_table, real_logits, zero_padding


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_pdrop = cfg.attn_pdrop
        self.resid_dropout = Dropout(cfg.resid_pdrop)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            # The whole preallocated buffers, masked to the filled slots (attn_mask, from the cache).
            k, v = cache.store(layer, k, v)
        # SDPA scales by 1/sqrt(d_head) as the released code does, and dispatches to the flash
        # or memory-efficient kernel (with fused dropout on GPUs) where the device has one.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None,
            dropout_p=self.attn_pdrop if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.n_inner)
        self.c_proj = nn.Linear(cfg.n_inner, cfg.n_embd)
        self.dropout = Dropout(cfg.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn = CausalSelfAttention(cfg)
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        # Post-LN, as in the paper and the released code: normalise after each residual sum.
        h = self.ln_1(x + self.attn(x, attn_mask, cache, layer))
        return self.ln_2(h + self.mlp(h))


def padding_attn_mask(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Boolean [B, 1, T, T] mask (True = may attend) for a [B, T] 0/1 padding mask.

    Returns None when causality alone is exact: with padding only on the right, no real token
    can see a pad token anyway, and the fused causal kernels stay in use.
    """
    valid = attention_mask.bool()
    if not (valid[:, 1:] & ~valid[:, :-1]).any():
        return None
    T = valid.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    allowed = causal & valid[:, None, :]
    # A pad query with every key masked would give NaN; let it see itself. Its output is unused.
    allowed |= torch.eye(T, dtype=torch.bool, device=valid.device)
    return allowed[:, None]


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.tokens_embed = padded_table(cfg)  # padded_vocab rows; files hold vocab_size (vocab.py)
        self.positions_embed = nn.Embedding(cfg.n_ctx, cfg.n_embd)
        self.drop = Dropout(cfg.embd_pdrop)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.apply(self._init_weights)
        zero_padding(self)
        keep_real_rows(self)

    def _init_weights(self, module: nn.Module) -> None:
        # N(0, 0.02) for every weight matrix and embedding, zero biases, LayerNorm (1, 0).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """[B, T] token ids (and optional [B, T] 0/1 padding mask) -> [B, T, n_embd] final states.
        With a cache, the ids continue the tokens it holds (and it then holds them too)."""
        T = input_ids.size(1)
        past = cache.length if cache is not None else 0
        if past + T > self.config.n_ctx:
            raise ValueError(f"sequence length {past + T} exceeds n_ctx {self.config.n_ctx}")
        if cache is not None and attention_mask is not None:
            raise ValueError("a KVCache is for unpadded decoding: pass no attention_mask with it")
        if attention_mask is None:
            positions = torch.arange(past, past + T, device=input_ids.device)
            attn_mask = None if cache is None else cache.mask(T, input_ids.device)
        else:
            # Positions count real tokens only, so left padding does not shift them.
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            attn_mask = padding_attn_mask(attention_mask)
        x = self.drop(self.tokens_embed(input_ids) + self.positions_embed(positions))
        for i, block in enumerate(self.h):
            x = block(x, attn_mask, cache, i)
        if cache is not None:
            cache.advance(T)
        return x

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        # The output layer is the token embedding itself (tied), as in the paper; the padding
        # rows' logits are cut off (model/vocab.py).
        return real_logits(F.linear(h, self.tokens_embed.weight), self.config.vocab_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """[B, T] int64 -> [B, T, vocab] language-model logits; or, given [B, T] next-token
        targets, L1 itself (their mean, or sum, cross-entropy), computed in chunks so that the
        [B, T, vocab] logits never exist at once, inside whatever compiles the forward."""
        h = self.hidden_states(input_ids, attention_mask, cache)
        if targets is not None:
            return linear_cross_entropy(
                h, self.tokens_embed.weight, targets, self.config.vocab_size, reduction
            )
        return self.lm_logits(h)

    def reinit_blocks(self, first: int) -> None:
        """Draw blocks first.. afresh, as a new GPT draws them (the embeddings and the blocks
        before stay): Figure 2 (left) transfers only the first blocks of a pretrained model."""
        for block in self.h[first:]:
            block.apply(self._init_weights)
            block.ln_1.reset_parameters()
            block.ln_2.reset_parameters()

    def draw_token_rows(self, ids: list[int], generator: torch.Generator | None = None) -> None:
        """Fresh embedding rows for the token ids, from N(0, 0.02), as the released code draws
        its special tokens' rows (_start_, _delimiter_, _classify_). Ids past vocab_size grow it
        (and the table, where its padding has no room): a released checkpoint has 40,478 rows and
        no specials."""
        w = self.tokens_embed.weight
        n = max(max(ids) + 1, self.config.vocab_size)
        if n > self.config.vocab_size:
            self.config = dataclasses.replace(self.config, vocab_size=n)
            if self.config.padded_vocab > w.shape[0]:
                grown = nn.Embedding(self.config.padded_vocab, w.shape[1], device=w.device, dtype=w.dtype)
                with torch.no_grad():
                    grown.weight.copy_(pad_rows(w.detach(), self.config.padded_vocab))
                self.tokens_embed = grown
        rows = torch.randn(len(ids), w.shape[1], generator=generator) * self.config.initializer_range
        with torch.no_grad():
            self.tokens_embed.weight[torch.tensor(ids)] = rows.to(self.tokens_embed.weight)

    def padding_params(self) -> int:
        """The token table's padding rows: in memory, never in a file or a count."""
        return (self.tokens_embed.weight.shape[0] - self.config.vocab_size) * self.config.n_embd

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters()) - self.padding_params()
        return n - self.positions_embed.weight.numel() if non_embedding else n

    def flops_per_token(self, T: int | None = None) -> float:
        """Training FLOPs per token as nanoGPT counts them: 6N + 12*L*d*T.

        N leaves out the position table (a lookup, no matmul) but keeps the token embedding,
        which is also the output layer's matmul.
        """
        cfg = self.config
        T = cfg.n_ctx if T is None else T
        return 6 * self.num_params(non_embedding=True) + 12 * cfg.n_layer * cfg.n_embd * T

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
        from .generate import generate

        return generate(self, input_ids, max_new_tokens, **sampling)

    # The file formats live in model/weights.py, which knows configs and state dicts, not GPT.
    def save_pretrained(self, directory, format: str = "native") -> None:
        from .weights import write_weights

        write_weights(directory, self.config, self.state_dict(), format=format)

    @classmethod
    def from_pretrained(cls, directory, **overrides) -> GPT:
        """A native, Hugging Face or original-OpenAI model directory (model/weights.py) that
        holds a Transformer; model.from_pretrained takes either network."""
        from .weights import assign_weights, read_checked

        config, sd = read_checked(directory, **overrides)
        if config.arch != "transformer":
            raise ValueError(f"{directory}: holds an {config.arch} network, not a Transformer")
        with torch.device("meta"):  # no random init drawn only to be overwritten
            gpt = cls(config)
        return assign_weights(gpt, sd, directory)

    def make_cache(self) -> KVCache:
        return KVCache(self.config.n_layer, self.config.n_ctx)
