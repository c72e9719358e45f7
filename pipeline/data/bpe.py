"""Learning BPE merges from word counts, deterministically and in bounded time and memory.

The `tokenizers` trainer breaks ties between equally frequent pairs by hash-map order, which
changes from run to run, and the pipeline promises byte-identical output for identical inputs.
Here ties go to the lexicographically smallest pair (compared as strings). Words are counted
first (in parallel, by the Ray workers), so only the table of distinct words is ever in memory.

The learning is incremental: symbols are small ints, each pair knows the words that hold it,
and a merge visits only the words that still hold its pair, changing only the counts of the
pairs next to each occurrence. So a merge costs what it changes, not what the corpus holds.
"""

from __future__ import annotations

import heapq
from array import array
from collections import defaultdict

SUFFIX = "</w>"  # marks the last symbol of a word, as in GPT-1's vocabulary


def symbols(word: str) -> list[str]:
    return list(word[:-1]) + [word[-1] + SUFFIX]


def learn_bpe(
    word_counts: dict[str, int], n_merges: int, min_frequency: int = 2
) -> tuple[list[str], list[tuple[str, str]]]:
    """(alphabet in sorted order, merges in the order learned) for at most n_merges merges."""
    names = sorted({s for w in word_counts if w for s in symbols(w)})
    alphabet = list(names)
    ids = {s: i for i, s in enumerate(names)}
    words: list[list[int]] = []
    counts: list[int] = []
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    # Word indices per pair, appended as pairs appear: 4 bytes an entry (a set would take ~50).
    # Entries go stale when a word loses the pair; a visit to such a word changes nothing.
    where: dict[tuple[int, int], array] = defaultdict(lambda: array("i"))
    for w, c in word_counts.items():
        if not w:
            continue
        seq = [ids[s] for s in symbols(w)]
        i = len(words)
        words.append(seq)
        counts.append(c)
        for pair in zip(seq, seq[1:], strict=False):
            pair_count[pair] += c
            where[pair].append(i)

    def entry(pair):  # the heap's order: highest count first, then the smallest pair as strings
        return -pair_count[pair], names[pair[0]], names[pair[1]], pair

    heap = [entry(p) for p in pair_count]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges and heap:
        neg, _, _, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:
            continue  # a stale entry: the count changed since it was pushed
        if -neg < min_frequency:
            break
        a, b = pair
        merges.append((names[a], names[b]))
        new = len(names)
        names.append(names[a] + names[b])
        touched: set[tuple[int, int]] = set()
        for i in sorted(set(where.pop(pair))):
            w, c = words[i], counts[i]
            out, j, n = [], 0, len(w)
            while j < n:
                if j + 1 < n and w[j] == a and w[j + 1] == b:
                    # The pairs on either side of this occurrence change; nothing else does.
                    if j:  # the old pair on the left (its left symbol maybe merged just now)
                        left = (w[j - 1], a)
                        pair_count[left] -= c
                        touched.add(left)
                        pair_count[(out[-1], new)] += c
                        where[(out[-1], new)].append(i)
                        touched.add((out[-1], new))
                    if j + 2 < n:
                        right = (b, w[j + 2])
                        # A following occurrence (a b a b) is merged next, and its left side
                        # moves the pair between the two; here only a pair that stays is moved.
                        if not (j + 3 < n and w[j + 2] == a and w[j + 3] == b):
                            pair_count[right] -= c
                            touched.add(right)
                            pair_count[(new, w[j + 2])] += c
                            where[(new, w[j + 2])].append(i)
                            touched.add((new, w[j + 2]))
                    out.append(new)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            if len(out) != n:
                words[i] = out
        pair_count.pop(pair, None)
        touched.discard(pair)
        for p in touched:
            if pair_count.get(p, 0) > 0:
                heapq.heappush(heap, entry(p))
            else:
                pair_count.pop(p, None)
                where.pop(p, None)
    return alphabet, merges
