"""Training checkpoints: a model directory plus the state that makes a resume exact.

    config.json, model.safetensors   the model (model.from_pretrained reads them)
    tokenizer.json                   the dataset's tokenizer (load_tokenizer reads it)
    trainer_state.json               step, schedule, pretraining config, data fingerprint, and
                                     the size and sha256 of every other file: written last, so
                                     a checkpoint without it, or whose files differ, is damaged
    optimizer.safetensors            AdamW's moments and step counts, keyed by parameter name

No RNG state is kept: the loop draws each micro-batch's randomness (dropout) from
micro_seed(seed, step, micro-batch), so a resume needs only the step. (Checkpoints of earlier
versions hold rng/cpu and rng/cuda tensors; they are read and ignored.)

Nothing is pickled, so nothing is unpickled on load.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from model import GPT, from_pretrained
from model.weights import write_weights
from pipeline import outdir, remote
from pipeline.data.packing import sha256_file
from pipeline.data.tokenizer import RESERVED_TOKENS, load_tokenizer
from pipeline.errors import UserError, model_input

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


def snapshot(gpt: GPT, optimizer: torch.optim.Optimizer) -> tuple:
    """The model's and AdamW's tensors, copied into this process's memory: what write_checkpoint
    writes, while training goes on and changes the originals."""
    model = {k: v.detach().to("cpu", copy=True) for k, v in gpt.state_dict().items()}
    name_of = {id(p): n for n, p in gpt.named_parameters()}
    moments = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                moments[f"{name_of[id(p)]}/{key}"] = t.detach().to("cpu", copy=True).contiguous()
    return gpt.config, model, moments


def write_checkpoint(directory, snap: tuple, state: dict, tokenizer_path) -> None:
    """Write a snapshot() as a checkpoint directory, trainer_state.json (with every file's hash) last."""
    config, model, moments = snap
    d = Path(directory)
    write_weights(d, config, model)
    shutil.copy(tokenizer_path, d / "tokenizer.json")
    save_file(moments, str(d / OPTIMIZER_FILE))
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(d.iterdir())
        if p.is_file() and p.name not in (STATE_FILE, outdir.MARKER_FILE)
    }
    (d / STATE_FILE).write_text(json.dumps({**state, "files": files}, indent=2, sort_keys=True) + "\n")


def save_checkpoint(
    directory, gpt: GPT, optimizer: torch.optim.Optimizer, state: dict, tokenizer_path
) -> None:
    write_checkpoint(directory, snapshot(gpt, optimizer), state, tokenizer_path)


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

    fs, base = remote.filesystem(run_path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except OSError:
        return None
    found = sorted(
        (
            (int(m.group(1)), i.path)
            for i in infos
            if i.type == pafs.FileType.Directory and (m := _CHECKPOINT_NAME.match(i.base_name))
        ),
        reverse=True,
    )
    for step, path in found:
        if not remote.is_remote(run_path):
            try:
                check_complete(path, hashes=False)
            except DamagedCheckpoint:
                continue
            if (Path(path) / STATE_FILE).exists():
                return path, step
        elif fs.get_file_info(f"{path}/{STATE_FILE}").type == pafs.FileType.File:
            return remote.scheme(run_path) + path, step
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


def load_training_state(directory, gpt: GPT, optimizer: torch.optim.Optimizer) -> dict:
    """Load the model's weights and the optimizer's state into existing objects (the
    model may already be on its device); returns trainer_state.json."""
    d = Path(directory)
    check_complete(d, hashes=False)
    with model_input(str(d)):
        weights = from_pretrained(d).state_dict()
    with torch.no_grad():
        for name, t in gpt.state_dict().items():
            t.copy_(weights[name])
    tensors = load_file(str(d / OPTIMIZER_FILE))
    fused = any(g.get("fused") for g in optimizer.param_groups)
    for name, p in gpt.named_parameters():
        state = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == name}
        # The moments live on the parameter's device; the step count too for the fused kernel,
        # on the CPU otherwise (as AdamW itself keeps them).
        optimizer.state[p] = {k: v.to(p.device if k != "step" or fused else "cpu") for k, v in state.items()}
    return read_state(d)
