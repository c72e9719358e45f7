"""Reading and writing GPT weights in three formats, without unpickling anything: files <->
(GPTConfig, state dict). model.from_pretrained and the networks' save_pretrained call these.

- native:  config.json (GPTConfig fields, "format": "gpt1-native") + model.safetensors
- hf:      a transformers OpenAIGPTLMHeadModel directory (config.json + model.safetensors)
- openai:  the original release, params_shapes.json + params_0.npy ... params_9.npy: every array
           flattened, concatenated in params_shapes.json order, and cut into 10 files.
"""

from __future__ import annotations

import ast
import json
import os
import re
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import GPTConfig

NATIVE_FORMAT = "gpt1-native"
HF_PREFIX = "transformer."
# HF and the release store these as Conv1D, [in, out]; nn.Linear keeps [out, in].
_CONV1D = re.compile(r"\.(c_attn|c_proj|c_fc)\.weight$")
# Per block, the release's arrays come in this order.
_OPENAI_BLOCK = [
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_1.weight",
    "ln_1.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
]
_HF_CONFIG = {"n_ctx": "n_positions"}  # our name -> HF name, where they differ


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def write_weights(directory, config: GPTConfig, sd: dict[str, torch.Tensor], format: str = "native") -> None:
    """Write config.json + model.safetensors into directory (other files there are left alone)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = config.to_dict()
    if format == "native":
        _write_safetensors(d / "model.safetensors", sd)
        _write_json(d / "config.json", {"format": NATIVE_FORMAT, **cfg})
    elif format == "hf":
        _write_safetensors(
            d / "model.safetensors",
            {HF_PREFIX + k: (v.t() if _CONV1D.search(k) else v) for k, v in sd.items()},
        )
        hf_cfg = {_HF_CONFIG.get(k, k): v for k, v in cfg.items()}
        _write_json(
            d / "config.json",
            {
                "architectures": ["OpenAIGPTLMHeadModel"],
                "model_type": "openai-gpt",
                "afn": "gelu",  # HF's "gelu" for this model is the tanh form (gelu_new)
                "tie_word_embeddings": True,
                **hf_cfg,
            },
        )
    else:
        raise ValueError(f"unknown weights format {format!r}; expected 'native' or 'hf'")


def read_weights(directory, **overrides) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """Read a native, Hugging Face or original-OpenAI directory: its config and its float32 state
    dict, in model.GPT's names and layout. overrides replace config fields
    (dropout for fine-tuning, say); for the OpenAI release, n_ctx truncates the position table and
    vocab_size sets how many new special-token rows follow the 40,478 released ones."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such model directory")
    if (d / "params_shapes.json").exists():
        return _load_openai(d, **overrides)
    if not (d / "config.json").exists():
        raise FileNotFoundError(
            f"{d}: expected config.json (native or Hugging Face) or "
            "params_shapes.json (original OpenAI release)"
        )
    raw = _read_json(d / "config.json")
    if raw.get("format") == NATIVE_FORMAT:
        try:
            cfg = GPTConfig.from_dict({k: v for k, v in raw.items() if k != "format"})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{d / 'config.json'}: {err}") from None
        sd = _read_safetensors(d)
    elif raw.get("model_type") == "openai-gpt":
        cfg, sd = _from_hf(d, raw)
    else:
        raise ValueError(
            f'{d / "config.json"}: expected "format": "{NATIVE_FORMAT}" or "model_type": "openai-gpt"'
        )
    return GPTConfig.from_dict({**cfg.to_dict(), **overrides}), _float32(sd)


def read_checked(directory, **overrides) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """read_weights, and the config checked against the weights' size before anything is built:
    the config is the directory's text and the weights its bytes, and a config that asks for more
    than the files hold (n_layer 100000 beside 2 blocks of weights) is refused."""
    config, sd = read_weights(directory, **overrides)
    held = sum(t.numel() for t in sd.values())
    if held != config.n_params():
        raise ValueError(
            f"{directory}: the config asks for {config.n_params():,} parameters "
            f"({config.n_layer} x {config.n_embd}, vocab {config.vocab_size:,}, n_ctx "
            f"{config.n_ctx}, {config.arch}) but the weights hold {held:,}; the config and the weights do not "
            "belong together"
        )
    return config, sd


def assign_weights(net: torch.nn.Module, sd: dict[str, torch.Tensor], directory) -> torch.nn.Module:
    """net (built on the meta device) handed the loaded tensors; a missing, unexpected or
    mis-shaped tensor is one line naming the directory."""
    try:
        net.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split("\n", 1)[-1].split())
        raise ValueError(f"{directory}: the weights do not fit the config: {detail[:300]}") from None
    if isinstance(getattr(net, "lstm", None), torch.nn.LSTM):
        net.lstm.flatten_parameters()  # assign=True handed it new tensors; cuDNN wants one block
    return net


def _read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({getattr(err, 'msg', err)})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return raw


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ValueError(
            f"{path}: not a complete safetensors file ({err}); the write was cut off, or the file is damaged"
        ) from None


def _float32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Weights are kept in float32, whatever the file.
    return {k: v.to(torch.float32).contiguous() for k, v in sd.items()}


def _read_safetensors(d: Path) -> dict[str, torch.Tensor]:
    index = d / "model.safetensors.index.json"
    if index.exists():  # sharded HF checkpoint
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for f in files for k, v in _load_file(d / f).items()}
    if (d / "model.safetensors").exists():
        return _load_file(d / "model.safetensors")
    if (d / "pytorch_model.bin").exists():
        raise ValueError(
            f"{d}: only pytorch_model.bin (a pickle) is there; it is not unpickled. "
            "Expected model.safetensors"
        )
    raise FileNotFoundError(f"{d}: expected model.safetensors")


def _from_hf(d: Path, raw: dict) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    if raw.get("afn", "gelu") != "gelu":
        raise ValueError(f"{d / 'config.json'}: afn {raw['afn']!r} is not GPT-1's gelu")
    fields = GPTConfig().to_dict()
    cfg = GPTConfig.from_dict({k: raw.get(_HF_CONFIG.get(k, k), v) for k, v in fields.items()})
    sd = {}
    for k, v in _read_safetensors(d).items():
        k = k.removeprefix(HF_PREFIX)
        # lm_head.weight is tied to tokens_embed; attn.bias and position_ids are HF's buffers.
        if k == "lm_head.weight" or k.endswith(".attn.bias") or k == "position_ids":
            continue
        sd[k] = v.t() if _CONV1D.search(k) else v
    return cfg, sd


def read_npy(path: Path) -> torch.Tensor:
    """A little-endian float32 .npy array, parsed by hand so that numpy (and pickle) stay out."""
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ValueError(f"{path}: not a .npy file")
        major = f.read(2)[0]
        (hlen,) = struct.unpack("<H" if major == 1 else "<I", f.read(2 if major == 1 else 4))
        header = ast.literal_eval(f.read(hlen).decode("latin1"))
        if header["descr"] != "<f4" or header["fortran_order"]:
            raise ValueError(
                f"{path}: expected a C-ordered little-endian float32 array, got descr {header['descr']!r}"
            )
        data = bytearray(f.read())
    return torch.frombuffer(data, dtype=torch.float32).reshape(header["shape"])


def _load_openai(d: Path, **overrides) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    shapes = json.loads((d / "params_shapes.json").read_text())
    files = [d / f"params_{i}.npy" for i in range(10)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]}: missing; the original release is params_0.npy ... params_9.npy"
        )
    flat = torch.cat([read_npy(f).reshape(-1) for f in files])
    sizes = [torch.Size(s).numel() for s in shapes]
    if sum(sizes) != flat.numel():
        raise ValueError(
            f"{d}: the .npy files hold {flat.numel()} values, params_shapes.json expects {sum(sizes)}"
        )
    arrays = [a.reshape(s) for a, s in zip(flat.split(sizes), shapes, strict=True)]
    positions, tokens, blocks = arrays[0], arrays[1], arrays[2:]
    if len(blocks) % len(_OPENAI_BLOCK):
        raise ValueError(f"{d / 'params_shapes.json'}: {len(shapes)} arrays is not 2 + 12 per layer")
    n_vocab, n_embd = tokens.shape
    # Without a vocab_size override: the table the files hold, plus the released train.py's three
    # special-token rows (_start_, _delimiter_, _classify_), as GPTConfig's 40,481 = 40,478 + 3.
    cfg = GPTConfig.from_dict(
        {
            **GPTConfig().to_dict(),
            "n_layer": len(blocks) // len(_OPENAI_BLOCK),
            "n_embd": n_embd,
            "n_ctx": positions.shape[0],
            "vocab_size": n_vocab + 3,
            **overrides,
        }
    )
    n_special = cfg.vocab_size - n_vocab
    if n_special < 0 or cfg.n_ctx > positions.shape[0]:
        raise ValueError(
            f"{d}: vocab_size {cfg.vocab_size} / n_ctx {cfg.n_ctx} do not fit the "
            f"release's {n_vocab} tokens / {positions.shape[0]} positions"
        )
    # The special-token rows are new, drawn from N(0, 0.02) as the released train.py does.
    special = torch.randn(n_special, n_embd, generator=torch.Generator().manual_seed(0)) * 0.02
    sd = {
        "tokens_embed.weight": torch.cat([tokens, special]),
        "positions_embed.weight": positions[: cfg.n_ctx],
    }
    for i in range(cfg.n_layer):
        for name, a in zip(_OPENAI_BLOCK, blocks[i * 12 : (i + 1) * 12], strict=True):
            sd[f"h.{i}.{name}"] = a.squeeze(0).t() if _CONV1D.search("." + name) else a
    return cfg, _float32(sd)
