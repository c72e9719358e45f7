"""What a zero-shot curve point costs beside the evaluation it rides with, side by side in one run.

Pretraining with `zero_shot=[sst-2=DIR]` runs, at every evaluation, the val-split evaluation on
every worker and then the SST-2 heuristic on rank 0, which the other ranks wait for. This times,
on one checkpoint and its dataset, each ROUNDS times alternating (median reported):

- the evaluation as pretraining's loop does it: the summed L1 over every val block, in
  micro-batches of MICRO;
- the SST-2 heuristic on `zero_shot_examples` dev sentences (default 500) and on all of them;
- the heuristic as it was first built (two forward passes a sentence, "positive" and "negative"
  each scored as a continuation), to show what one pass a sentence saves where both words are
  one token each. Both ways are checked to give the same predictions. A small vocabulary splits
  them into pieces: --vocab DIR (the released GPT-1 vocabulary, where they are one token each)
  times this comparison on a network of the checkpoint's shape with DIR's vocabulary and random
  weights instead (the cost does not depend on the weights).

    python bench/zero_shot_cost.py --checkpoint RUNS/NAME/checkpoint_N --data DATASET --sst2 GLUE/SST-2 \
        [--vocab ../shared/data/gpt1-vocab]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pipeline.data.dataset import load_split, open_dataset  # noqa: E402
from pipeline.data.tasks import get  # noqa: E402
from pipeline.eval.zero_shot import Scorer, run_task, sst2  # noqa: E402
from pipeline.model_dir import load_model_and_tokenizer  # noqa: E402


def median_time(fn, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument(
        "--data", required=True, help="the dataset the checkpoint was pretrained on (its val split)"
    )
    ap.add_argument("--sst2", required=True, help="a GLUE SST-2 directory (train.tsv, dev.tsv)")
    ap.add_argument("--examples", type=int, default=500, help="zero_shot_examples")
    ap.add_argument("--micro", type=int, default=8, help="the evaluation's micro-batch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", help="a tokenizer (directory) for the one-pass against two-passes comparison")
    a = ap.parse_args()

    gpt, tok = load_model_and_tokenizer(a.checkpoint)
    gpt.eval()
    manifest = open_dataset(a.data)
    val = load_split(a.data, manifest, "val")
    scorer = Scorer(gpt, tok)

    @torch.no_grad()
    def evaluation() -> float:
        nats = 0.0
        for i in range(0, len(val), a.micro):
            x = torch.from_numpy(val[np.arange(i, min(i + a.micro, len(val)))].astype(np.int64))
            logits = gpt(x[:, :-1])
            nats += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
        return nats

    dev = get("sst-2").load(a.sst2, "dev")

    compare = scorer
    if a.vocab:
        from model import GPT
        from pipeline.data.tokenizer import load_tokenizer

        vtok = load_tokenizer(a.vocab)
        torch.manual_seed(0)
        vgpt = GPT(
            type(gpt.config).from_dict({**gpt.config.to_dict(), "vocab_size": vtok.get_vocab_size()})
        ).eval()
        compare = Scorer(vgpt, vtok)

    def two_passes():  # the first version: each answer scored as a continuation of its own
        contexts = compare.ids([ex.text[0] + " very" for ex in dev])
        positive, negative = compare.ids(["positive", "negative"])
        lp = compare.logprobs([(c, w) for c in contexts for w in (positive, negative)])
        return np.array([int(lp[2 * i].sum() > lp[2 * i + 1].sum()) for i in range(len(dev))])

    evaluation(), sst2(scorer, dev[:16])  # warm-up, untimed
    t_eval, _ = median_time(evaluation, a.rounds)
    t_cut, _ = median_time(lambda: run_task("sst-2", a.sst2, scorer, a.examples), a.rounds)
    t_all, _ = median_time(lambda: run_task("sst-2", a.sst2, scorer, 0), a.rounds)
    t_one, one = median_time(lambda: sst2(compare, dev), a.rounds)
    t_two, two = median_time(two_passes, a.rounds)
    one_word = all(len(ids) == 1 for ids in compare.ids(["positive", "negative"]))

    val_tokens = len(val) * manifest["n_ctx"]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"device: {platform.machine()} CPU, {torch.get_num_threads()} threads  torch {torch.__version__}")
    c = gpt.config
    print(
        f"model: {c.n_layer} x {c.n_embd}, n_ctx {c.n_ctx}, vocab {c.vocab_size:,}; val {len(val):,} blocks "
        f"({val_tokens:,} tokens); SST-2 dev {len(dev)} sentences; median of {a.rounds}"
    )
    print(
        f"one pass against two: {'vocabulary ' + a.vocab + ', random weights' if a.vocab else 'the checkpoint'}; "
        f"'positive' and 'negative' one token each: {one_word}"
        + ("" if one_word else " (so both rows take two passes)")
    )
    print()
    print("| pass | seconds | x the evaluation |")
    print("|---|---:|---:|")
    rows = [
        ("evaluation (every val block)", t_eval),
        (f"zero-shot SST-2, {a.examples} examples (zero_shot_examples)", t_cut),
        (f"zero-shot SST-2, all {len(dev)}", t_all),
        (f"SST-2 heuristic alone, {len(dev)}: one pass a sentence", t_one),
        (f"SST-2 heuristic alone, {len(dev)}: two passes a sentence (first version)", t_two),
    ]
    for k, (name, t) in enumerate(rows):  # the last two rows ran on --vocab's network, if given
        ratio = "(another network)" if a.vocab and k >= 3 else f"{t / t_eval:.2f}"
        print(f"| {name} | {t:.2f} | {ratio} |")
    print()
    print(f"one pass against two: {t_two / t_one:.2f}x faster; same predictions: {bool((one == two).all())}")


if __name__ == "__main__":
    main()
