"""GPTConfig: the shape of the network, and the named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# The released GPT-1 BPE vocabulary has 40,478 entries; fine-tuning appends three
# learned special tokens (_start_, _delimiter_, _classify_) after it.
GPT1_BPE_VOCAB = 40478
N_SPECIAL = 3
ARCHS = ("transformer", "lstm")
# Inside the model the token table is padded to a multiple of this many rows (40,481 -> 40,576),
# so that the LM head's matmul, a quarter of gpt1's FLOPs, runs on aligned tiles. The padded rows
# are never read (model/vocab.py): files, logits and losses keep vocab_size rows.
VOCAB_MULTIPLE = 128
# Batches of inputs of varying length are padded to a multiple of this many tokens, and a KV
# cache is read in spans of it, so kernels, their plans and compiled graphs meet a few shapes
# again and again, not a new one every batch or token. Right padding changes no real output.
LENGTH_BUCKET = 64

# The paper's input transformations (Figure 1): how a task's text becomes the model's sequences.
# Adam's (b1, b2) and eps, as the paper's code (opt.py) set them; optim.py builds AdamW with them.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# Adam's warm-up horizon without tuning, 2 / (1 - b2) steps (Ma & Yarats 2021, "On the adequacy of
# untuned warmup for adaptive optimization"): 2,000, GPT-1's own warm-up. A batch resized by the
# scaling rule keeps at least this many warm-up steps.
ADAM_WARMUP_STEPS = round(2 / (1 - ADAM_BETAS[1]))


TRANSFORMATIONS = ("classification", "entailment", "similarity", "multiple_choice")


def bucket_length(longest: int, n_ctx: int) -> int:
    """The length a batch whose longest sequence has `longest` tokens is padded to."""
    return min(-(-longest // LENGTH_BUCKET) * LENGTH_BUCKET, max(longest, n_ctx))


def bucketed(n_ctx: int, device) -> int | None:
    """n_ctx on a GPU, where a batch is padded to its length bucket: a shape that repeats reuses
    compiled kernels and the libraries' tuned choices. None on a CPU, where a padded token is only
    work (a 16-token sentence in a 64 bucket costs 4x), so a batch is padded to its longest."""
    return n_ctx if str(device).startswith("cuda") else None


@dataclass
class GPTConfig:
    vocab_size: int = GPT1_BPE_VOCAB + N_SPECIAL
    n_ctx: int = 512
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    # "transformer" (model/gpt.py) or "lstm" (model/lstm.py, Table 5's baseline). An LSTM reads
    # n_layer as its number of LSTM layers and lstm_units as their width; it has no heads.
    arch: str = "transformer"
    lstm_units: int = 2048

    def __post_init__(self):
        # A config.json is user input: a wrong type or size is one clear line, not a TypeError.
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{f.name} {v!r}: expected a positive integer")
            if f.type == "float" and (
                not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1
            ):
                raise ValueError(f"{f.name} {v!r}: expected a number in [0, 1)")
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r}: expected one of {', '.join(ARCHS)}")
        if self.arch == "transformer" and self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    @property
    def n_inner(self) -> int:
        return 4 * self.n_embd  # the paper's FFN width: 3072 for d_model 768

    def n_params(self) -> int:
        """The network's num_params(), counted without building it. The Transformer: the two
        embedding tables, and per block two LayerNorms, the attention's two projections and the
        MLP's two (with biases). The LSTM: the embedding, per layer four gates' input and
        recurrent matrices with two biases each, and the projection back to n_embd."""
        d = self.n_embd
        if self.arch == "lstm":
            H = self.lstm_units
            layers = sum(4 * H * ((d if i == 0 else H) + H) + 8 * H for i in range(self.n_layer))
            return self.vocab_size * d + layers + H * d + d
        block = (
            2 * 2 * d
            + (d * 3 * d + 3 * d)
            + (d * d + d)
            + (d * self.n_inner + self.n_inner)
            + (self.n_inner * d + d)
        )
        return (self.vocab_size + self.n_ctx) * d + self.n_layer * block

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown GPTConfig keys {unknown}; valid keys are {sorted(fields)}")
        return cls(**d)


PRESETS = {
    # The paper: 12 x 768, 12 heads, n_ctx 512, the released vocabulary plus 3 special tokens.
    "gpt1": GPTConfig(),
    # The benchmarks' CPU preset: small enough that 2 cores train it at about 1,400 tokens/s,
    # large enough that the time goes into matrix products, as it does at full size.
    "mini": GPTConfig(vocab_size=8192, n_ctx=256, n_layer=4, n_head=8, n_embd=512),
    # For tests: runs in milliseconds.
    "tiny": GPTConfig(vocab_size=512, n_ctx=64, n_layer=2, n_head=2, n_embd=32),
    # Table 5's baseline: one layer of 2048 units, the Transformer's 768-wide embedding and n_ctx.
    "lstm": GPTConfig(arch="lstm", n_layer=1, n_head=1, lstm_units=2048),
    # The LSTM for tests: tiny's vocabulary, context and embedding width.
    "lstm-tiny": GPTConfig(
        arch="lstm", vocab_size=512, n_ctx=64, n_layer=1, n_head=1, n_embd=32, lstm_units=64
    ),
}
