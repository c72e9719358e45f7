"""BPE tokenizers for the pipeline: GPT-1's released vocabulary, one trained on a corpus, or a
saved tokenizer.json. Every tokenizer the pipeline hands out carries the reserved tokens.

GPT-1's tokenizer lower-cases and splits text as BERT's basic tokenizer does, then applies BPE
with "</w>" marking the end of a word. This builds the same pipeline with the `tokenizers`
library as transformers.OpenAIGPTTokenizer does, so the ids are the same.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from pipeline.data.bpe import learn_bpe
from pipeline.errors import UserError

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
        raise UserError(f"{d / GPT1_MERGES_FILE}: expected two symbols per merge line, got {bad!r}")
    model = BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                fuse_unk=False, unk_token=UNK)
    return with_reserved_tokens(_gpt1_pipeline(model))


def word_counts(texts: Iterable[str], lowercase: bool = True) -> Counter:
    """Counts of the words GPT-1's normaliser and pre-tokenizer make of texts."""
    tok = _gpt1_pipeline(BPE(), lowercase)
    counts: Counter = Counter()
    for text in texts:
        norm = tok.normalizer.normalize_str(text)
        counts.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(norm))
    return counts


def tokenizer_from_counts(counts: dict[str, int], n_merges: int = 40_000, lowercase: bool = True,
                          min_frequency: int = 2) -> Tokenizer:
    """A GPT-1-style BPE tokenizer with at most n_merges merges learned from word counts.

    Ids: <unk>, the alphabet (sorted), then each merge's result in the order learned, then the
    reserved tokens. The same counts always give the same tokenizer.
    """
    alphabet, merges = learn_bpe(counts, n_merges, min_frequency)
    vocab = {UNK: 0}
    for token in alphabet + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    model = BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                fuse_unk=False, unk_token=UNK)
    return with_reserved_tokens(_gpt1_pipeline(model, lowercase))


def train_tokenizer(texts: Iterable[str], n_merges: int = 40_000, lowercase: bool = True,
                    min_frequency: int = 2) -> Tokenizer:
    """Learn a tokenizer from an iterator of texts, consumed once and never held whole (only
    the word counts are). A corpus too small for n_merges gives fewer."""
    return tokenizer_from_counts(word_counts(texts, lowercase), n_merges, lowercase, min_frequency)


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
        raise UserError(f"{p}: not a tokenizers JSON file ({str(err).splitlines()[0][:200]})") from None
    return with_reserved_tokens(tok)


def save_tokenizer(tok: Tokenizer, path) -> str:
    """Write tok as tokenizer.json; returns its sha256, the hash the manifests record."""
    text = tok.to_str()
    Path(path).write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_sha256(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()
