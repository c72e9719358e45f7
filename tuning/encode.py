"""The paper's task-aware input transformations, as token ids.

    classification   start text extract
    entailment       start premise delim hypothesis extract
    similarity       start A delim B extract  and  start B delim A extract
    multiple choice  start context delim answer_k extract, for each candidate k, where the
                     context is the document and, for RACE, its question: [z; q; $; a_k]

Truncation, cut segments counted (once per example), never hidden:
- classification, entailment, similarity: as the released code, every segment is cut to the
  same budget so that the specials and all segments fit n_ctx (for two segments and an even
  n_ctx that is n_ctx // 2 - 2 tokens each, the released `max_len`), keeping its beginning.
- multiple choice: only the document is cut, keeping its beginning (as the released code's
  x[:max_len] does for the Story Cloze story), to what the question and the longest answer
  leave; the question and every answer stay whole. The cut is the same for every candidate.
  Only where the question and the longest answer alone overflow are they cut too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from model.config import bucket_length
from pipeline.data.tasks import Example, TaskError
from pipeline.data.text import normalize
from pipeline.data.tokenizer import DELIMITER, EXTRACT, START, encode_texts


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
            raise TaskError(
                f"the model's vocabulary ({vocab_size} rows) lacks the special token(s) "
                f"{', '.join(missing)}; expected them below vocab_size"
            )
        self.tok, self.transformation, self.n_ctx = tokenizer, transformation, n_ctx
        self.start, self.delim, self.extract = ids[START], ids[DELIMITER], ids[EXTRACT]

    def _segments(self, ex: Example) -> list[list[str]]:
        """The segments of each sequence, as texts."""
        if self.transformation == "multiple_choice":
            return [[*ex.text, c] for c in ex.choices]  # document (question) answer_k
        if self.transformation == "similarity":
            return [[ex.text[0], ex.text[1]], [ex.text[1], ex.text[0]]]
        return [list(ex.text)]

    def encode(self, examples: list[Example]) -> list[Encoded]:
        layouts = [self._segments(ex) for ex in examples]
        texts = sorted({t for layout in layouts for seq in layout for t in seq})
        # The same normalisation and the same text-to-ids path as prepare's: a sentence gets the
        # same ids in a fine-tuning input as in the pretraining corpus.
        ids = dict(zip(texts, encode_texts(self.tok, [normalize(t) for t in texts]), strict=True))
        if self.transformation == "multiple_choice":
            return [self._choices(ex, layout, ids) for ex, layout in zip(examples, layouts, strict=True)]
        out = []
        for ex, layout in zip(examples, layouts, strict=True):
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

    def _choices(self, ex: Example, layout: list[list[str]], ids: dict[str, list[int]]) -> Encoded:
        """start document [question] delim answer_k extract for each k: the document alone is cut."""
        *context, _ = layout[0]
        document, rest = ids[context[0]], [t for text in context[1:] for t in ids[text]]
        answers = [ids[seq[-1]] for seq in layout]
        room = self.n_ctx - 3 - len(rest) - max(map(len, answers))  # start, delim, extract
        cut = len(document) > max(room, 0)
        document = document[: max(room, 0)]
        if room < 0:  # the question and the longest answer alone overflow: cut them to fit
            rest = rest[: max(self.n_ctx - 3, 0) // 2]
            answers = [a[: self.n_ctx - 3 - len(rest)] for a in answers]
        seqs = [[self.start, *document, *rest, self.delim, *a, self.extract] for a in answers]
        return Encoded(seqs, ex.label, int(cut or room < 0))


def collate(batch: list[Encoded], regression: bool = False, n_ctx: int | None = None):
    """[B, S, T] ids (S = sequences per example; squeezed to [B, T] when 1), the 0/1 padding
    mask, and the labels. Padding is on the right: given the model's n_ctx, to the longest
    sequence's length bucket (model.gpt.bucket_length: shapes that repeat), else to the longest."""
    T = max(len(s) for e in batch for s in e.sequences)
    if n_ctx is not None:
        T = bucket_length(T, n_ctx)
    S = len(batch[0].sequences)
    ids = torch.zeros(len(batch), S, T, dtype=torch.long)
    mask = torch.zeros(len(batch), S, T, dtype=torch.long)
    for b, e in enumerate(batch):
        for s, seq in enumerate(e.sequences):
            ids[b, s, : len(seq)] = torch.tensor(seq)
            mask[b, s, : len(seq)] = 1
    if S == 1:
        ids, mask = ids[:, 0], mask[:, 0]
    labels = None
    if batch[0].label is not None:
        labels = torch.tensor([e.label for e in batch], dtype=torch.float32 if regression else torch.long)
    return ids, mask, labels
