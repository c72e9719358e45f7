"""pipeline.data.tokenizer: GPT-1's released vocabulary against the released encoder's algorithm,
training, loading."""

import json
import math
import random
import re
from pathlib import Path

import pytest

from pipeline.data.tokenizer import (
    END_OF_DOCUMENT,
    RESERVED_TOKENS,
    encode_texts,
    gpt1_tokenizer,
    is_gpt1_encoder,
    load_tokenizer,
    n_merges,
    save_tokenizer,
    train_tokenizer,
)

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SHARED_VOCAB = SHARED / "gpt1-vocab"
SHAKESPEARE = SHARED / "corpus" / "tinyshakespeare.txt"

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
    "judges'",
    "jackets;",
    '"Hello,"',
    "said",
    "Mr.",
    "O'Neil",
    "--",
    "at",
    "10:30",
    "on",
    "2018-06-11",
    "(really!)",
]


def _lexicon(n: int = 3000) -> list[str]:
    rng = random.Random(99)
    syllables = [c + v for c in "bcdfghklmnprstvwy" for v in ("a", "e", "i", "o", "u", "ou", "ea")]
    return WORDS + ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(n)]


LEXICON = _lexicon()


def english(n: int, seed: int) -> list[str]:
    """English-like sentences: real words and punctuation, and pronounceable made-up words,
    with a Zipf-like skew so that BPE has many merges to learn."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(LEXICON))]
    return [
        " ".join(rng.choices(LEXICON, weights, k=rng.randint(3, 30))).capitalize() + "." for _ in range(n)
    ]


def write_release(tok, d: Path) -> None:
    """Write a trained tokenizer in the released format: encoder json + '#version' merges file."""
    spec = json.loads(tok.to_str())["model"]
    vocab = {t: i for t, i in spec["vocab"].items() if t not in RESERVED_TOKENS}  # the release has none
    (d / "encoder_bpe_40000.json").write_text(json.dumps(vocab))
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["merges"]]
    (d / "vocab_40000.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def as_python_reads(literal: str) -> str:
    """A string literal of the release's source, as its Python read it: escapes applied, the ones
    Python does not know (`\\?`, `\\+`) kept with their backslash."""
    import ast
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "invalid escape sequence": the release's, on purpose here
        return ast.literal_eval(literal)


# text_utils.py's three patterns, character for character as the release wrote them: non-raw
# strings, so its `\\+` reaches the regex as `\+` (a plus sign) and backslashes are never split off.
RELEASE_PUNCT = as_python_reads(
    r"""'''(-+|~+|!+|"+|;+|\?+|\++|,+|\)+|\(+|\\+|\/+|\*+|\[+|\]+|}+|{+|\|+|_+)'''"""
)
RELEASE_NEWLINE = as_python_reads(r"""'\s*\n\s*'""")
RELEASE_SPACES = as_python_reads(r"""'[^\S\n]+'""")


class Reference:
    """The released encoder (text_utils.py of openai/finetune-transformer-lm), written again here
    from its published steps, as the yardstick: ftfy, text_standardize, spaCy's English tokenizer,
    lower-casing, then BPE that merges the lowest-ranked pair everywhere until none is left;
    pieces not in the vocabulary are id 0."""

    def __init__(self, d: Path, vocab: str = "encoder_bpe_40000.json", merges: str = "vocab_40000.bpe"):
        from spacy.lang.en import English

        self.encoder = json.loads((d / vocab).read_text(encoding="utf-8"))
        lines = (d / merges).read_text(encoding="utf-8").split("\n")[1:]
        self.ranks = {tuple(m.split()): r for r, m in enumerate(x for x in lines if x)}
        self.nlp = English()

    @staticmethod
    def standardize(text: str) -> str:
        for a, b in (("\u2014", "-"), ("\u2013", "-"), ("\u2015", "-"), ("\u2026", "..."), ("\u00b4", "'")):
            text = text.replace(a, b)
        text = re.sub(RELEASE_PUNCT, r" \1 ", text)
        text = re.sub(RELEASE_NEWLINE, " \n ", text)
        return re.sub(RELEASE_SPACES, " ", text).strip()

    def bpe(self, token: str) -> list[str]:
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(zip(word, word[1:], strict=False))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, math.inf))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        pieces = " ".join(word)
        return ["\n</w>"] if pieces == "\n  </w>" else pieces.split(" ")

    def __call__(self, text: str) -> list[int]:
        import ftfy

        doc = self.nlp(self.standardize(ftfy.fix_text(text)))
        return [self.encoder.get(piece, 0) for token in doc for piece in self.bpe(token.text.lower())]


# English the way people write it: contractions, possessives, abbreviations, curly quotes,
# dashes, ellipses, accents, newlines, numbers, URLs, HTML entities, reserved strings.
HARD = [
    "I don't think it's John's; he can't've known, y'all.",
    "Mr. and Mrs. Smith met Dr. Who at 5 p.m. on Jan. 3rd, e.g. at St. Paul's.",
    "\u201cCurly,\u201d she said \u2018quietly\u2019 \u2014 then waited\u2026 and left \u2013 twice.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c0CCENTS \u00fcber-cool co\u00f6perate",
    "Line one.\n\nLine two,\n   indented;\nthird\tline",
    "It costs $3.50 (or 3,500 yen) -- 12.5% off on 2018-06-11 at 10:30!!!",
    "See https://example.com/a?b=1&c=2 or mail me@example.org; Fish &amp; chips.",
    "He said ``hello'' and ~~waved~~ **twice** [sic] {ok} | a/b \\ c __init__ _classify_",
    "Rock 'n' roll isn't dead... O'Neil's cat's toys ain't cheap!?",
]


# Compatibility characters, which NFKC would rewrite (½ to 1⁄2, ² to 2, ™ to TM, ´ to a space and
# an accent) but ftfy's own defaults (NFC) leave, or fix in its own way (ligatures, full width).
COMPAT = [
    "don\u00b4t pay \u00bd of x\u00b2 for H\u2082O\u2122 at 5 \u00b5m",
    "the \ufb01rst \ufb02ow, \uff21\uff22\uff23 in full width, \u2460 and \u2166",
    "a\u2028b\u2029c\x85d \x80uro \x9f and \ufeffbom, soft\u00adhyphen, e\u0301t\u00e9",
    "tab\tform\x0cfeed\x0bvt\x07bell\x1b[31mred\x1b[0m &amp; &lt;ok&gt;\r\nnext\rline",
]


# Backslashes, paths and URLs, never seen in training: the release leaves a backslash where it is.
PATHS = [
    "C:\\Users\\me\\file.txt and \\\\server\\share\\a b.doc",
    "a regex like \\d+\\s*\\\\ or \\n in a string; c++ and a+b; 1\\2",
    "https://example.com/path\\to?q=a+b&x=\\y and ~/dir/sub\\file",
]


def test_released_format_ids_equal_the_released_encoder(tmp_path):
    from pipeline.data.text import normalize

    write_release(train_tokenizer(english(2000, 0) + HARD + COMPAT, n_merges=300), tmp_path)
    tok, ref = gpt1_tokenizer(tmp_path), Reference(tmp_path)
    assert is_gpt1_encoder(tok) and len(ref.encoder) > 300
    texts = english(200, 1) + HARD + COMPAT + PATHS + ["x" * 50]
    assert encode_texts(tok, texts) == [ref(t) for t in texts]
    # As prepare and fine-tuning call it: the project's normalisation first, then the encoder.
    assert encode_texts(tok, [normalize(t) for t in texts]) == [ref(t) for t in texts]
    assert ref(COMPAT[0]) != ref(COMPAT[0].replace("\u00bd", "1\u20442"))  # ½ is not NFKC's 1⁄2


def test_a_hugging_face_directory_is_read_as_the_released_encoder(tmp_path):
    """What OpenAIGPTTokenizer.save_pretrained writes (a tokenizer.json whose own rules split text
    like BERT, and tokenizer_config.json), and the Hub's vocab.json + merges.txt: both read as
    the released encoder."""
    import shutil

    from transformers import OpenAIGPTTokenizer

    write_release(train_tokenizer(english(1000, 0), n_merges=200), tmp_path)
    ref = Reference(tmp_path)
    hf, hub = tmp_path / "hf", tmp_path / "hub"
    # keyword names matter: vocab_file=/merges_file= silently give a one-token vocabulary
    OpenAIGPTTokenizer(
        vocab=str(tmp_path / "encoder_bpe_40000.json"), merges=str(tmp_path / "vocab_40000.bpe")
    ).save_pretrained(hf)
    hub.mkdir()
    shutil.copy(tmp_path / "encoder_bpe_40000.json", hub / "vocab.json")
    shutil.copy(tmp_path / "vocab_40000.bpe", hub / "merges.txt")
    for d in (hf, hub):
        tok = load_tokenizer(d)
        assert is_gpt1_encoder(tok), d
        assert encode_texts(tok, HARD) == [ref(t) for t in HARD], d
        assert [tok.token_to_id(t) for t in RESERVED_TOKENS] == list(
            range(len(ref.encoder), len(ref.encoder) + 4)
        )


@pytest.mark.skipif(not SHARED_VOCAB.exists(), reason="the released GPT-1 vocabulary is not at hand")
def test_the_released_gpt1_vocabulary_encodes_as_the_released_encoder():
    tok, ref = gpt1_tokenizer(SHARED_VOCAB), Reference(SHARED_VOCAB)
    assert encode_texts(tok, ["hello world"]) == [[3570, 1276]]
    texts = english(300, 2) + HARD
    assert encode_texts(tok, texts) == [ref(t) for t in texts]
    # The vocabulary's own frequent tokens, which a BERT-like split never produces.
    for text, piece in (
        ("don't", "n't</w>"),
        ("he's", "'s</w>"),
        ("Mr. Smith", "mr.</w>"),
        ("wait...", "...</w>"),
        ("a\nb", "\n</w>"),
    ):
        assert tok.token_to_id(piece) in encode_texts(tok, [text])[0], text
    assert [tok.token_to_id(t) for t in RESERVED_TOKENS] == [40478, 40479, 40480, 40481]


@pytest.mark.skipif(
    not (SHARED_VOCAB.exists() and SHAKESPEARE.exists()),
    reason="../shared/data (the released vocabulary, tinyshakespeare) is not at hand",
)
@pytest.mark.slow
def test_real_sentences_get_the_released_encoders_ids():
    """The target: identical ids on at least 99.9% of real sentences (tinyshakespeare's lines,
    raw English with contractions)."""
    from pipeline.data.text import normalize

    lines = [line for line in SHAKESPEARE.read_text(encoding="utf-8").splitlines() if line.strip()]
    tok, ref = gpt1_tokenizer(SHARED_VOCAB), Reference(SHARED_VOCAB)
    ours = encode_texts(tok, [normalize(t) for t in lines])
    same = sum(a == ref(t) for a, t in zip(ours, lines, strict=True))
    print(f"identical ids on {same:,} of {len(lines):,} lines ({same / len(lines):.4%})")
    assert same / len(lines) >= 0.999


def test_training_keeps_exactly_n_merges_and_reserves_tokens():
    tok = train_tokenizer(iter(english(3000, 3)), n_merges=200)
    assert n_merges(tok) == 200
    ids = [tok.token_to_id(t) for t in RESERVED_TOKENS]
    assert ids == list(range(tok.get_vocab_size() - 4, tok.get_vocab_size()))
    # A reserved string in text is text: never the reserved token's id.
    assert (
        tok.token_to_id(END_OF_DOCUMENT)
        not in encode_texts(tok, [f"The lazy dog{END_OF_DOCUMENT}A new one"])[0]
    )
    assert tok.decode(tok.encode("the quick brown fox").ids) == "the quick brown fox"
    small = train_tokenizer(["tiny tiny corpus corpus"], n_merges=10_000)
    assert 0 < n_merges(small) < 10_000  # a small corpus cannot make more


def test_training_consumes_a_stream_once():
    consumed = []

    def stream():
        for t in english(500, 4):
            consumed.append(t)
            yield t

    train_tokenizer(stream(), n_merges=50)
    assert len(consumed) == 500


def test_load_tokenizer_forms(tmp_path):
    tok = train_tokenizer(english(500, 5), n_merges=100)
    sha = save_tokenizer(tok, tmp_path / "tokenizer.json")
    assert len(sha) == 64
    for p in (tmp_path / "tokenizer.json", tmp_path):
        assert load_tokenizer(p).encode("the lazy dog").ids == tok.encode("the lazy dog").ids
    release = tmp_path / "release"
    release.mkdir()
    write_release(tok, release)
    assert load_tokenizer(release).token_to_id(END_OF_DOCUMENT) is not None
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(_empty(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def naive_bpe(word_counts: dict[str, int], n_merges: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """BPE the slow, obvious way: count every pair of every word, merge the most frequent
    (ties: the smallest pair as strings) everywhere, left to right; again."""
    words = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in word_counts if w}
    merges = []
    while len(merges) < n_merges:
        counts: dict = {}
        for w, syms in words.items():
            for pair in zip(syms, syms[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + word_counts[w]
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        if counts[pair] < min_frequency:
            break
        merges.append(pair)
        for w, syms in words.items():
            out, j = [], 0
            while j < len(syms):
                if j + 1 < len(syms) and (syms[j], syms[j + 1]) == pair:
                    out.append(syms[j] + syms[j + 1])
                    j += 2
                else:
                    out.append(syms[j])
                    j += 1
            words[w] = out
    return merges


def test_learned_merges_equal_the_obvious_algorithm():
    """The incremental learner (which touches only the words and pairs a merge changes) on
    small vocabularies full of ties and repeats (a b a b, a a a a)."""
    from pipeline.data.bpe import learn_bpe

    rng = random.Random(0)
    for trial in range(200):
        alphabet = "ab" if trial % 3 == 0 else "abcde"
        counts: dict = {}
        for _ in range(rng.randint(1, 60)):
            w = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
            counts[w] = counts.get(w, 0) + rng.randint(1, 5)
        n = rng.randint(1, 40)
        assert learn_bpe(counts, n)[1] == naive_bpe(counts, n), (trial, counts, n)


def test_learned_merges_do_not_depend_on_the_hash_seed():
    import os
    import subprocess
    import sys

    code = (
        "import json, random; from pipeline.data.bpe import learn_bpe; rng = random.Random(1); "
        "c = {''.join(rng.choice('abcdefgh') for _ in range(rng.randint(1, 8))): rng.randint(1, 9) for _ in range(3000)}; "
        "print(json.dumps(learn_bpe(c, 400)[1]))"
    )
    root = Path(__file__).resolve().parent.parent
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("0", "1", "12345")
    }
    assert len(runs) == 1 and len(json.loads(runs.pop())) == 400
