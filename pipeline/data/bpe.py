"""Learning BPE merges from word counts, deterministically.

The `tokenizers` trainer breaks ties between equally frequent pairs by hash-map order, which
changes from run to run, and the pipeline promises byte-identical output for identical inputs.
Here ties go to the lexicographically smallest pair. Words are counted first (in parallel, by
the Ray workers), so only the table of distinct words is ever in memory.
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict

SUFFIX = "</w>"  # marks the last symbol of a word, as in GPT-1's vocabulary


def symbols(word: str) -> list[str]:
    return list(word[:-1]) + [word[-1] + SUFFIX]


def learn_bpe(word_counts: dict[str, int], n_merges: int, min_frequency: int = 2
              ) -> tuple[list[str], list[tuple[str, str]]]:
    """(alphabet in sorted order, merges in the order learned) for at most n_merges merges."""
    words = [symbols(w) for w in word_counts if w]
    counts = [word_counts[w] for w in word_counts if w]
    alphabet = sorted({s for w in words for s in w})
    pair_count: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, (w, c) in enumerate(zip(words, counts)):
        for pair in zip(w, w[1:]):
            pair_count[pair] += c
            where[pair].add(i)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:
            continue  # a stale entry: the count changed since it was pushed
        if -neg < min_frequency:
            break
        merges.append(pair)
        merged = pair[0] + pair[1]
        changed: set[tuple[str, str]] = set()
        for i in where.pop(pair):
            w, c = words[i], counts[i]
            for p in zip(w, w[1:]):  # take the word's old pairs out ...
                pair_count[p] -= c
                changed.add(p)
            j, out = 0, []
            while j < len(w):
                if j + 1 < len(w) and w[j] == pair[0] and w[j + 1] == pair[1]:
                    out.append(merged)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):  # ... and its new ones in
                pair_count[p] += c
                where[p].add(i)
                changed.add(p)
        del pair_count[pair]
        for p in changed:
            c = pair_count.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            elif p in pair_count:
                del pair_count[p]
    return alphabet, merges
