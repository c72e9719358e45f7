"""What prepare's normalisation costs beside ftfy.fix_text on every document, and where the two
differ: the measurement behind pipeline/data/text.normalize running ftfy's repair only on text
that looks like mojibake (or holds C1 controls).

Each corpus is split into documents at blank lines (whitespace only), as prepare's `.txt` reader
splits it; each
function runs over every document, `--repeat` times, and the best time is taken. A document
"differs" where normalize's output is not ftfy.fix_text's followed by the same control-character
and line-break steps.

    python bench/normalize_speed.py [FILE ...] [--repeat 3]

Without files it reads ../shared/data/corpus/*.txt where present, else the built-in world corpus
(gpt1/world.py).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def best_time(fn, docs: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for d in docs:
            fn(d)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    import ftfy

    from pipeline.data.text import normalize

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    files = [Path(f) for f in a.files] or sorted((ROOT.parent / "shared" / "data" / "corpus").glob("*.txt"))
    corpora = {f.name: f.read_text(encoding="utf-8") for f in files}
    if not corpora:
        from gpt1 import world

        corpora = {"world corpus (8,000 documents)": "\n\n".join(world.corpus(8000))}
    print("| corpus | MB | ftfy.fix_text (MB/s) | normalize (MB/s) | ratio | documents differing |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, text in corpora.items():
        docs = [d for d in re.split(r"\n[^\S\n]*\n", text) if d.strip()]  # a blank line: whitespace only
        mb = sum(len(d.encode()) for d in docs) / 1e6
        t_ftfy = best_time(ftfy.fix_text, docs, a.repeat)
        t_norm = best_time(normalize, docs, a.repeat)
        differ = sum(normalize(d) != normalize(ftfy.fix_text(d)) for d in docs)
        print(
            f"| {name} | {mb:.2f} | {mb / t_ftfy:.2f} | {mb / t_norm:.1f} | {t_ftfy / t_norm:.0f}x | "
            f"{differ:,} of {len(docs):,} |"
        )


if __name__ == "__main__":
    main()
