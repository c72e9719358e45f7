"""The paper's zero-shot heuristics (section 5, "Zero-shot behaviors"; Figure 2, right): what a
language model does on a task with no fine-tuning at all.

- SST-2: append the token "very" to the sentence, then compare the model's probability of
  "positive" against "negative" as the next word.
- CoLA: the sentence's average token log-probability, thresholded; the threshold is the one that
  scores best (Matthews correlation) on the train split.
- RACE: the answer with the highest average token log-probability given the document and the
  question.
- DPRD (Winograd schemas): replace the definite pronoun with each candidate, and pick the one under
  which the rest of the sentence has the higher average token log-probability. `wsc` reads the
  Winograd Schema collection (WSCollection.xml), `dprd` Rahman & Ng's files
  (pipeline/data/winograd.py).
- Story Cloze, this project's addition (the paper defines none for it): RACE's rule, the ending
  with the highest average token log-probability given the story.

The paper defines no heuristic for its entailment and similarity tasks (MNLI, RTE, QQP, ...):
they are refused, with a line that says so. Each result is the task's metric on its dev split
(Story Cloze: its labeled test file, as the paper reports it; wsc and dprd: their only or test
file), beside the majority-class and random baselines. With max_examples, a seeded sample of that
many across the whole split (the same on every call), not its first rows. All text goes through
the checkpoint's tokenizer as prepare's does (normalize, encode_texts); every context starts with
the `_end_of_document_` token that separates documents in pretraining.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.config import bucket_length, bucketed
from pipeline.data.tasks import TaskError, get
from pipeline.data.text import normalize
from pipeline.data.winograd import READERS
from pipeline.errors import ConfigError
from pipeline.eval.generate import document_end
from pipeline.eval.metrics import accuracy, matthews

PAPER_HEURISTICS = ("sst-2", "cola", "race", "wsc", "dprd")  # section 5's four (DPRD read two ways)
ADDED_HEURISTICS = ("story-cloze",)  # this project's, not the paper's
HEURISTICS = PAPER_HEURISTICS + ADDED_HEURISTICS


def source(name: str) -> str:
    return "paper" if name in PAPER_HEURISTICS else "this project's addition"


def check_task(name: str) -> str:
    """A task the paper has a zero-shot heuristic for (its name), or a TaskError that says why not."""
    if name.lower() in READERS:
        return name.lower()
    task = get(name)
    if task.name not in HEURISTICS:
        raise TaskError(
            f"--zero-shot {name}: the paper defines no zero-shot heuristic for {task.name} "
            f"({task.transformation}); it has them for {', '.join(HEURISTICS)}"
        )
    return task.name


def parse_tasks(specs: list[str]) -> list[tuple[str, str]]:
    """(task, absolute directory) of each TASK=DIR, checked before any model is loaded."""
    out = []
    for spec in specs:
        name, sep, d = spec.partition("=")
        if not sep or not d:
            raise ConfigError(f"--zero-shot {spec}: expected TASK=DIR, e.g. sst-2=glue/SST-2")
        if name.lower() in READERS:  # a file (WSCollection.xml, test.c.txt) or its directory
            if not Path(d).exists():
                raise ConfigError(f"--zero-shot {spec}: {d}: no such file or directory")
        elif not Path(d).is_dir():
            raise ConfigError(f"--zero-shot {spec}: {d} is not a directory")
        out.append((check_task(name), str(Path(d).absolute())))
    return out


def eval_split(name: str) -> str:
    return "test" if name in ("story-cloze", "wsc", "dprd") else "dev"


def sample(items: list, n: int) -> list:
    """n of items (all of them where n is 0 or at least their number), chosen by a seeded draw
    across the whole list and kept in its order: RACE's middle/ and high/ both, not the first n."""
    if not n or n >= len(items):
        return items
    keep = np.random.default_rng(0).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(keep)]


@dataclass
class Scorer:
    """Log-probabilities of continuations under a GPT, in batches, contexts cut on the left to fit.

    Spread over the workers of a data-parallel run: with share = (rank, world) and gather (all
    ranks' objects, in rank order, from each rank's one), each rank scores every world-th item,
    and every rank gets every item's result back, so what is computed from them is the same on
    every rank."""

    gpt: object
    tok: object
    device: str = "cpu"
    batch: int = 16
    share: tuple[int, int] = (0, 1)
    gather: Callable[[object], list] | None = None

    def _spread(self, n: int, score: Callable[[list[int]], list]) -> list:
        """score(indices) -> their results, for this rank's indices; all n results, in order."""
        rank, world = self.share
        if world == 1:
            return score(list(range(n)))
        mine = list(range(rank, n, world))
        out: list = [None] * n
        for r, results in enumerate(self.gather(score(mine))):
            out[r::world] = results
        return out

    def ids(self, texts: list[str]) -> list[list[int]]:
        from pipeline.data.tokenizer import encode_texts

        return encode_texts(self.tok, [normalize(t) for t in texts])

    @property
    def start(self) -> list[int]:
        """What a document starts after: the end of the one before, where the model has that token."""
        end = document_end(self.tok, self.gpt)
        return [end] if end is not None else []

    def logprobs(self, pairs: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """For each (context, continuation): log p of each continuation token given everything
        before it. A continuation keeps at most n_ctx - 1 tokens, and the context as many of its
        last tokens as then fit."""
        n_ctx = self.gpt.config.n_ctx
        items = []  # (sequence, the positions whose next token is scored, those tokens)
        for ctx, cont in pairs:
            if not ctx:  # nothing before it (no document-start token): its first token is context only
                ctx, cont = cont[:1], cont[1:]
            cont = cont[: n_ctx - 1]
            seq = ctx[max(len(ctx) - (n_ctx - len(cont)), 0) :] + cont
            items.append((seq, range(len(seq) - len(cont) - 1, len(seq) - 1), cont))

        def score(idx: list[int]) -> list[np.ndarray]:
            mine = [items[i] for i in idx]
            out: list[np.ndarray] = [np.empty(0)] * len(mine)
            for j, logits in self._forward([seq for seq, _, _ in mine], lambda j: mine[j][1]):
                out[j] = logits.log_softmax(-1).gather(1, self._tensor(mine[j][2])[:, None])[:, 0].numpy()
            return out

        return self._spread(len(items), score)

    def next_token(self, contexts: list[list[int]], candidates: list[int]) -> np.ndarray:
        """[contexts, candidates]: log p of each candidate token right after each context (cut on
        the left to n_ctx): one forward pass a context, whatever the number of candidates."""
        n_ctx = self.gpt.config.n_ctx
        seqs = [ctx[-n_ctx:] for ctx in contexts]

        def score(idx: list[int]) -> list[np.ndarray]:
            mine = [seqs[i] for i in idx]
            out: list[np.ndarray] = [np.empty(0)] * len(mine)
            for j, logits in self._forward(mine, lambda j: [len(mine[j]) - 1]):
                out[j] = logits.log_softmax(-1)[0, candidates].numpy()
            return out

        return np.array(self._spread(len(seqs), score)).reshape(len(seqs), len(candidates))

    @staticmethod
    def _tensor(ids):
        import torch

        return torch.tensor(ids, dtype=torch.long)

    def _forward(self, seqs: list[list[int]], positions):
        """(i, the float logits at positions(i) of seqs[i]) for every sequence, in batches of like
        lengths (right-padded to their length bucket; the causal mask keeps padding out of every
        real position)."""
        import torch

        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        self.gpt.eval()
        with torch.no_grad():
            for b in range(0, len(order), self.batch):
                group = order[b : b + self.batch]
                longest = max(len(seqs[i]) for i in group)
                length = bucketed(self.gpt.config.n_ctx, self.device)
                x = torch.zeros(
                    len(group), bucket_length(longest, length) if length else longest, dtype=torch.long
                )
                for row, i in enumerate(group):
                    x[row, : len(seqs[i])] = self._tensor(seqs[i])
                logits = self.gpt(x.to(self.device))
                for row, i in enumerate(group):
                    yield i, logits[row, self._tensor(list(positions(i))).to(logits.device)].float().cpu()


def sst2(scorer: Scorer, examples) -> np.ndarray:
    """1 (positive) where "positive" is likelier than "negative" after the sentence and "very"."""
    # After the document-start token, as every heuristic's context: the model saw text only there.
    contexts = [scorer.start + ids for ids in scorer.ids([ex.text[0] + " very" for ex in examples])]
    positive, negative = scorer.ids(["positive", "negative"])
    if len(positive) == len(negative) == 1:  # one word each (the released vocabulary): one pass a sentence
        lp = scorer.next_token(contexts, [positive[0], negative[0]])
        return (lp[:, 0] > lp[:, 1]).astype(int)
    lp = scorer.logprobs([(c, w) for c in contexts for w in (positive, negative)])
    return np.array([int(lp[2 * i].sum() > lp[2 * i + 1].sum()) for i in range(len(examples))])


def mean_logprob(scorer: Scorer, texts: list[str]) -> np.ndarray:
    return np.array([lp.mean() for lp in scorer.logprobs([(scorer.start, ids) for ids in scorer.ids(texts)])])


def best_threshold(scores: np.ndarray, gold: np.ndarray) -> float:
    """The threshold t (predict 1 where score > t) with the best Matthews correlation on (scores, gold):
    midway between neighbouring scores, or below them all."""
    s = np.unique(scores)
    candidates = (
        np.concatenate([[s[0] - 1.0], (s[:-1] + s[1:]) / 2]) if len(s) > 1 else np.array([s[0] - 1.0])
    )
    if len(candidates) > 2000:  # enough resolution for a curve; keeps a big train split quick
        candidates = np.quantile(scores, np.linspace(0, 1, 2001))
    return float(max(candidates, key=lambda t: (matthews((scores > t).astype(int), gold), -abs(t))))


def multiple_choice(scorer: Scorer, examples) -> np.ndarray:
    """The choice with the highest average token log-probability given the document (and question)."""
    contexts = scorer.ids([" ".join(ex.text) for ex in examples])
    pairs, owners = [], []
    for i, ex in enumerate(examples):
        for j, ids in enumerate(scorer.ids(list(ex.choices))):
            pairs.append((scorer.start + contexts[i], ids))
            owners.append((i, j))
    best = np.full(len(examples), -1)
    top = np.full(len(examples), -math.inf)
    for (i, j), lp in zip(owners, scorer.logprobs(pairs), strict=True):
        if lp.size and lp.mean() > top[i]:
            top[i], best[i] = lp.mean(), j
    return best


def winograd(scorer: Scorer, schemas) -> np.ndarray:
    """The candidate under which the rest of the sentence (after the pronoun it replaces) has the
    highest average token log-probability."""
    pairs, owners = [], []
    for i, s in enumerate(schemas):
        after = scorer.ids([s.after])[0]
        for j, ids in enumerate(scorer.ids([f"{s.before} {c}".strip() for c in s.candidates])):
            pairs.append((scorer.start + ids, after))
            owners.append((i, j))
    best = np.full(len(schemas), -1)
    top = np.full(len(schemas), -math.inf)
    for (i, j), lp in zip(owners, scorer.logprobs(pairs), strict=True):
        if lp.size and lp.mean() > top[i]:
            top[i], best[i] = lp.mean(), j
    return best


def baselines(name: str, train_gold: np.ndarray | None, gold: np.ndarray, n_choices: int) -> dict[str, float]:
    """The majority class of the train split (of the evaluated split where no train split is read:
    RACE's and Story Cloze's answers are balanced), and chance: 1 / choices for accuracy, 0 for
    Matthews correlation."""
    ref = train_gold if train_gold is not None and len(train_gold) else gold
    majority = np.bincount(ref.astype(int), minlength=n_choices).argmax()
    pred = np.full(len(gold), majority)
    if name == "cola":
        return {"majority": matthews(pred, gold), "random": 0.0}
    return {"majority": accuracy(pred, gold), "random": 1.0 / n_choices}


def run_task(name: str, directory, scorer: Scorer, max_examples: int = 0) -> dict:
    """The heuristic of task `name` on the files in directory: {metric, value, majority, random,
    examples, source}. max_examples > 0 scores a seeded sample of that many of each split (a
    quick curve)."""
    name = check_task(name)

    def cut(xs: list) -> list:
        return sample(xs, max_examples)

    if name in READERS:
        schemas = cut(READERS[name](directory))
        gold = np.array([s.label for s in schemas])
        return {
            "task": name,
            "split": eval_split(name),
            "metric": "accuracy",
            "value": accuracy(winograd(scorer, schemas), gold),
            "examples": len(schemas),
            "source": source(name),
            **baselines(name, None, gold, max(len(s.candidates) for s in schemas)),
        }
    task = get(name)
    split = eval_split(task.name)
    examples = cut(task.load(directory, split))
    gold = np.array([ex.label for ex in examples])
    train_gold = None
    if task.name == "sst-2":
        metric, value = "accuracy", accuracy(sst2(scorer, examples), gold)
        n_choices = 2
    elif task.name == "cola":
        train = cut(task.load(directory, "train"))
        train_gold = np.array([ex.label for ex in train])
        t = best_threshold(mean_logprob(scorer, [ex.text[0] for ex in train]), train_gold)
        pred = (mean_logprob(scorer, [ex.text[0] for ex in examples]) > t).astype(int)
        metric, value, n_choices = "matthews", matthews(pred, gold), 2
    else:
        metric, value = "accuracy", accuracy(multiple_choice(scorer, examples), gold)
        n_choices = len(task.labels)
    if task.name == "sst-2":  # the majority class as the train split has it, where it is there
        try:
            train_gold = np.array([ex.label for ex in cut(task.load(directory, "train"))])
        except TaskError:
            train_gold = None
    return {
        "task": task.name,
        "split": split,
        "metric": metric,
        "value": float(value),
        "examples": len(examples),
        "source": source(task.name),
        **baselines(task.name, train_gold, gold, n_choices),
    }
