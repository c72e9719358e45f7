"""gpt1 generate: continue a prompt with any checkpoint (native, Hugging Face, or the original
OpenAI release), and print the continuations as text.

The prompt goes through the checkpoint's own tokenizer as prepare's text does (normalize, then
encode_texts: for the released vocabulary, the released encoder's spaCy words, lower-cased). The
continuation is decoded with the same tokenizer, whose decoder turns the released vocabulary's
`</w>` word ends back into spaces. Decoding keeps the KV cache (model.kvcache.KVCache). Sampling
is a function of --seed: sample k of --num-samples is the k-th row of one seeded batch. A
continuation stops early at `_end_of_document_` where the model has that token.

    gpt1 generate --checkpoint runs/RUN/checkpoint_000002000 --prompt "the ship" --max-new-tokens 40
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pipeline import errors
from pipeline.data.text import normalize
from pipeline.model_source import CHECKPOINT_HELP, local_model
from pipeline.runtime import local_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the text to continue")
    src.add_argument("--prompt-file", help="a UTF-8 file holding the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to add to each prompt, at most")
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (default 1.0)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="sample within the smallest set holding this probability")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling: the same seed, the same text")
    p.add_argument("--num-samples", type=int, default=1, help="continuations of the prompt, each printed")
    p.add_argument("--device", default="auto", help="auto (a GPU where there is one), cpu or cuda")


def check(args: argparse.Namespace) -> None:
    c = errors.ConfigError
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise c("--max-new-tokens and --num-samples: expected at least 1")
    if not 0 <= args.temperature < math.inf:  # nan fails this too
        raise c(f"--temperature {args.temperature}: expected a finite number >= 0 (0 is greedy)")
    if args.top_k is not None and args.top_k < 1:
        raise c(f"--top-k {args.top_k}: expected at least 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise c(f"--top-p {args.top_p}: expected a probability in (0, 1]")


def document_end(tok, gpt) -> int | None:
    """The id of `_end_of_document_` where the model has a row for it: a model pretrained here
    was trained with it between documents; the released GPT-1 (40,478 + 3 rows) never saw it."""
    from pipeline.data.tokenizer import END_OF_DOCUMENT

    end = tok.token_to_id(END_OF_DOCUMENT)
    return end if end is not None and end < gpt.config.vocab_size else None


def continuations(
    gpt,
    tok,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
    num_samples: int,
    device: str = "cpu",
) -> list[tuple[str, str | None]]:
    """num_samples continuations of prompt, as text (the prompt itself left out), each with why it
    stopped short of max_new_tokens (None where it did not)."""
    import torch

    from pipeline.data.tokenizer import encode_texts

    ids = encode_texts(tok, [normalize(prompt)])[0]
    n_ctx = gpt.config.n_ctx
    if not ids:
        raise errors.UserError("the prompt holds no tokens; give some text to continue")
    if len(ids) >= n_ctx:
        raise errors.UserError(
            f"the prompt is {len(ids):,} tokens, and the model's n_ctx is {n_ctx:,}: "
            f"expected at most {n_ctx - 1:,} tokens, to leave room for one new token"
        )
    gpt = gpt.to(device)
    x = torch.tensor([ids] * num_samples, device=device)
    end = document_end(tok, gpt)
    out = gpt.generate(
        x,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        end_token=end,
        generator=torch.Generator(device).manual_seed(seed),
    )
    texts = []
    for row in out[:, len(ids) :].tolist():
        stopped = None
        if end is not None and end in row:
            row = row[: row.index(end)]
            stopped = f"the model ended the document after {len(row)} new token(s)"
        elif len(row) < max_new_tokens:
            stopped = (
                f"the model's context of {n_ctx} tokens was full (the prompt's {len(ids)} and "
                f"{len(row)} new); shorten the prompt for more"
            )
        texts.append((tok.decode(row), stopped))
    return texts


def run(args: argparse.Namespace) -> None:
    from pipeline.model_dir import load_model_and_tokenizer

    check(args)
    prompt = args.prompt
    if args.prompt_file is not None:
        try:
            prompt = Path(args.prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise errors.UserError(
                f"--prompt-file {args.prompt_file}: cannot read it as UTF-8 text ({err})"
            ) from None
    with local_model(args.checkpoint) as (d, _):
        gpt, tok = load_model_and_tokenizer(d)
    device = str(local_device(args.device))
    texts = continuations(
        gpt,
        tok,
        prompt,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
        args.num_samples,
        device,
    )
    for k, (text, stopped) in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {k + 1} of {len(texts)} (seed {args.seed}) ---")
        print(text, flush=True)
        if stopped:  # on stderr: stdout holds the text alone
            print(f"(stopped before --max-new-tokens {args.max_new_tokens}: {stopped})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("generate", __doc__, add_arguments, run, argv)
