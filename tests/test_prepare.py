"""gpt1 prepare on Ray Data: formats, determinism, split, packing, bad input, re-runs, MLflow."""

import gzip
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus_gen import documents

from pipeline.data.dataset import load_split
from pipeline.data.prepare import PrepareConfig, prepare
from pipeline.data.prepare_cli import main
from pipeline.data.tokenizer import END_OF_DOCUMENT, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(n_merges=300, n_ctx=32, val_fraction=0.2, shard_mb=1)


def cfg(**kw) -> PrepareConfig:
    return PrepareConfig(**{**SMALL, **kw})


def stream(out: Path, split: str) -> np.ndarray:
    """The split's token stream: its shards' raw little-endian ids, in order, checked against the
    blocks that training reads (consecutive blocks share one token)."""
    m = json.loads((out / "manifest.json").read_text())
    names = sorted(k for k in m["shards"] if k.startswith(split + "/"))
    dtype = np.dtype(m["dtype"]).newbyteorder("<")
    whole = np.concatenate([np.fromfile(out / n, dtype=dtype) for n in names]) if names else np.empty(0, int)
    assert len(whole) == m["splits"][split]["tokens"]
    blocks = load_split(out, m, split)
    assert len(blocks) == m["splits"][split]["blocks"]
    if not len(blocks):
        return whole
    got = blocks[np.arange(len(blocks))]
    assert all(got[i, -1] == got[i + 1, 0] for i in range(len(got) - 1)), "blocks are not contiguous"
    assert np.array_equal(
        np.concatenate([got[0], *[b[1:] for b in got[1:]]]), whole[: len(blocks) * m["n_ctx"] + 1]
    )
    return whole


def decoded_docs(out: Path, split: str) -> list[str]:
    tok = load_tokenizer(out)
    eod = tok.token_to_id(END_OF_DOCUMENT)
    s = stream(out, split).tolist()
    docs, cur = [], []
    for t in s:
        if t == eod:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(t)
    return docs


def norm(text: str) -> str:
    # decoding puts spaces around punctuation that the tokenizer split off: compare without any
    return "".join(text.lower().split())


def write_text(path: Path, docs: list[str]) -> Path:
    path.write_text("\n\n".join(docs) + "\n")
    return path


@pytest.mark.slow
def test_text_corpus_end_to_end(tmp_path, ray_session):
    docs = documents(300, seed=1)
    src = write_text(tmp_path / "corpus.txt", docs)
    out = tmp_path / "ds"
    m = prepare([str(src)], out, cfg(), track=False)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tokenizer.json", "train", "val"]
    train, val = m["splits"]["train"], m["splits"]["val"]
    assert train["documents"] + val["documents"] == 300
    assert 0.1 < val["documents"] / 300 < 0.3
    assert train["bytes"] + val["bytes"] == sum(len(d.encode()) for d in docs)
    # every document is in exactly one split, whole and in order (all but a cut-off last one)
    got = decoded_docs(out, "train") + decoded_docs(out, "val")
    want = [norm(d) for d in docs]
    assert len(got) == 300 and len(set(got)) == len(got)
    for d in got:
        assert norm(d) in want
    train_docs = [norm(d) for d in decoded_docs(out, "train")]
    assert train_docs == [w for w in want if w in set(train_docs)]  # input order kept
    assert not set(train_docs) & {norm(d) for d in decoded_docs(out, "val")}
    for name, shard in m["shards"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == shard["sha256"]
        assert (out / name).stat().st_size == 2 * shard["tokens"]
    assert 100 < m["tokenizer"]["n_merges"] <= 300 and m["dtype"] == "uint16"
    # the input's digest: the sha256 of its 1 MiB pieces' sha256s (one piece here)
    assert (
        m["inputs"][0]["sha256_pieces"]
        == hashlib.sha256(hashlib.sha256(src.read_bytes()).digest()).hexdigest()
    )
    assert m["n_ctx"] == 32


@pytest.mark.slow
def test_every_format_gives_the_same_documents(tmp_path, ray_session):
    docs = documents(60, seed=2)
    (tmp_path / "a.txt").write_text("\n\n".join(docs))
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("\n\n".join(docs))
    (tmp_path / "c.jsonl").write_text(
        "".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(docs))
    )
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"body": d}) + "\n" for d in docs))
    pq.write_table(pa.table({"body": docs}), tmp_path / "e.parquet")
    docdir = tmp_path / "perfile"
    docdir.mkdir()
    for i, d in enumerate(docs):
        (docdir / f"{i:03d}.txt").write_text(d)
    tok = tmp_path / "tok"
    prepare([str(tmp_path / "a.txt")], tok, cfg(val_fraction=0.0), track=False)
    runs = {
        "text": ([str(tmp_path / "a.txt")], {}),
        "text.gz": ([str(tmp_path / "b.txt.gz")], {}),
        "jsonl": ([str(tmp_path / "c.jsonl")], {"text_field": "body"}),
        "jsonl.gz": ([str(tmp_path / "d.jsonl.gz")], {"text_field": "body"}),
        "parquet": ([str(tmp_path / "e.parquet")], {"text_column": "body"}),
        "file per document": ([str(docdir)], {"text_split": "file"}),
    }
    streams = {}
    for name, (corpus, kw) in runs.items():
        out = tmp_path / name.replace(" ", "_")
        m = prepare(corpus, out, cfg(tokenizer=str(tok), val_fraction=0.0, **kw), track=False)
        assert m["splits"]["train"]["documents"] == 60, name
        streams[name] = stream(out, "train")
    first = streams["text"]
    assert len(first) > 0
    for name, s in streams.items():
        assert np.array_equal(s, first), name


@pytest.mark.slow
def test_output_is_identical_whatever_the_parallelism_and_chunk_size(tmp_path, ray_session):
    docs = documents(18_000, seed=3)
    src = write_text(tmp_path / "c.txt", docs[:9_000])
    write_text(tmp_path / "d.txt", docs[9_000:])
    tok = tmp_path / "tok"
    prepare([str(src)], tok, cfg(val_fraction=0.0), track=False, local=True)
    corpus = [str(tmp_path / "*.txt")]
    assert sum(p.stat().st_size for p in tmp_path.glob("*.txt")) > 2.4e6  # several chunks of 1 MB
    ref = prepare(corpus, tmp_path / "ref", cfg(tokenizer=str(tok), shard_mb=1), track=False, local=True)
    want = (tmp_path / "ref" / "manifest.json").read_text()
    assert len(ref["shards"]) > 2 and ref["splits"]["val"]["documents"] > 0
    for parallelism in (1, 2, 3):
        for chunk_mb in (1, 2):
            out = tmp_path / f"p{parallelism}c{chunk_mb}"
            c = cfg(
                tokenizer=str(tok), shard_mb=1, parallelism=parallelism, chunk_mb=chunk_mb, batch_docs=500
            )
            prepare(corpus, out, c, track=False)
            assert (out / "manifest.json").read_text() == want, (parallelism, chunk_mb)
            assert {p.name: p.read_bytes() for p in (out / "train").iterdir()} == {
                p.name: p.read_bytes() for p in (tmp_path / "ref" / "train").iterdir()
            }


def test_chunks_inside_a_file_own_whole_documents(tmp_path):
    from pipeline.data.corpus import ReadOptions, plan_chunks, read_documents, resolve_inputs

    data = b"one a\none b\n\n  \ntwo\r\n \t\r\nthree a\nthree b\n\nlast"
    (tmp_path / "c.txt").write_bytes(data)
    f = resolve_inputs([str(tmp_path / "c.txt")])[0]
    whole = [d[:2] for d in read_documents(f, 0, -1, ReadOptions())]
    assert [t for _, t in whole] == ["one a\none b", "two", "three a\nthree b", "last"]
    for size in range(1, len(data) + 1):
        got = [
            d[:2]
            for it in plan_chunks([f], size, ReadOptions())
            for d in read_documents(f, it["start"], it["end"], ReadOptions())
        ]
        assert got == whole, size


@pytest.mark.slow
def test_packing_blocks_are_contiguous_and_hold_every_document_once(tmp_path, ray_session):
    docs = [f"document number {i} " + "word " * (i % 40) for i in range(200)]
    src = write_text(tmp_path / "c.txt", docs)
    out = tmp_path / "ds"
    m = prepare([str(src)], out, cfg(val_fraction=0.0), track=False)
    s = stream(out, "train")
    tok = load_tokenizer(out)
    eod = tok.token_to_id(END_OF_DOCUMENT)
    assert (s == eod).sum() == len(decoded_docs(out, "train")) == 200 and s[-1] == eod
    got = [norm(d) for d in decoded_docs(out, "train")]
    assert got == [norm(d) for d in docs]
    train = m["splits"]["train"]
    # every token is in a block but for the tail, which is counted
    assert train["blocks"] * 32 + 1 + train["tokens_not_in_a_block"] == train["tokens"] == len(s)
    assert train["blocks"] == (train["tokens"] - 1) // 32


@pytest.mark.slow
def test_non_utf8_bytes_are_replaced_and_counted(tmp_path, ray_session):
    raw = "\n\n".join(documents(20, seed=4)).encode() + b"\n\nbad \xff\xfe bytes here\n"
    (tmp_path / "c.txt").write_bytes(raw)
    m = prepare([str(tmp_path / "c.txt")], tmp_path / "ds", cfg(val_fraction=0.0), track=False)
    assert m["replaced_bytes"] == 2


@pytest.mark.slow
def test_a_single_very_long_line_is_split_and_processed(tmp_path, ray_session):
    words = documents(1, seed=5, min_words=600_000, max_words=600_000)[0].replace("\n", " ")
    assert len(words) > 2_500_000
    (tmp_path / "c.txt").write_text(words)
    m = prepare([str(tmp_path / "c.txt")], tmp_path / "ds", cfg(val_fraction=0.0), track=False)
    assert m["splits"]["train"]["documents"] == 1
    tok = load_tokenizer(tmp_path / "ds")
    assert m["splits"]["train"]["tokens"] == len(tok.encode(words, add_special_tokens=False).ids) + 1


@pytest.mark.slow
def test_rerun_is_a_no_op_and_a_different_one_needs_overwrite(tmp_path, ray_session):
    src = write_text(tmp_path / "c.txt", documents(50, seed=6))
    out = tmp_path / "ds"
    prepare([str(src)], out, cfg(), track=False)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    prepare([str(src)], out, cfg(parallelism=1), track=False)  # parallelism does not matter
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    import os

    os.utime(src, ns=(10**18, 10**18))  # the same bytes with another time (written again, copied)
    prepare([str(src)], out, cfg(), track=False)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    from pipeline.data.corpus import CorpusError

    with pytest.raises(CorpusError, match="--overwrite"):
        prepare([str(src)], out, cfg(seed=1), track=False)
    m = prepare([str(src)], out, cfg(seed=1), overwrite=True, track=False)
    assert m["seed"] == 1 and json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


BAD_INPUTS = {
    "missing path": (lambda d: str(d / "nope.txt"), "nope.txt: no such file"),
    "empty glob": (lambda d: str(d / "*.nothing"), "matches no files"),
    "empty corpus": (lambda d: _write(d / "e.txt", b"\n\n   \n"), "no documents"),
    "binary file": (lambda d: _write(d / "b.txt", b"abc\x00\x01\x02" * 10), "b.txt: a NUL byte at offset 3"),
    "bad json": (
        lambda d: _write(d / "j.jsonl", b'{"text": "ok"}\n{"text": broken\n'),
        "j.jsonl:2: not valid JSON",
    ),
    "missing field": (
        lambda d: _write(d / "f.jsonl", b'{"text": "ok"}\n\n{"body": "x"}\n'),
        "f.jsonl:3: no field 'text'",
    ),
    "parquet without the column": (
        lambda d: _parquet(d / "p.parquet"),
        "p.parquet: no column 'text' (columns: body)",
    ),
    "unknown key": (None, "unknown key 'n_merge'"),
}


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _parquet(path: Path) -> str:
    pq.write_table(pa.table({"body": ["a b c"]}), path)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_exit_2(case, tmp_path, ray_session, capsys):
    make, expected = BAD_INPUTS[case]
    corpus = make(tmp_path) if make else _write(tmp_path / "ok.txt", b"fine text")
    out = tmp_path / "out"
    extra = ["--set", "n_merge=3"] if case == "unknown key" else []
    rc = main(["--corpus", corpus, "--out", str(out), "--no-mlflow", "--set", "n_merges=50", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    # Ray's own progress lines may come first; ours is the last, and there is no traceback
    assert err[-1].startswith("prepare: ") and expected in err[-1], err[-5:]
    assert not any("Traceback" in line for line in err)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_script_runs_as_a_file_and_logs_to_mlflow(tmp_path, mlflow_uri):
    src = write_text(tmp_path / "c.txt", documents(80, seed=7))
    out = tmp_path / "ds"
    # cwd: MLflow puts a SQLite store's artifacts under ./mlruns of the working directory
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "pipeline" / "prepare.py"),
            "--corpus",
            str(src),
            "--out",
            str(out),
            "--set",
            "n_merges=200",
            "--set",
            "n_ctx=16",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (
        "prepared" in r.stdout
        and re.search(r"\(\d[\d.]* [KMG]?B/s\)", r.stdout)
        and "the driver used" in r.stdout
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("gpt1-prepare")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["n_merges"] == "200" and run.data.params["n_ctx"] == "16"
    m = json.loads((out / "manifest.json").read_text())
    assert run.data.metrics["train_documents"] == m["splits"]["train"]["documents"]
    assert run.data.tags["tokenizer_sha256"] == m["tokenizer"]["sha256"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"manifest.json", "tokenizer.json"}
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "pipeline" / "prepare.py"),
            "--corpus",
            str(tmp_path / "nope"),
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "nope" in r.stderr


def test_normalisation_repairs_unicode_and_strips_controls():
    from pipeline.data.corpus import normalize

    assert (
        normalize("caf\u00c3\u00a9 \u00e2\u20ac\u0153quoted\u00e2\u20ac\x9d") == 'café "quoted"'
    )  # mojibake
    # NFC, ftfy's own default: compatibility characters stay themselves (NFKC would rewrite them).
    assert normalize("\ufb01ne \u2460 \uff21 \u00bd e\u0301") == "\ufb01ne \u2460 \uff21 \u00bd \u00e9"
    assert normalize("a\u2028b\x85c \x80") == "a\nb\u2026c \u20ac"  # C1 read as Windows-1252, as ftfy does
    assert normalize("a\x00b\x07c\x1bd\r\ne\tf") == "abcd\ne\tf"  # controls gone, tabs and newlines kept
    assert normalize("  Mixed CASE ", lowercase=True) == "mixed case"
    assert normalize("naïve café") == "naïve café"  # proper text is left alone


@pytest.mark.parametrize("shard_tokens", [7, 4096, 100_000])
def test_shards_are_a_function_of_the_stream_alone(tmp_path, shard_tokens):
    """However the stream is cut into part files, the shards assembled from them are the same bytes."""
    import pyarrow.fs as pafs

    from pipeline.data.packing import plan_shards, to_bytes, write_shard

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 60_000, 40_000).astype(np.uint16)
    fs = pafs.LocalFileSystem()
    results = []
    for i, cuts in enumerate([[], np.sort(rng.integers(0, 40_000, 50)), [0, 0, 5, 5, 39_999]]):
        parts = np.split(tokens, cuts)
        d = tmp_path / str(i)
        d.mkdir()
        for j, part in enumerate(parts):
            (d / f"part-{j}").write_bytes(to_bytes(part, np.dtype("<u2")))
        shas = []
        for k, pieces in enumerate(plan_shards([len(p) for p in parts], shard_tokens)):
            shas.append(
                write_shard(
                    fs, str(d / f"shard-{k}"), [(str(d / f"part-{j}"), 2 * at, 2 * n) for j, at, n in pieces]
                )
            )
        rebuilt = np.concatenate([np.fromfile(d / f"shard-{k}", dtype="<u2") for k in range(len(shas))])
        assert np.array_equal(rebuilt, tokens)
        assert all((d / f"shard-{k}").stat().st_size == 2 * shard_tokens for k in range(len(shas) - 1))
        results.append(shas)
    assert results[0] == results[1] == results[2] and len(results[0]) == -(-40_000 // shard_tokens)


def test_blocks_read_by_offset_straddle_shards(tmp_path):
    from pipeline.data.packing import StreamReader

    tokens = np.arange(1000, dtype=np.uint16)
    for k in range(0, 1000, 64):  # shards of 64 tokens, blocks of 10 + 1: many straddle two
        tokens[k : k + 64].astype("<u2").tofile(tmp_path / f"s{k:04d}")
    r = StreamReader(sorted(tmp_path.iterdir()), 64, 1000, 10, "uint16")
    assert len(r) == 99
    got = r[np.array([0, 6, 98, 6])]
    assert got.tolist() == [list(range(i * 10, i * 10 + 11)) for i in (0, 6, 98, 6)]
    assert r[97:].tolist() == [list(range(970, 981)), list(range(980, 991))]
    with pytest.raises(IndexError):
        r[[99]]


def test_blank_line_documents_match_a_line_by_line_reference(tmp_path):
    import random

    from pipeline.data.corpus import ReadOptions, plan_chunks, read_documents, resolve_inputs

    rng = random.Random(7)
    blank = [b"\n", b"  \n", b"\t\r\n", b"\r\n"]
    for trial in range(30):
        parts = [rng.choice(blank) for _ in range(rng.randint(0, 2))]  # leading blank lines
        for _ in range(rng.randint(1, 12)):
            for _ in range(rng.randint(1, 3)):
                parts.append(
                    b" " * rng.randint(0, 2)
                    + bytes(rng.choice(b"abc") for _ in range(rng.randint(1, 9)))
                    + rng.choice([b"\n", b"\r\n"])
                )
            parts += [rng.choice(blank) for _ in range(rng.randint(1, 3))]
        data = b"".join(parts)
        if rng.random() < 0.5:
            data = data.rstrip(b"\r\n \t")  # no newline at the end of the file
        path = tmp_path / f"{trial}.txt"
        path.write_bytes(data)
        # reference: runs of non-blank lines
        want, cur, start, pos = [], [], 0, 0
        for line in data.splitlines(keepends=True):
            if line.strip():
                if not cur:
                    start = pos
                cur.append(line)
            elif cur:
                want.append((start, b"".join(cur)))
                cur = []
            pos += len(line)
        if cur:
            want.append((start, b"".join(cur)))
        want = [(o, " ".join(d.decode().split())) for o, d in want]
        f = resolve_inputs([str(path)])[0]
        for size in (1, 2, 3, 5, 8, 13, 1000):
            got = [
                (o, " ".join(t.split()))
                for it in plan_chunks([f], size, ReadOptions())
                for o, t, _, _ in read_documents(f, it["start"], it["end"], ReadOptions())
            ]
            assert got == want, (trial, size, data)


@pytest.mark.parametrize("released", [False, True])
def test_a_sentence_gets_the_same_ids_in_the_corpus_and_in_a_fine_tuning_input(tmp_path, released):
    """One normalisation and one text-to-ids path: curly quotes, an ellipsis, a dash, accents and
    mojibake come out alike in a prepared corpus and in a task's input. Run without Ray."""
    from pipeline.data.tasks import Example
    from pipeline.data.tokenizer import EXTRACT, RESERVED_TOKENS, START
    from tuning.encode import Encoder

    sentence = "He said \u201cdon\u2019t\u201d\u2026 it\u2019s Mr. O\u2019Neil\u2019s caf\u00e9\u2014really, na\u00c3\u00afve!"
    docs = documents(40, seed=1) + [sentence] + documents(20, seed=2)
    src = write_text(tmp_path / "c.txt", docs)
    tokenizer = "train"
    if released:  # a small vocabulary in the released format: read as the released encoder
        prepare([str(src)], tmp_path / "first", cfg(val_fraction=0.0), track=False, local=True)
        spec = json.loads((tmp_path / "first" / "tokenizer.json").read_text())["model"]
        rel = tmp_path / "release"
        rel.mkdir()
        (rel / "encoder_bpe_40000.json").write_text(
            json.dumps({t: i for t, i in spec["vocab"].items() if t not in RESERVED_TOKENS})
        )
        (rel / "vocab_40000.bpe").write_text(
            "#version: 0.2\n"
            + "\n".join(" ".join(m) if isinstance(m, list) else m for m in spec["merges"])
            + "\n"
        )
        tokenizer = str(rel)
    out = tmp_path / "data"
    prepare([str(src)], out, cfg(val_fraction=0.0, tokenizer=tokenizer), track=False, local=True)
    tok = load_tokenizer(out)
    eod = tok.token_to_id(END_OF_DOCUMENT)
    corpus_docs = "".join(f"{t} " if t != eod else "|" for t in stream(out, "train").tolist()).split("|")
    (e,) = Encoder(tok, "classification", 512).encode([Example((sentence,), 0, "0")])
    seq = e.sequences[0]
    assert seq[0] == tok.token_to_id(START) and seq[-1] == tok.token_to_id(EXTRACT)
    assert "".join(f"{t} " for t in seq[1:-1]) == corpus_docs[40]


def test_a_dataset_of_an_older_format_is_refused_with_the_command_that_remakes_it(tmp_path):
    from pipeline.data.dataset import open_dataset
    from pipeline.data.manifest import DataError

    src = write_text(tmp_path / "c.txt", documents(40, seed=8))
    out = tmp_path / "ds"
    prepare([str(src)], out, cfg(), track=False, local=True)
    open_dataset(out)
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**m, "format_version": 2}))
    with pytest.raises(
        DataError,
        match=r"format_version 2 .*no longer reads; prepare the dataset again: "
        r"gpt1 prepare --corpus \.\.\. --out .*ds --overwrite",
    ):
        open_dataset(out)
    # A truncated shard is caught by its length before any hashing.
    (out / "manifest.json").write_text(json.dumps(m))
    shard = out / sorted(m["shards"])[0]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="bytes, but the manifest says"):
        open_dataset(out, verify=True)
