"""A model directory read back: the network and its tokenizer, checked to belong together, and a
training checkpoint's files checked against its trainer_state.json (pipeline/train/checkpoint.py
writes them; its docstring lists the files). Every verb that reads a checkpoint (evaluate,
generate, finetune, predict, serve) reads it here, below training, which it does not import.

A pretraining run is a directory (or a URI) of checkpoint_NNNNNNNNN directories; latest_checkpoint
finds its newest complete one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import Tokenizer

from model import GPT, from_pretrained
from pipeline import remote
from pipeline.data.tokenizer import RESERVED_TOKENS, load_tokenizer
from pipeline.errors import UserError, model_input
from pipeline.files import sha256_file

STATE_FILE = "trainer_state.json"  # written last: a checkpoint without it is incomplete
OPTIMIZER_FILE = "optimizer.safetensors"


class DamagedCheckpoint(UserError):
    """A checkpoint directory whose writing did not finish, or whose files were changed."""


def check_complete(directory, hashes: bool = True) -> None:
    """Raise DamagedCheckpoint unless directory, if it is a training checkpoint, holds every
    file its trainer_state.json lists, at the listed size (and sha256, with hashes). A model
    directory that is no training checkpoint passes."""
    d = Path(directory)
    if not (d / STATE_FILE).exists():
        if (d / OPTIMIZER_FILE).exists():
            raise DamagedCheckpoint(
                f"{d}: an incomplete training checkpoint (no {STATE_FILE}, which is "
                "written last); use an earlier checkpoint of the run"
            )
        return
    try:
        files = json.loads((d / STATE_FILE).read_text()).get("files", {})
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DamagedCheckpoint(
            f"{d / STATE_FILE}: not valid JSON; the checkpoint is damaged: use an "
            "earlier checkpoint of the run"
        ) from None
    for name, want in sorted(files.items()):
        p = d / name
        if not p.is_file() or p.stat().st_size != want["bytes"]:
            got = f"{p.stat().st_size:,} bytes" if p.is_file() else "missing"
            raise DamagedCheckpoint(
                f"{p}: {got}, expected {want['bytes']:,}; the checkpoint is damaged "
                "(its writing was cut off?): use an earlier checkpoint of the run"
            )
        if hashes and sha256_file(p) != want["sha256"]:
            raise DamagedCheckpoint(
                f"{p}: sha256 differs from {STATE_FILE}'s; the checkpoint is damaged: "
                "use an earlier checkpoint of the run"
            )


_CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)$")


def latest_checkpoint(run_path: str) -> tuple[str, int] | None:
    """(path, step) of the newest complete checkpoint under run_path (a directory or a URI), or
    None. Damaged ones (a write cut off by a kill or a full disk) are passed over."""
    import pyarrow.fs as pafs

    run = remote.Location.of(run_path)
    try:
        infos = run.fs.get_file_info(pafs.FileSelector(run.path, allow_not_found=True))
    except OSError:
        return None
    found = sorted(
        (
            (int(m.group(1)), run.of_path(i.path))
            for i in infos
            if i.type == pafs.FileType.Directory and (m := _CHECKPOINT_NAME.match(i.base_name))
        ),
        reverse=True,
    )
    for step, path in found:
        # A local checkpoint is renamed into place whole, but a kill or a full disk can still
        # damage one; one on object storage is complete once its state file is there.
        if run.local is not None:
            try:
                check_complete(path, hashes=False)
            except DamagedCheckpoint:
                continue
        if (remote.Location.of(path) / STATE_FILE).is_file():
            return path, step
    return None


def load_model(directory) -> GPT:
    """The network (Transformer or LSTM) of any model directory that model.from_pretrained reads, a training checkpoint's
    files checked against its trainer_state.json first; a damaged or foreign directory is the
    user's input, reported as one line."""
    check_complete(directory)
    with model_input(str(directory)):
        return from_pretrained(directory)


def load_model_and_tokenizer(directory) -> tuple[GPT, Tokenizer]:
    """A model directory's GPT (load_model) and its tokenizer (load_tokenizer), checked to belong
    together; a missing directory or tokenizer is one line naming it."""
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"--checkpoint {d}: no such model directory")
    gpt = load_model(d)
    try:
        tok = load_tokenizer(d)
    except FileNotFoundError:
        raise UserError(
            f"--checkpoint {d}: holds no tokenizer (tokenizer.json, or the released "
            "vocabulary's files); copy the tokenizer of the data it was trained on there"
        ) from None
    check_vocabulary(tok, gpt.config.vocab_size, d)
    return gpt, tok


def check_vocabulary(tok: Tokenizer, vocab_size: int, where) -> None:
    """Every token of the tokenizer but the reserved ones (which fine-tuning adds) must have a
    row in the model: else the checkpoint and its tokenizer do not belong together. The reserved
    ones may follow the table, no further: fine-tuning grows the table to the largest of them."""
    vocab = tok.get_vocab(with_added_tokens=True)
    ids = [i for t, i in vocab.items() if t not in RESERVED_TOKENS]
    if ids and max(ids) >= vocab_size:
        raise UserError(
            f"{where}: the tokenizer has ids up to {max(ids):,} but the model only "
            f"{vocab_size:,} embedding rows; expected a model and its own tokenizer"
        )
    reserved = {t: vocab[t] for t in RESERVED_TOKENS if t in vocab}
    bound = vocab_size + len(RESERVED_TOKENS)
    far = [f"{t} at {i:,}" for t, i in reserved.items() if i >= bound]
    if far:
        raise UserError(
            f"{where}: the tokenizer puts {', '.join(far)}, past the model's {vocab_size:,} rows and "
            f"the {len(RESERVED_TOKENS)} reserved ones after them; expected ids below {bound:,}"
        )


def read_state(directory) -> dict:
    return json.loads((Path(directory) / STATE_FILE).read_text())
