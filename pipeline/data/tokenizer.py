"""BPE tokenizers for the pipeline: GPT-1's released vocabulary, one trained on a corpus, or a
saved tokenizer.json. Every tokenizer the pipeline hands out carries the reserved tokens.

Two ways of splitting text into the words BPE sees, by tokenizer:
- GPT-1's released vocabulary (encoder_bpe_40000.json + vocab_40000.bpe, or a Hugging Face
  directory's vocab.json + merges.txt) splits text as the released encoder did: ftfy,
  text_standardize, spaCy's English tokenizer, lower-casing (pipeline/data/text.py), then BPE
  with "</w>" marking the end of a word. Its tokenizer.json has no normaliser and no
  pre-tokenizer: that is how a saved one is known again (is_gpt1_encoder).
- A tokenizer that prepare trains lower-cases and splits as BERT's basic tokenizer does (the
  tokenizers library's fast BertNormalizer and BertPreTokenizer), then the same kind of BPE.

encode_texts is the one way from text to ids, for prepare and for fine-tuning. Every tokenizer
the pipeline hands out carries the reserved tokens in its vocabulary (not as "added tokens" that
tokenizers would match in the text): a text holding "_classify_" is ordinary text and never
yields the extract token's id.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from pipeline.data.bpe import learn_bpe
from pipeline.data.text import gpt1_words
from pipeline.errors import UserError

# The paper's three fine-tuning tokens (start, delimiter, extract), in the released code's order
# and names, so that they take ids 40478-40480 after the released vocabulary. Then the
# end-of-document token that joins documents in the pretraining stream.
START, DELIMITER, EXTRACT = "_start_", "_delimiter_", "_classify_"
END_OF_DOCUMENT = "_end_of_document_"
RESERVED_TOKENS = (START, DELIMITER, EXTRACT, END_OF_DOCUMENT)

GPT1_VOCAB_FILE = "encoder_bpe_40000.json"
GPT1_MERGES_FILE = "vocab_40000.bpe"
HF_VOCAB_FILE, HF_MERGES_FILE = "vocab.json", "merges.txt"  # OpenAIGPTTokenizer.save_pretrained's names
UNK = "<unk>"


def _fast_pipeline(model: BPE, lowercase: bool = True) -> Tokenizer:
    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    return tok


def with_reserved_tokens(tok: Tokenizer) -> Tokenizer:
    """tok with every reserved token in its vocabulary: those it lacks take the next free ids, in
    RESERVED_TOKENS order; those an older tokenizer.json held as added tokens keep their ids."""
    d = json.loads(tok.to_str())
    vocab = d["model"]["vocab"]
    added = {a["content"]: a for a in d.get("added_tokens", [])}
    if all(t in vocab and t not in added for t in RESERVED_TOKENS):
        return tok
    for t in RESERVED_TOKENS:
        if t in added:
            vocab[t] = added.pop(t)["id"]
    d["added_tokens"] = list(added.values())
    next_id = max([*vocab.values(), *(a["id"] for a in added.values()), -1]) + 1
    for t in RESERVED_TOKENS:
        if t not in vocab:
            vocab[t], next_id = next_id, next_id + 1
    return Tokenizer.from_str(json.dumps(d))


def gpt1_tokenizer(
    directory, vocab_file: str = GPT1_VOCAB_FILE, merges_file: str = GPT1_MERGES_FILE
) -> Tokenizer:
    """The released GPT-1 vocabulary: 40,478 token ids and 40,000 merges after a '#version'
    header line, in the release's file names or a Hugging Face directory's (vocab.json,
    merges.txt)."""
    d = Path(directory)
    vocab = json.loads((d / vocab_file).read_text(encoding="utf-8"))
    lines = (d / merges_file).read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    bad = next((m for m in merges if len(m) != 2), None)
    if bad is not None:
        raise UserError(f"{d / merges_file}: expected two symbols per merge line, got {bad!r}")
    return released_encoder(vocab, merges)


def released_encoder(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """GPT-1's BPE over a released-format vocabulary, with no normaliser and no pre-tokenizer:
    its words come from pipeline/data/text.py's gpt1_words. Unknown pieces are <unk>, id 0, as
    the released encoder's encoder.get(t, 0) makes them."""
    model = BPE(
        vocab=vocab,
        merges=[tuple(m) for m in merges],
        continuing_subword_prefix="",
        end_of_word_suffix="</w>",
        fuse_unk=False,
        unk_token=UNK,
    )
    tok = Tokenizer(model)
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    return with_reserved_tokens(tok)


def _hf_gpt1_tokenizer(d: Path) -> Tokenizer | None:
    """A directory that transformers' OpenAIGPTTokenizer.save_pretrained wrote (tokenizer.json
    and tokenizer_config.json naming that class): GPT-1's vocabulary and merges, read as the
    released encoder; Hugging Face's own splitting rules in that tokenizer.json are not GPT-1's."""
    try:
        config = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
        spec = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(config, dict) or config.get("tokenizer_class") != "OpenAIGPTTokenizer":
        return None
    merges = [m.split(" ") if isinstance(m, str) else m for m in spec["merges"]]
    return released_encoder(spec["vocab"], merges)


def is_gpt1_encoder(tok: Tokenizer) -> bool:
    """Whether tok is GPT-1's released encoder, whose words come from gpt1_words: a BPE
    tokenizer with no normaliser and no pre-tokenizer (nothing else would split text at all)."""
    return tok.pre_tokenizer is None and tok.normalizer is None and type(tok.model).__name__ == "BPE"


def encode_texts(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each (already normalised) text: the one way from text to ids, for prepare and
    for every fine-tuning input. No special tokens are added."""
    if is_gpt1_encoder(tok):
        words = [gpt1_words(t) for t in texts]
        return [e.ids for e in tok.encode_batch(words, is_pretokenized=True, add_special_tokens=False)]
    # encode_batch_fast: the same ids without the character offsets, which nothing here uses.
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def word_counts(texts: Iterable[str], lowercase: bool = True) -> Counter:
    """Counts of the words GPT-1's normaliser and pre-tokenizer make of texts."""
    tok = _fast_pipeline(BPE(), lowercase)
    counts: Counter = Counter()
    for text in texts:
        norm = tok.normalizer.normalize_str(text)
        counts.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(norm))
    return counts


def tokenizer_from_counts(
    counts: dict[str, int], n_merges: int = 40_000, lowercase: bool = True, min_frequency: int = 2
) -> Tokenizer:
    """A GPT-1-style BPE tokenizer with at most n_merges merges learned from word counts.

    Ids: <unk>, the alphabet (sorted), then each merge's result in the order learned, then the
    reserved tokens. The same counts always give the same tokenizer.
    """
    alphabet, merges = learn_bpe(counts, n_merges, min_frequency)
    vocab = {UNK: 0}
    for token in alphabet + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    model = BPE(
        vocab=vocab,
        merges=merges,
        continuing_subword_prefix="",
        end_of_word_suffix="</w>",
        fuse_unk=False,
        unk_token=UNK,
    )
    return with_reserved_tokens(_fast_pipeline(model, lowercase))


def train_tokenizer(
    texts: Iterable[str], n_merges: int = 40_000, lowercase: bool = True, min_frequency: int = 2
) -> Tokenizer:
    """Learn a tokenizer from an iterator of texts, consumed once and never held whole (only
    the word counts are). A corpus too small for n_merges gives fewer."""
    return tokenizer_from_counts(word_counts(texts, lowercase), n_merges, lowercase, min_frequency)


def n_merges(tok: Tokenizer) -> int:
    return len(json.loads(tok.to_str())["model"].get("merges", []))


def holds_released_vocabulary(d) -> bool:
    """Whether directory d holds GPT-1's released vocabulary in one of the layouts load_tokenizer
    reads as the released encoder."""
    d = Path(d)
    return any(
        (d / v).exists() and (d / m).exists()
        for v, m in ((GPT1_VOCAB_FILE, GPT1_MERGES_FILE), (HF_VOCAB_FILE, HF_MERGES_FILE))
    ) or ((d / "tokenizer_config.json").exists() and _hf_gpt1_tokenizer(d) is not None)


def load_tokenizer(path) -> Tokenizer:
    """A directory holding GPT-1's released vocabulary, read as the released encoder: the
    release's encoder_bpe_40000.json + vocab_40000.bpe, a Hugging Face directory's vocab.json +
    merges.txt, or the tokenizer.json that OpenAIGPTTokenizer.save_pretrained writes (whose own
    rules split text like BERT); else a tokenizer.json file or a directory holding one (a model
    or dataset directory)."""
    p = Path(path)
    if p.is_dir():
        for vocab, merges in ((GPT1_VOCAB_FILE, GPT1_MERGES_FILE), (HF_VOCAB_FILE, HF_MERGES_FILE)):
            if (p / vocab).exists() and (p / merges).exists():
                return gpt1_tokenizer(p, vocab, merges)
        if (p / "tokenizer_config.json").exists() and (hf := _hf_gpt1_tokenizer(p)) is not None:
            return hf
        if not (p / "tokenizer.json").exists():
            raise FileNotFoundError(
                f"{p}: expected tokenizer.json, or {GPT1_VOCAB_FILE} and {GPT1_MERGES_FILE} "
                f"(or {HF_VOCAB_FILE} and {HF_MERGES_FILE})"
            )
        p = p / "tokenizer.json"
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
