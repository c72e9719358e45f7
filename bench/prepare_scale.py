"""prepare at corpus scale, in two sections.

--section tokenizer: learning the tokenizer from BooksCorpus-sized word counts, in bounded time and
memory, deterministically. Word counts with a Zipfian distribution over pronounceable made-up
words are synthesised (seeded) at 0.1 M, 0.5 M and 1.3 M distinct words (BooksCorpus has about
1.3 M). Each size runs in its own process: CPU seconds and peak RSS of learning 40,000 merges
(pipeline/data/bpe.py), against the RSS of the counts alone. The 1.3 M run is repeated under
another PYTHONHASHSEED, and the two merge lists must be equal.
Target: at most 2 minutes and 2 GB at 1.3 M words on one core.

--section corpus: the driver's share of the work, against corpus size. Corpora of 10 MB, 100 MB and
1 GB are built by repeating ../shared/data/corpus's texts; a tokenizer of 40,000 merges is learned
once from the smallest and given to every run, so that the rows time the same work. Each size runs
in a fresh process with a fresh local Ray instance: prepare's wall time, the driver's CPU seconds
(every thread of the driver process, Ray's own included), and the peak private RSS (RssAnon) of
the driver and of the largest Ray worker, sampled every 0.2 s; then, in the same process, the bare
loop: the same documents, read and normalised beforehand and held in memory, through encode_texts
in batches (tokenizers' own threads on every core).
Targets: the driver at most 0.3 CPU s per 100 MB, flat with size; prepare at least 0.9x the bare
loop from 100 MB up; peak RSS of driver and workers flat from 10 MB to 1 GB, within 20%.

    python bench/prepare_scale.py [--section tokenizer corpus] [--words 100000 500000 1300000]
                                  [--merges 40000] [--sizes 10 100 1000] [--workdir DIR]
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
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def zipf_counts(n_words: int, seed: int = 0) -> dict[str, int]:
    """n_words distinct words of 1-5 syllables; the word of rank r is counted about C / r^1.07
    times (a Zipfian corpus of about 340 M words at 1.3 M distinct)."""
    rng = random.Random(seed)
    syllables = [
        c + v for c in "bcdfghjklmnprstvwyz" for v in ("a", "e", "i", "o", "u", "ou", "ea", "ai")
    ] + list("aeiou")
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
    return {
        "words": n_words,
        "tokens": sum(counts.values()),
        "cpu_s": cpu,
        "peak": peak,
        "counts_rss": base,
        "merges": len(merges),
        "sha256": digest,
    }


def run_one(n_words: int, n_merges: int, hash_seed: str) -> dict:
    r = subprocess.run(
        [sys.executable, __file__, "--one", str(n_words), str(n_merges)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
    )
    if r.returncode:
        sys.exit(f"bench: the {n_words:,}-word run failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def corpus_one(corpus: Path, tok: Path, out: Path) -> dict:
    """One corpus size, in its own process (so that peak RSS is this size's)."""
    import ray
    from prepare_throughput import PeakRSS

    from pipeline.data.corpus import ReadOptions, read_documents, resolve_inputs
    from pipeline.data.prepare import PrepareConfig, prepare
    from pipeline.data.tokenizer import encode_texts, load_tokenizer

    ray.init(address="local", num_cpus=os.cpu_count(), logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.range(1).count()  # Ray Data's own start-up, outside the timing
    with PeakRSS() as rss:
        t0, cpu0 = time.perf_counter(), time.process_time()
        m = prepare([str(corpus)], out, PrepareConfig(tokenizer=str(tok)), track=False)
        prep_s, driver_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    driver_cpu -= rss.cpu_s  # the RSS sampler is the bench's, not the driver's
    tokens = m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]
    ray.shutdown()

    tokenizer = load_tokenizer(tok)
    f = resolve_inputs([str(corpus)])[0]
    t0 = time.perf_counter()
    docs = [t for _, t, _, _ in read_documents(f, 0, -1, ReadOptions()) if t]
    read_s = time.perf_counter() - t0  # one process: what prepare's workers do besides encoding
    t0 = time.perf_counter()
    for i in range(0, len(docs), 2048):
        encode_texts(tokenizer, docs[i : i + 2048])
    bare_s = time.perf_counter() - t0
    return {
        "mb": corpus.stat().st_size / 1e6,
        "tokens": tokens,
        "prepare_s": prep_s,
        "driver_cpu": driver_cpu,
        "sampler_cpu": rss.cpu_s,
        "bare_s": bare_s,
        "read_s": read_s,
        "driver_private": rss.driver_private_peak,
        "worker_private": rss.worker_private_peak,
    }


def corpus_section(sizes: list[int], workdir: str | None) -> None:
    from prepare_throughput import build_corpus

    work = Path(workdir or tempfile.mkdtemp(prefix="prepare-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    corpora = {}
    for mb in sizes:
        corpora[mb] = work / f"corpus-{mb}mb.txt"
        if not corpora[mb].exists():
            build_corpus(corpora[mb], mb)
    tok = work / "tok"
    if not (tok / "manifest.json").exists():  # learned once, from the smallest corpus
        subprocess.run(
            [
                sys.executable,
                "-m",
                "gpt1.cli",
                "prepare",
                "--corpus",
                str(corpora[min(sizes)]),
                "--out",
                str(tok),
                "--no-mlflow",
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
    rows = []
    for mb in sizes:
        out = work / f"out-{mb}mb"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        r = subprocess.run(
            [sys.executable, __file__, "--corpus-one", str(corpora[mb]), str(tok), str(out)],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        )
        if r.returncode:
            sys.exit(f"bench: the {mb} MB run failed:\n{r.stderr[-3000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        subprocess.run(["rm", "-rf", str(out)], check=True)
    print(
        "| corpus MB | tokens | prepare s | prepare MB/s | driver CPU s | driver CPU s per 100 MB | "
        "driver CPU / wall | bare encode_texts s | prepare / bare | bare read + normalise s (one process) | "
        "prepare / (read + normalise + encode) | driver peak private RSS MB | largest worker peak private RSS MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mb']:,.0f} | {r['tokens']:,} | {r['prepare_s']:.1f} | {r['mb'] / r['prepare_s']:.2f} | "
            f"{r['driver_cpu']:.2f} | {r['driver_cpu'] / r['mb'] * 100:.2f} | "
            f"{r['driver_cpu'] / r['prepare_s']:.1%} | {r['bare_s']:.1f} | {r['bare_s'] / r['prepare_s']:.2f}x | "
            f"{r['read_s']:.1f} | {(r['bare_s'] + r['read_s']) / r['prepare_s']:.2f}x | "
            f"{r['driver_private'] / 2**20:,.0f} | {r['worker_private'] / 2**20:,.0f} |"
        )
    print()
    per = [r["driver_cpu"] / r["mb"] * 100 for r in rows]
    sampler = ", ".join(f"{r['sampler_cpu']:.1f}" for r in rows)
    print(
        f"driver CPU per 100 MB: {', '.join(f'{p:.2f}' for p in per)} s (target <= 0.3, flat); the RSS "
        f"sampler's own CPU, left out: {sampler} s"
    )
    for key in ("driver_private", "worker_private"):
        lo, hi = rows[0][key], rows[-1][key]
        print(
            f"{key.replace('_', ' ')} peak from {rows[0]['mb']:,.0f} to {rows[-1]['mb']:,.0f} MB: "
            f"{lo / 2**20:,.0f} -> {hi / 2**20:,.0f} MB ({hi / lo - 1:+.0%}; target within 20%)"
        )
    rate = max(r["tokens"] / r["prepare_s"] for r in rows) / (os.cpu_count() or 1)
    print(f"tokens per second per core, the best row: {rate:,.0f}")


def tokenizer_section(words: list[int], merges: int) -> None:
    rows = [run_one(n, merges, "0") for n in words]
    again = run_one(words[-1], merges, "4242")
    print(
        "| distinct words | corpus words | merges | CPU s | peak RSS MB | of which the counts MB | merges sha256 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['words']:,} | {r['tokens']:,} | {r['merges']:,} | {r['cpu_s']:.1f} | {r['peak'] / 2**20:,.0f} | "
            f"{r['counts_rss'] / 2**20:,.0f} | {r['sha256'][:16]} |"
        )
    same = again["sha256"] == rows[-1]["sha256"]
    print()
    print(
        f"{words[-1]:,} words again under PYTHONHASHSEED=4242: merges sha256 {again['sha256'][:16]} "
        f"({'the same' if same else 'DIFFERENT'}), {again['cpu_s']:.1f} CPU s"
    )
    last = rows[-1]
    verdict = "met" if last["cpu_s"] <= 120 and last["peak"] <= 2 * 2**30 else "missed"
    print(
        f"target at {last['words']:,} words: <= 120 s and <= 2 GB: {last['cpu_s']:.0f} s, "
        f"{last['peak'] / 2**30:.2f} GB: {verdict}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--section", nargs="+", choices=("tokenizer", "corpus"), default=["tokenizer", "corpus"])
    p.add_argument("--words", type=int, nargs="+", default=[100_000, 500_000, 1_300_000])
    p.add_argument("--merges", type=int, default=40_000)
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="corpus sizes in MB")
    p.add_argument("--workdir", default=None, help="where to build the corpora (default: a temp dir)")
    p.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    p.add_argument("--corpus-one", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(*a.one)))
        return
    if a.corpus_one:
        print(json.dumps(corpus_one(*map(Path, a.corpus_one))))
        return
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"date: {datetime.date.today()}  machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}"
    )
    for section in a.section:
        print()
        if section == "tokenizer":
            print("tokenizer: one process, one core")
            tokenizer_section(a.words, a.merges)
        else:
            print(f"corpus: a local Ray instance on {os.cpu_count()} cores")
            corpus_section(a.sizes, a.workdir)


if __name__ == "__main__":
    main()
