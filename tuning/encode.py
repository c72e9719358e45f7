"""The paper's task-aware input transformations, as token ids.

    classification   start text extract
    entailment       start premise delim hypothesis extract
    similarity       start A delim B extract  and  start B delim A extract
    multiple choice  start context delim answer_k extract, for each candidate k

Truncation follows the released code: every segment is cut to the same budget, so that the
specials and all segments fit n_ctx (for two segments and an even n_ctx that is n_ctx // 2 - 2
tokens each, the released `max_len`). Cut segments are counted, not hidden.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from pipeline.data.tokenizer import DELIMITER, EXTRACT, START
from tuning.tasks import Example, TaskError


@dataclass
class Encoded:
    sequences: list[list[int]]  # 1 (classification, entailment), 2 (similarity) or K (choices)
    label: int | float | None
    truncated: int  # segments that were cut


class Encoder:
    def __init__(self, tokenizer: Tokenizer, transformation: str, n_ctx: int, vocab_size: int | None = None):
        ids = {t: tokenizer.token_to_id(t) for t in (START, DELIMITER, EXTRACT)}
        missing = [t for t, i in ids.items() if i is None or (vocab_size is not None and i >= vocab_size)]
        if missing:
            raise TaskError(f"the model's vocabulary ({vocab_size} rows) lacks the special token(s) "
                            f"{', '.join(missing)}; expected them below vocab_size")
        self.tok, self.transformation, self.n_ctx = tokenizer, transformation, n_ctx
        self.start, self.delim, self.extract = ids[START], ids[DELIMITER], ids[EXTRACT]

    def _segments(self, ex: Example) -> list[list[str]]:
        """The segments of each sequence, as texts."""
        if self.transformation == "multiple_choice":
            return [[ex.text[0], c] for c in ex.choices]
        if self.transformation == "similarity":
            return [[ex.text[0], ex.text[1]], [ex.text[1], ex.text[0]]]
        return [list(ex.text)]

    def encode(self, examples: list[Example]) -> list[Encoded]:
        layouts = [self._segments(ex) for ex in examples]
        texts = sorted({t for layout in layouts for seq in layout for t in seq})
        ids = dict(zip(texts, (e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False))))
        out = []
        for ex, layout in zip(examples, layouts):
            seqs, cut = [], 0
            for seq in layout:
                budget = (self.n_ctx - len(seq) - 1) // len(seq)  # start, delimiters, extract
                tokens = [self.start]
                for i, text in enumerate(seq):
                    segment = ids[text]
                    cut += len(segment) > budget
                    tokens += segment[:budget] + [self.delim if i < len(seq) - 1 else self.extract]
                seqs.append(tokens)
            # A similarity pair cuts the same two segments in both orders: count them once.
            out.append(Encoded(seqs, ex.label, cut // 2 if self.transformation == "similarity" else cut))
        return out


def collate(batch: list[Encoded], regression: bool = False):
    """[B, S, T] ids (S = sequences per example; squeezed to [B, T] when 1), the 0/1 padding
    mask, and the labels. Padding is on the right, to the longest sequence of the batch."""
    T = max(len(s) for e in batch for s in e.sequences)
    S = len(batch[0].sequences)
    ids = torch.zeros(len(batch), S, T, dtype=torch.long)
    mask = torch.zeros(len(batch), S, T, dtype=torch.long)
    for b, e in enumerate(batch):
        for s, seq in enumerate(e.sequences):
            ids[b, s, :len(seq)] = torch.tensor(seq)
            mask[b, s, :len(seq)] = 1
    if S == 1:
        ids, mask = ids[:, 0], mask[:, 0]
    labels = None
    if batch[0].label is not None:
        labels = torch.tensor([e.label for e in batch], dtype=torch.float32 if regression else torch.long)
    return ids, mask, labels
