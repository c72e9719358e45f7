"""Throughput and memory of `prepare` against a bare loop over the same text-to-ids function.

Corpora of about 10, 100 and 500 MB are built by repeating the corpora in ../shared/data/corpus.
For each size, in a fresh process and a fresh local Ray instance on the same cores:
- prepare: read, normalise, tokenize (the released GPT-1 vocabulary, which splits text as the
  released encoder did: ftfy, text_standardize, spaCy, lower-case, then BPE), pack and write,
  timed from the call to the finished manifest;
- bare: the same documents, already in memory, through encode_texts (what prepare's workers
  call) in batches of 256, in this one process;
and the peak RSS of the driver and of the largest Ray worker, sampled every 0.2 s.

    python bench/prepare_throughput.py [--sizes 10 100 500] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


def build_corpus(path: Path, mb: int) -> None:
    sources = [SHARED / "corpus" / "tinyshakespeare.txt", SHARED / "corpus" / "wikitext2-valid.txt"]
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        sys.exit(f"bench: {missing[0]} is not here; this benchmark reads ../shared/data/corpus")
    text = "\n\n".join(s.read_text(encoding="utf-8") for s in sources) + "\n\n"
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < mb * 1_000_000:
            f.write(text)
            written += len(text.encode("utf-8"))


def _private_bytes(pid: int | str = "self") -> int:
    """RssAnon: resident memory that is the process's own, without shared pages such as the
    Ray object store's, which a process that reads objects maps into its RSS."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Samples the driver and its descendants (Ray's workers among them) every 0.2 s."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.worker_peak = self.worker_private_peak = self.driver_private_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        self.cpu_s = 0.0  # this sampler's own CPU time, which a caller timing the process subtracts
        t0 = time.thread_time()
        while not self._stop.is_set():
            self.driver_private_peak = max(self.driver_private_peak, _private_bytes())
            for p in self.me.children(recursive=True):
                try:
                    if "ray::" in p.name() or "ray::" in " ".join(p.cmdline()[:1]):
                        self.worker_peak = max(self.worker_peak, p.memory_info().rss)
                        self.worker_private_peak = max(self.worker_private_peak, _private_bytes(p.pid))
                except (psutil.Error, OSError):
                    pass
            self.cpu_s = time.thread_time() - t0
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def one(corpus: Path, out: Path) -> dict:
    """Measure one corpus size (run in its own process, so that peak RSS is this size's)."""
    import ray

    from pipeline.data.corpus import ReadOptions, read_documents, resolve_inputs
    from pipeline.data.prepare import PrepareConfig, prepare
    from pipeline.data.tokenizer import encode_texts, load_tokenizer

    vocab = SHARED / "gpt1-vocab"
    ray.init(address="local", num_cpus=os.cpu_count(), logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    size = corpus.stat().st_size
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        m = prepare([str(corpus)], out, PrepareConfig(tokenizer=str(vocab)), track=False)
        prep_s = time.perf_counter() - t0
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]
    ray.shutdown()

    # The bare loop: the same documents, normalised, held in memory, encoded in batches.
    tok = load_tokenizer(vocab)
    f = resolve_inputs([str(corpus)])[0]
    docs = [t for _, t, _, _ in read_documents(f, 0, -1, ReadOptions()) if t]
    t0 = time.perf_counter()
    bare_tokens = 0
    for i in range(0, len(docs), 256):
        bare_tokens += sum(map(len, encode_texts(tok, docs[i : i + 256])))
    bare_s = time.perf_counter() - t0
    return {
        "mb": size / 1e6,
        "prepare_s": prep_s,
        "prepare_tokens": tokens,
        "bare_s": bare_s,
        "bare_tokens": bare_tokens,
        "driver_peak": driver_peak,
        "worker_peak": rss.worker_peak,
        "driver_private": rss.driver_private_peak,
        "worker_private": rss.worker_private_peak,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500], help="corpus sizes in MB")
    p.add_argument("--workdir", default=None, help="where to build the corpora (default: a temp dir)")
    p.add_argument("--one", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(Path(a.one[0]), Path(a.one[1]))))
        return
    work = Path(a.workdir or tempfile.mkdtemp(prefix="prepare-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for mb in a.sizes:
        corpus = work / f"corpus-{mb}mb.txt"
        if not corpus.exists():
            build_corpus(corpus, mb)
        out = work / f"out-{mb}mb"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        r = subprocess.run(
            [sys.executable, __file__, "--one", str(corpus), str(out)], capture_output=True, text=True
        )
        if r.returncode:
            sys.exit(f"bench: the {mb} MB run failed:\n{r.stderr[-3000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        subprocess.run(["rm", "-rf", str(out)], check=True)

    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"date: {datetime.date.today()}  machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}; tokenizer: the released GPT-1 vocabulary"
    )
    print()
    print(
        "| corpus MB | prepare MB/s | prepare tokens/s | bare encode_texts MB/s (one process) | bare tokens/s | "
        "prepare / bare | driver peak RSS MB (private) | largest worker peak RSS MB (private) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mb']:.0f} | {r['mb'] / r['prepare_s']:.2f} | {r['prepare_tokens'] / r['prepare_s']:,.0f} | "
            f"{r['mb'] / r['bare_s']:.2f} | {r['bare_tokens'] / r['bare_s']:,.0f} | "
            f"{r['bare_s'] / r['prepare_s']:.2f}x | "
            f"{r['driver_peak'] / 2**20:,.0f} ({r['driver_private'] / 2**20:,.0f}) | "
            f"{r['worker_peak'] / 2**20:,.0f} ({r['worker_private'] / 2**20:,.0f}) |"
        )
    print()
    print("RSS counts the Ray object store's shared pages that a process has touched; (private) is")
    print("RssAnon, the process's own memory.")


if __name__ == "__main__":
    main()
