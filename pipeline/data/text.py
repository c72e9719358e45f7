"""What happens to text before BPE: one normalisation for the corpus and for every task's text,
and GPT-1's original splitting of text into words, for its released vocabulary.

- normalize: applied by prepare to every document and by tuning/encode.py to every task text,
  so that a sentence gives the same ids in pretraining and in fine-tuning.
- gpt1_words: the released encoder's steps before BPE (text_utils.py of
  openai/finetune-transformer-lm): ftfy, text_standardize, spaCy's rule-based English tokenizer,
  lower-casing. A tokenizer prepare trains splits text with tokenizers' own faster rules instead
  (pipeline/data/tokenizer.py says which tokenizer does which).
"""

from __future__ import annotations

import re
import unicodedata

# The control characters ftfy's remove_control_chars drops (C0 but \t \n \f \r, DEL, the
# deprecated Arabic format characters, the interlinear annotation marks, U+FFFC and the byte
# order mark). C1 characters stay: ftfy reads them as Windows-1252 (fix_c1_controls).
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufff9-\ufffc\ufeff]")
_C1 = re.compile("[\x80-\x9f]")
_TERMINAL_ESCAPES = re.compile("\x1b\\[[0-9;]*[a-zA-Z]")  # ftfy's remove_terminal_escapes, before ESC goes
# ftfy's fix_line_breaks: every line separator becomes \n.
_LINE_BREAKS = str.maketrans({"\u2028": "\n", "\u2029": "\n", "\x85": "\n"})


# What UTF-8 read as Latin-1 or Windows-1252 ("mojibake") looks like: a lead byte's character
# followed by a continuation byte's. Only text with such a pair goes through ftfy's repair,
# which runs at about 2 MB/s; the test runs at hundreds.
_MOJIBAKE = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e"
    "\u0192\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030"
    "\u2039\u203a\u20ac\u2122]"
)


def normalize(text: str, lowercase: bool = False) -> str:
    """Unicode repair (ftfy.fix_text with its own defaults, as GPT-1's encoder called it) where the
    text looks like mojibake or holds C1 controls; otherwise ftfy's cheap steps alone: NFC (ftfy's
    default normalisation since 4.0: ½, ², ™ and µ stay themselves, as the released encoder saw
    them), its line breaks, and the terminal escapes and control characters it drops. Optional lower-casing. ASCII text
    needs none of the Unicode steps."""
    if not text.isascii():
        if _MOJIBAKE.search(text) or _C1.search(text):
            import ftfy

            text = ftfy.fix_text(text)
        text = unicodedata.normalize("NFC", text).translate(_LINE_BREAKS)
    if "\x1b" in text:
        text = _TERMINAL_ESCAPES.sub("", text)
    text = _CONTROL.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return (text.lower() if lowercase else text).strip()


# text_standardize's rules: dashes and the ellipsis character replaced, runs of these punctuation
# characters set apart by spaces, whitespace around a newline made " \n ", other whitespace one space.
# Backslashes are not among them: the release writes its pattern in a non-raw string, where the
# `\\+` meant for runs of backslashes becomes `\+`, a plus sign, which the `\++` before it already
# takes. So the release never sets a backslash apart, and neither does this.
_DASHES = str.maketrans({"\u2014": "-", "\u2013": "-", "\u2015": "-", "\u00b4": "'"})
_PUNCT_RUN = re.compile(r"""(-+|~+|!+|"+|;+|\?+|\++|,+|\)+|\(+|/+|\*+|\[+|\]+|}+|{+|\|+|_+)""")
_AROUND_NEWLINE = re.compile(r"\s*\n\s*")
_SPACES = re.compile(r"[^\S\n]+")


def standardize(text: str) -> str:
    """The released encoder's text_standardize (written for spaCy on BooksCorpus)."""
    text = text.translate(_DASHES).replace("\u2026", "...")
    text = _PUNCT_RUN.sub(r" \1 ", text)
    text = _AROUND_NEWLINE.sub(" \n ", text)
    return _SPACES.sub(" ", text).strip()


_SPACY = None


def _spacy_tokenizer():
    """spaCy's rule-based English tokenizer (no model to download), one per process."""
    global _SPACY
    if _SPACY is None:
        from spacy.lang.en import English

        _SPACY = English().tokenizer
    return _SPACY


# ASCII characters that ftfy.fix_text changes: HTML entities, terminal escapes, carriage
# returns, the control characters it drops.
_FTFY_ASCII = re.compile("[&\x1b\r\x00-\x08\x0b\x0e-\x1f\x7f]")


def _fix_text(text: str) -> str:
    """ftfy.fix_text with its defaults, as the released encoder calls it. ASCII text with none of
    the characters ftfy changes in ASCII is left as it is: ftfy would change nothing in it (its
    other fixes concern non-ASCII characters), and skipping it saves most of its time."""
    if text.isascii() and not _FTFY_ASCII.search(text):
        return text
    import ftfy

    return ftfy.fix_text(text)


def gpt1_words(text: str) -> list[str]:
    """The words the released encoder applies BPE to: ftfy, standardize, spaCy, lower-case."""
    words = []
    for token in _spacy_tokenizer()(standardize(_fix_text(text))):
        word = token.text.lower()
        # The released BPE turns a newline token that spaCy left with a trailing space into the
        # vocabulary's own newline token.
        words.append("\n" if word == "\n " else word)
    return words
