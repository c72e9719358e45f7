"""A seeded generator of English-like documents for the tests: the project's own data."""

import random

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "that",
    "it",
    "was",
    "he",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "from",
    "have",
    "or",
    "by",
    "one",
    "had",
    "not",
    "but",
    "what",
    "all",
    "were",
    "when",
    "we",
    "there",
    "can",
    "an",
    "your",
    "which",
    "their",
    "said",
    "if",
    "do",
    "will",
    "each",
    "about",
    "how",
    "up",
    "out",
    "them",
    "then",
    "she",
    "many",
    "some",
    "so",
    "these",
    "would",
    "other",
    "into",
    "has",
    "more",
    "her",
    "two",
    "like",
    "him",
    "see",
    "time",
    "could",
    "no",
    "make",
    "than",
    "first",
    "been",
    "its",
    "who",
    "now",
    "people",
    "my",
    "made",
    "over",
    "did",
    "down",
    "only",
    "way",
    "find",
    "use",
    "may",
    "water",
    "long",
    "little",
    "very",
    "after",
    "words",
    "called",
    "just",
    "where",
    "most",
    "know",
]


def documents(n: int, seed: int = 0, min_words: int = 5, max_words: int = 60) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
        # sentences over one or more lines, never an empty line inside a document
        text, line = [], []
        for w in words:
            line.append(w)
            if rng.random() < 0.1:
                text.append(" ".join(line).capitalize() + ".")
                line = []
        if line:
            text.append(" ".join(line).capitalize() + ".")
        docs.append("\n".join(text))
    return docs


def reviews(n: int, seed: int) -> list[tuple[str, str]]:
    """(sentence, label): 1 when the sentence holds 'great', 0 when it holds 'awful'. A labeled
    task learnable from one word, in SST-2's shape."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.random() < 0.5
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
        words.insert(rng.randrange(len(words) + 1), "great" if label else "awful")
        out.append((" ".join(words), str(int(label))))
    return out


def write_sst2(d, n_train: int = 400, n_dev: int = 200, n_test: int = 50) -> None:
    """An SST-2 directory in the GLUE layout: train.tsv and dev.tsv with a header, test.tsv indexed."""
    for split, n, seed in (("train", n_train, 1), ("dev", n_dev, 2)):
        rows = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in reviews(n, seed)]
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    test = ["index\tsentence"] + [f"{i}\t{s}" for i, (s, _) in enumerate(reviews(n_test, 3))]
    (d / "test.tsv").write_text("\n".join(test) + "\n")


def synthetic_dataset(d, tokens: int, n_ctx: int = 512) -> int:
    """A format-3 dataset of `tokens` random token ids in its train split (enough to read blocks;
    no tokenizer), written a piece at a time so that gigabytes need little memory. Returns the
    train split's bytes."""
    from pathlib import Path

    import numpy as np
    import pyarrow.fs as pafs

    from pipeline.data.manifest import FORMAT_VERSION, manifest_json
    from pipeline.data.packing import plan_shards, shard_name, to_bytes, write_shard

    d = Path(d)
    rng = np.random.default_rng(tokens)
    fs = pafs.LocalFileSystem()
    (d / "work").mkdir(parents=True)
    (d / "train").mkdir()
    part = d / "work" / "part"
    with open(part, "wb") as f:
        for at in range(0, tokens, 1 << 26):
            f.write(to_bytes(rng.integers(0, 40_000, min(1 << 26, tokens - at)), np.dtype("<u2")))
    shard_tokens = 8 << 20
    shards = {}
    for k, pieces in enumerate(plan_shards([tokens], shard_tokens)):
        sha = write_shard(
            fs, str(d / shard_name("train", k)), [(str(part), 2 * at, 2 * n) for _, at, n in pieces]
        )
        shards[shard_name("train", k)] = {"tokens": sum(n for _, _, n in pieces), "sha256": sha}
    part.unlink()
    (d / "work").rmdir()

    def split(n: int) -> dict:
        return {
            "documents": 1,
            "tokens": n,
            "bytes": 4 * n,
            "blocks": max(n - 1, 0) // n_ctx,
            "tokens_not_in_a_block": 0,
            "empty_documents": 0,
        }

    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": str(tokens),
        "source_key": str(tokens),
        "inputs": [],
        "options": {},
        "n_ctx": n_ctx,
        "seed": 0,
        "dtype": "uint16",
        "shard_tokens": shard_tokens,
        "replaced_bytes": 0,
        "shards": shards,
        "tokenizer": {
            "sha256": "-",
            "vocab_size": 40_000,
            "n_merges": 0,
            "end_of_document": 0,
            "source": "-",
        },
        "splits": {"train": split(tokens), "val": split(0)},
    }
    (d / "manifest.json").write_text(manifest_json(manifest))
    return 2 * tokens


def released_vocabulary(d):
    """A small vocabulary in the released GPT-1 files' format (encoder_bpe_40000.json and
    vocab_40000.bpe), learned on review text: what load_tokenizer reads as the released encoder."""
    import json
    from pathlib import Path

    from pipeline.data.tokenizer import RESERVED_TOKENS, train_tokenizer

    d = Path(d)
    d.mkdir(parents=True)
    spec = json.loads(train_tokenizer([s for s, _ in reviews(300, 9)], n_merges=200).to_str())["model"]
    (d / "encoder_bpe_40000.json").write_text(
        json.dumps({t: i for t, i in spec["vocab"].items() if t not in RESERVED_TOKENS})
    )
    (d / "vocab_40000.bpe").write_text(
        "#version: 0.2\n"
        + "\n".join(" ".join(m) if isinstance(m, list) else m for m in spec["merges"])
        + "\n"
    )
    return d


def write_cola(d, n: int, seed: int) -> None:
    """A CoLA directory in the GLUE layout (headerless: source, label, mark, sentence); the
    acceptable sentences keep their word order, the others are reversed."""
    rng = random.Random(seed)
    for split in ("train", "dev"):
        rows = []
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
            ok = rng.random() < 0.6
            rows.append(f"src\t{int(ok)}\t{'' if ok else '*'}\t{' '.join(words if ok else words[::-1])}")
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n")
