"""BPE tokenizers for the pipeline: GPT-1's released vocabulary, one trained on a corpus, or a
saved tokenizer.json. Every tokenizer the pipeline hands out carries the reserved tokens.

GPT-1's tokenizer lower-cases and splits text as BERT's basic tokenizer does, then applies BPE
with "</w>" marking the end of a word. This builds the same pipeline with the `tokenizers`
library as transformers.OpenAIGPTTokenizer does, so the ids are the same.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

# The paper's three fine-tuning tokens (start, delimiter, extract), in the released code's order
# and names, so that they take ids 40478-40480 after the released vocabulary. Then the
# end-of-document token that joins documents in the pretraining stream.
START, DELIMITER, EXTRACT = "_start_", "_delimiter_", "_classify_"
END_OF_DOCUMENT = "_end_of_document_"
RESERVED_TOKENS = (START, DELIMITER, EXTRACT, END_OF_DOCUMENT)

GPT1_VOCAB_FILE = "encoder_bpe_40000.json"
GPT1_MERGES_FILE = "vocab_40000.bpe"
UNK = "<unk>"


def _gpt1_pipeline(model: BPE, lowercase: bool = True) -> Tokenizer:
    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    return tok


def with_reserved_tokens(tok: Tokenizer) -> Tokenizer:
    """Add whichever reserved tokens tok lacks, with the next free ids, in RESERVED_TOKENS order."""
    missing = [t for t in RESERVED_TOKENS if tok.token_to_id(t) is None]
    # normalized=False: matched in the raw text before lower-casing and splitting.
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in missing])
    return tok


def gpt1_tokenizer(directory) -> Tokenizer:
    """The released GPT-1 vocabulary: encoder_bpe_40000.json (40,478 token ids) and
    vocab_40000.bpe (40,000 merges after a '#version' header line)."""
    d = Path(directory)
    vocab = json.loads((d / GPT1_VOCAB_FILE).read_text(encoding="utf-8"))
    lines = (d / GPT1_MERGES_FILE).read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    bad = next((m for m in merges if len(m) != 2), None)
    if bad is not None:
        raise ValueError(f"{d / GPT1_MERGES_FILE}: expected two symbols per merge line, got {bad!r}")
    model = BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                fuse_unk=False, unk_token=UNK)
    return with_reserved_tokens(_gpt1_pipeline(model))


def train_tokenizer(texts: Iterable[str], n_merges: int = 40_000, lowercase: bool = True,
                    min_frequency: int = 2) -> Tokenizer:
    """Learn a GPT-1-style BPE (at most n_merges merges) from an iterator of texts.

    The iterator is consumed once and never held whole: the trainer keeps word counts only.
    The trainer's target is a vocabulary size, not a merge count, so it is given room for the
    alphabet and the first n_merges merges are kept (ids are assigned in the order tokens are
    made, so the cut is clean). A corpus too small for n_merges gives fewer.
    """
    tok = _gpt1_pipeline(BPE(continuing_subword_prefix="", end_of_word_suffix="</w>",
                             fuse_unk=False, unk_token=UNK), lowercase)
    trainer = BpeTrainer(vocab_size=n_merges + 4096, min_frequency=min_frequency,
                         special_tokens=[UNK], end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator(_batched(texts), trainer=trainer)
    spec = json.loads(tok.to_str())
    merges = spec["model"]["merges"]
    if len(merges) > n_merges:
        cut = len(spec["model"]["vocab"]) - (len(merges) - n_merges)
        spec["model"]["merges"] = merges[:n_merges]
        spec["model"]["vocab"] = {t: i for t, i in spec["model"]["vocab"].items() if i < cut}
        tok = Tokenizer.from_str(json.dumps(spec))
    return with_reserved_tokens(tok)


def _batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def n_merges(tok: Tokenizer) -> int:
    return len(json.loads(tok.to_str())["model"].get("merges", []))


def load_tokenizer(path) -> Tokenizer:
    """A tokenizer.json file, a directory holding one (a model or dataset directory), or a
    directory holding the released encoder_bpe_40000.json + vocab_40000.bpe."""
    p = Path(path)
    if p.is_dir():
        if (p / "tokenizer.json").exists():
            p = p / "tokenizer.json"
        elif (p / GPT1_VOCAB_FILE).exists() and (p / GPT1_MERGES_FILE).exists():
            return gpt1_tokenizer(p)
        else:
            raise FileNotFoundError(f"{p}: expected tokenizer.json, or {GPT1_VOCAB_FILE} and "
                                    f"{GPT1_MERGES_FILE}")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such tokenizer file or directory")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as err:  # tokenizers raises plain Exception on a malformed file
        raise ValueError(f"{p}: not a tokenizers JSON file ({str(err).splitlines()[0][:200]})") from None
    return with_reserved_tokens(tok)


def save_tokenizer(tok: Tokenizer, path) -> str:
    """Write tok as tokenizer.json; returns its sha256, the hash the manifests record."""
    text = tok.to_str()
    Path(path).write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_sha256(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()
