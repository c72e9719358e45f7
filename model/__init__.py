"""GPT-1 (Radford et al., 2018): the network (and the LSTM baseline), its task heads, objectives, optimiser and weights.

Imports torch and safetensors only, so a GPU benchmark of the model needs nothing else. Each name
is imported from its module when first used: `from model import GPTConfig` (a command's options,
a plan) does not import torch.
"""

import importlib

# name -> the module of this package that defines it
_WHERE = {
    "GPTConfig": "config",
    "PRESETS": "config",
    "GPT": "gpt",
    "TRANSFORMATIONS": "config",
    "GPTForTask": "heads",
    "TaskHead": "heads",
    "TaskOutput": "heads",
    "extract_states": "heads",
    "KVCache": "kvcache",
    "combined_loss": "losses",
    "lm_loss": "losses",
    "task_loss": "losses",
    "LSTMLM": "lstm",
    "build": "network",
    "from_pretrained": "network",
    "make_optimizer": "optim",
    "make_schedule": "optim",
    "param_groups": "optim",
    "warmup_constant": "optim",
    "warmup_cosine": "optim",
    "warmup_linear": "optim",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # once: later uses are plain attribute reads
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
