"""The pronoun-resolution sets of the paper's DPRD heuristic (section 5): each schema as a
sentence split at its definite pronoun, the candidates that may replace it, and the right one.

- wsc: the Winograd Schema Challenge collection in the XML layout Ernest Davis distributes
  (WSCollection.xml): per <schema>, <text> holding <txt1>, <pron>, <txt2>; <answers> holding one
  <answer> per candidate; <correctAnswer> a letter (A, B, ...; trailing dots and spaces allowed).
- dprd: Rahman & Ng's (2012) Definite Pronoun Resolution Dataset: text files of 4-line records
  separated by blank lines (sentence, pronoun, the candidates separated by commas, the right
  one). A directory holding test.c.txt (the split the heuristic scores) or one such file.

Every schema is read, or the file is refused with the record that is wrong; none is skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.tasks import TaskError


@dataclass(frozen=True)
class Schema:
    before: str  # the sentence up to the pronoun
    after: str  # the rest, after the pronoun: what the heuristic scores
    candidates: tuple[str, ...]
    label: int  # index of the right candidate


def _text(el, what: str, where: str) -> str:
    node = el.find(what)
    if node is None or node.text is None or not node.text.strip():
        raise TaskError(f"{where}: no <{what}> text")
    return " ".join(node.text.split())


def read_wsc(path) -> list[Schema]:
    import xml.etree.ElementTree as ET

    path = Path(path)
    if path.is_dir():
        path = path / "WSCollection.xml"
    if not path.is_file():
        raise TaskError(f"{path}: no such file; expected WSCollection.xml (the Winograd Schema collection)")
    head = path.read_bytes()[:200]
    if b"encoding=" not in head.split(b"?>", 1)[0] or b"utf-8" in head.lower().split(b"?>", 1)[0]:
        utf8_text(path)  # XML without another declared encoding is UTF-8: a stray byte is named
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise TaskError(f"{path}: not valid XML ({err})") from None
    out = []
    for n, schema in enumerate(root.iter("schema"), 1):
        where = f"{path} (schema {n})"
        text = schema.find("text")
        if text is None:
            raise TaskError(f"{where}: no <text>")
        # txt1 may be empty (a pronoun that opens the sentence); txt2 is what is scored.
        node = text.find("txt1")
        before = " ".join((node.text or "").split()) if node is not None else ""
        after = _text(text, "txt2", where)
        _text(text, "pron", where)
        answers = schema.find("answers")
        candidates = tuple(
            " ".join(a.text.split())
            for a in (answers.findall("answer") if answers is not None else [])
            if a.text
        )
        if len(candidates) < 2:
            raise TaskError(f"{where}: {len(candidates)} <answer>s; expected at least 2")
        letter = _text(schema, "correctAnswer", where).strip(" .").upper()
        if len(letter) != 1 or not 0 <= ord(letter) - ord("A") < len(candidates):
            raise TaskError(
                f"{where}: correctAnswer {letter!r}; expected a letter A-{chr(64 + len(candidates))}"
            )
        out.append(Schema(before, after, candidates, ord(letter) - ord("A")))
    if not out:
        raise TaskError(f"{path}: holds no <schema>; expected the Winograd Schema collection's XML")
    return out


def utf8_text(path: Path) -> str:
    """A file's text, or a TaskError naming the first byte that is not UTF-8 (a Latin-1 copy,
    say), with its line and column."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise TaskError(
            f"{path}:{line}: byte 0x{data[err.start]:02x} at column {column} is not UTF-8; "
            "convert the file to UTF-8 (iconv -f latin1 -t utf-8)"
        ) from None


def read_dprd(path) -> list[Schema]:
    path = Path(path)
    if path.is_dir():
        path = path / "test.c.txt"
    if not path.is_file():
        raise TaskError(
            f"{path}: no such file; expected Rahman & Ng's DPRD test.c.txt (or a directory holding it)"
        )
    lines = utf8_text(path).replace("\r\n", "\n").split("\n")
    out, record, first = [], [], 0
    for i, line in enumerate([*lines, ""], 1):
        if line.strip():
            if not record:
                first = i
            record.append(line.strip())
            continue
        if not record:
            continue
        where = f"{path}:{first}"
        if len(record) != 4:
            raise TaskError(
                f"{where}: a record of {len(record)} lines; expected 4 (sentence, pronoun, candidates, answer)"
            )
        sentence, pronoun, cands, answer = record
        candidates = tuple(c.strip() for c in cands.split(","))
        if len(candidates) < 2 or not all(candidates):
            raise TaskError(f"{where}: candidates {cands!r}; expected two or more, separated by commas")
        if answer not in candidates:
            raise TaskError(f"{where}: answer {answer!r} is not one of the candidates {list(candidates)}")
        before, after = split_at_pronoun(sentence, pronoun, where)
        out.append(Schema(before, after, candidates, candidates.index(answer)))
        record = []
    if not out:
        raise TaskError(f"{path}: holds no records; expected DPRD's 4-line records separated by blank lines")
    return out


def split_at_pronoun(sentence: str, pronoun: str, where: str) -> tuple[str, str]:
    """The sentence before and after its definite pronoun: its first whole-word occurrence, as the
    data set's card says of a pronoun the sentence repeats ("Tom said he would beat Jerry because
    he ..." resolves the first "he")."""
    hit = re.search(rf"(?<!\w){re.escape(pronoun)}(?!\w)", sentence, flags=re.IGNORECASE)
    if hit is None:
        raise TaskError(f"{where}: the pronoun {pronoun!r} is not in the sentence")
    return sentence[: hit.start()].strip(), sentence[hit.end() :].strip()


READERS = {"wsc": read_wsc, "dprd": read_dprd}
