"""gpt1 evaluate: a checkpoint's language-model loss on a corpus, as perplexity and bits per byte.

The corpus is read as prepare reads it (text, JSON Lines or Parquet; documents, normalize) and
encoded with the checkpoint's own tokenizer, each document followed by `_end_of_document_` where
the model has that token (pretrained here; the released GPT-1 has none): the stream that
pretraining's val split is made of. The stream is scored
with a sliding window of n_ctx tokens that moves `--stride` tokens at a time (default n_ctx / 2):
each window scores only the tokens that no earlier window scored, so every token after the first
is scored exactly once, with at least n_ctx - stride tokens of context once the first window is
past. A larger stride costs less and gives less context; stride 1 is one window per token.

    loss = mean over scored tokens of -ln p(token | context)       (nats)
    perplexity = exp(loss)
    bits per byte = loss / ln 2 x tokens / UTF-8 bytes of the documents

--zero-shot TASK=DIR runs the paper's zero-shot heuristics (pipeline/eval/zero_shot.py) on the
checkpoint as it is: SST-2, CoLA, RACE and Story Cloze, each beside its majority-class and random
baselines.

The run is logged to MLflow (experiment gpt1-evaluate) with the checkpoint's lineage tags.

    gpt1 evaluate --checkpoint runs/RUN/checkpoint_000002000 --corpus held-out/*.txt
    gpt1 evaluate --checkpoint openai-gpt --zero-shot sst-2=glue/SST-2 cola=glue/CoLA
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from pipeline import configio, errors
from pipeline.data.config import PrepareConfig
from pipeline.eval.generate import document_end
from pipeline.model_source import CHECKPOINT_HELP, local_model
from pipeline.runtime import local_device
from pipeline.tracking import check_store, checkpoint_lineage, experiment_id, finish_run, tracking_uri

EXPERIMENT = "gpt1-evaluate"


def windows(n_tokens: int, n_ctx: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored) of each window over a stream of n_tokens: the window holds
    tokens [start, end) and scores the targets [first scored, end), each predicted from the
    window's tokens before it. The first window scores targets 1 .. n_ctx - 1; each later one the
    next `stride` targets, from the n_ctx tokens that end with them. Together they score targets
    1 .. n_tokens - 1 once each, every one past the first window with n_ctx - stride tokens of
    context at least (so stride < n_ctx)."""
    end = min(n_ctx, n_tokens)
    out = [(0, end, 1)] if n_tokens > 1 else []
    while end < n_tokens:
        first, end = end, min(end + stride, n_tokens)
        out.append((max(end - n_ctx, 0), end, first))
    return out


def score(gpt, ids: list[int], stride: int, batch: int = 8, device: str = "cpu") -> tuple[float, int]:
    """(summed nats, tokens scored) of the stream ids under gpt, by windows()."""
    import torch
    import torch.nn.functional as F

    n_ctx = gpt.config.n_ctx
    gpt.eval()
    total, count = 0.0, 0
    spans = windows(len(ids), n_ctx, stride)
    with torch.no_grad():
        for i in range(0, len(spans), batch):
            group = spans[i : i + batch]
            width = max(end - start for start, end, _ in group)
            x = torch.zeros(len(group), width, dtype=torch.long)
            for row, (start, end, _) in enumerate(group):
                x[row, : end - start] = torch.tensor(ids[start:end])
            # Padding sits on the right, after every scored token: causality keeps it unseen.
            logits = gpt(x.to(device)).float()
            for row, (start, end, first) in enumerate(group):
                targets = x[row, first - start : end - start].to(device)
                total += F.cross_entropy(
                    logits[row, first - start - 1 : end - start - 1], targets, reduction="sum"
                ).item()
                count += end - first
    return total, count


def read_corpus(specs: list[str], fmt: str, text_split: str):
    """(texts, UTF-8 bytes) of every document of the inputs, read as prepare reads them."""
    from pipeline.data.corpus import ReadOptions, read_documents, resolve_inputs

    opts = ReadOptions(fmt, text_split)
    texts, n_bytes = [], 0
    for f in resolve_inputs(specs, fmt):
        for _, text, raw_bytes, _ in read_documents(f, 0, -1, opts):
            texts.append(text)
            n_bytes += raw_bytes
    return texts, n_bytes


def evaluate(
    checkpoint,
    corpus: list[str],
    stride: int | None = None,
    fmt: str = "auto",
    text_split: str = "blank_line",
    device: str = "cpu",
) -> dict:
    """loss, perplexity, bits per byte and the counts behind them."""
    from pipeline.data.tokenizer import encode_texts
    from pipeline.model_dir import load_model_and_tokenizer

    gpt, tok = load_model_and_tokenizer(checkpoint)
    n_ctx = gpt.config.n_ctx
    stride = n_ctx // 2 if stride is None else stride
    if not 1 <= stride < n_ctx:
        raise errors.ConfigError(
            f"--stride {stride}: expected 1 to n_ctx - 1 ({n_ctx - 1}), so that every "
            "scored token has some context"
        )
    texts, n_bytes = read_corpus(corpus, fmt, text_split)
    end = document_end(tok, gpt)
    ids: list[int] = []
    for doc in encode_texts(tok, texts):
        ids += doc + ([end] if end is not None else [])
    if len(ids) < 2:
        raise errors.UserError(
            f"--corpus {' '.join(corpus)}: {len(ids)} token(s); expected at least 2 to score"
        )
    nats, n = score(gpt.to(device), ids, stride, device=device)
    loss = nats / n
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700)),
        # The mean loss paid for every token of the stream, over its bytes (pretraining's way).
        "bits_per_byte": loss / math.log(2) * len(ids) / n_bytes if n_bytes else float("nan"),
        "tokens": len(ids),
        "tokens_scored": n,
        "bytes": n_bytes,
        "documents": len(texts),
        "stride": stride,
        "n_ctx": n_ctx,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument(
        "--corpus", nargs="+", default=[], help="files, globs, directories or URIs, as prepare reads"
    )
    p.add_argument(
        "--zero-shot",
        nargs="+",
        default=[],
        metavar="TASK=DIR",
        help="the paper's zero-shot heuristics: sst-2, cola, race (each with its directory), wsc "
        "(WSCollection.xml) or dprd (DPRD's test.c.txt); story-cloze is this project's addition",
    )
    p.add_argument(
        "--max-examples",
        type=int,
        default=0,
        help="zero-shot: a seeded sample of N examples of each split (0: all)",
    )
    p.add_argument("--stride", type=int, help="tokens the window moves each time (default n_ctx / 2)")
    # How the corpus is read: prepare's own options, from its dataclass.
    configio.add_field_options(p, PrepareConfig, ["format", "text_split"])
    p.add_argument("--device", default="auto", help="auto (a GPU where there is one), cpu or cuda")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the result to MLflow")


def log(result: dict | None, zero_shot: list[dict], checkpoint, corpus: list[str]) -> str:
    """The MLflow run of one evaluation; returns its id."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    client = MlflowClient(uri)
    tags = {**checkpoint_lineage(client, checkpoint), "corpus": " ".join(corpus)}
    run = client.create_run(
        experiment_id(client, EXPERIMENT),
        tags=tags,
        run_name=f"evaluate {str(checkpoint).rstrip('/').rsplit('/', 1)[-1]}",
    )
    rid = run.info.run_id
    if result:
        for k in ("stride", "n_ctx"):
            client.log_param(rid, k, result[k])
        for k in ("loss", "perplexity", "bits_per_byte", "tokens", "tokens_scored", "bytes", "documents"):
            client.log_metric(rid, k, float(result[k]))
    for z in zero_shot:
        for k in ("value", "majority", "random"):
            client.log_metric(
                rid, f"zero_shot.{z['task']}.{z['metric']}" + ("" if k == "value" else f".{k}"), z[k]
            )
    finish_run(uri, rid)
    return rid


def run(args: argparse.Namespace) -> None:
    from pipeline.eval.zero_shot import parse_tasks

    if not args.corpus and not args.zero_shot:
        raise errors.ConfigError(
            "nothing to evaluate: pass --corpus FILE..., --zero-shot TASK=DIR..., or both"
        )
    tasks = parse_tasks(args.zero_shot)
    if not args.no_mlflow:
        check_store(tracking_uri())
    device = str(local_device(args.device))
    with local_model(args.checkpoint) as (checkpoint, where):
        r, results = _run(args, tasks, checkpoint, device)
    if not args.no_mlflow:
        print(f"MLflow run {log(r, results, where, args.corpus)} (experiment {EXPERIMENT})")


def _run(args: argparse.Namespace, tasks: list, checkpoint: Path, device: str) -> tuple[dict | None, list]:
    r = None
    if args.corpus:
        r = evaluate(checkpoint, args.corpus, args.stride, args.format, args.text_split, device)
        print(
            f"{r['documents']:,} documents, {r['tokens']:,} tokens ({r['tokens_scored']:,} scored, windows of "
            f"{r['n_ctx']} moving {r['stride']}), {r['bytes']:,} bytes: loss {r['loss']:.4f} nats, "
            f"perplexity {r['perplexity']:.2f}, {r['bits_per_byte']:.4f} bits per byte"
        )
    results = []
    if tasks:
        from pipeline.eval.zero_shot import Scorer, run_task
        from pipeline.model_dir import load_model_and_tokenizer

        gpt, tok = load_model_and_tokenizer(checkpoint)
        scorer = Scorer(gpt.to(device), tok, device)
        print("| task | split | examples | metric | zero-shot | majority class | random | heuristic |")
        print("|---|---|---:|---|---:|---:|---:|---|")
        for name, d in tasks:
            z = run_task(name, d, scorer, args.max_examples)
            results.append(z)
            print(
                f"| {z['task']} | {z['split']} | {z['examples']:,} | {z['metric']} | {z['value']:.4f} | "
                f"{z['majority']:.4f} | {z['random']:.4f} | {z['source']} |",
                flush=True,
            )
    return r, results


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("evaluate", __doc__, add_arguments, run, argv)
