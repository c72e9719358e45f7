"""prepare at corpus scale. So far one section: learning the tokenizer from BooksCorpus-sized
word counts, in bounded time and memory, deterministically.

Word counts with a Zipfian distribution over pronounceable made-up words are synthesised (seeded)
at 0.1 M, 0.5 M and 1.3 M distinct words (BooksCorpus has about 1.3 M). Each size runs in its own
process: CPU seconds and peak RSS of learning 40,000 merges (pipeline/data/bpe.py), against the
RSS of the counts alone. The 1.3 M run is repeated under another PYTHONHASHSEED, and the two
merge lists must be equal.

    python bench/prepare_scale.py [--words 100000 500000 1300000] [--merges 40000]

Target: at most 2 minutes and 2 GB at 1.3 M words on one core.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def zipf_counts(n_words: int, seed: int = 0) -> dict[str, int]:
    """n_words distinct words of 1-5 syllables; the word of rank r is counted about C / r^1.07
    times (a Zipfian corpus of about 340 M words at 1.3 M distinct)."""
    rng = random.Random(seed)
    syllables = ([c + v for c in "bcdfghjklmnprstvwyz" for v in ("a", "e", "i", "o", "u", "ou", "ea", "ai")]
                 + list("aeiou"))
    words: dict[str, int] = {}
    while len(words) < n_words:
        w = "".join(rng.choice(syllables) for _ in range(rng.choice((1, 2, 2, 3, 3, 3, 4, 4, 5))))
        words.setdefault(w, 0)
    for rank, w in enumerate(words):
        words[w] = max(1, int(5e7 / (rank + 10) ** 1.07))
    return words


def one(n_words: int, n_merges: int) -> dict:
    """Measured in its own process, so that the peak RSS is this size's."""
    from pipeline.data.bpe import learn_bpe

    counts = zipf_counts(n_words)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.process_time()
    _, merges = learn_bpe(counts, n_merges)
    cpu = time.process_time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    digest = hashlib.sha256(json.dumps(merges).encode()).hexdigest()
    return {"words": n_words, "tokens": sum(counts.values()), "cpu_s": cpu, "peak": peak, "counts_rss": base,
            "merges": len(merges), "sha256": digest}


def run_one(n_words: int, n_merges: int, hash_seed: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--one", str(n_words), str(n_merges)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONHASHSEED": hash_seed})
    if r.returncode:
        sys.exit(f"bench: the {n_words:,}-word run failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--words", type=int, nargs="+", default=[100_000, 500_000, 1_300_000])
    p.add_argument("--merges", type=int, default=40_000)
    p.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(*a.one)))
        return
    rows = [run_one(n, a.merges, "0") for n in a.words]
    again = run_one(a.words[-1], a.merges, "4242")
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"date: {datetime.date.today()}  machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; one process, one core")
    print()
    print("| distinct words | corpus words | merges | CPU s | peak RSS MB | of which the counts MB | merges sha256 |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['words']:,} | {r['tokens']:,} | {r['merges']:,} | {r['cpu_s']:.1f} | {r['peak'] / 2**20:,.0f} | "
              f"{r['counts_rss'] / 2**20:,.0f} | {r['sha256'][:16]} |")
    same = again["sha256"] == rows[-1]["sha256"]
    print()
    print(f"{a.words[-1]:,} words again under PYTHONHASHSEED=4242: merges sha256 {again['sha256'][:16]} "
          f"({'the same' if same else 'DIFFERENT'}), {again['cpu_s']:.1f} CPU s")
    last = rows[-1]
    verdict = "met" if last["cpu_s"] <= 120 and last["peak"] <= 2 * 2**30 else "missed"
    print(f"target at {last['words']:,} words: <= 120 s and <= 2 GB: {last['cpu_s']:.0f} s, "
          f"{last['peak'] / 2**30:.2f} GB: {verdict}")


if __name__ == "__main__":
    main()
