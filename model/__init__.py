"""GPT-1 (Radford et al., 2018): the network (and the LSTM baseline), its task heads, objectives, optimiser and weights.

Imports torch and safetensors only, so a GPU benchmark of the model needs nothing else.
"""

from .config import PRESETS, GPTConfig
from .gpt import GPT
from .heads import TRANSFORMATIONS, GPTForTask, TaskHead, TaskOutput, extract_states
from .kvcache import KVCache
from .losses import combined_loss, lm_loss, task_loss
from .lstm import LSTMLM
from .network import build, from_pretrained
from .optim import make_optimizer, make_schedule, param_groups, warmup_constant, warmup_cosine, warmup_linear

__all__ = [
    "GPT",
    "LSTMLM",
    "build",
    "from_pretrained",
    "KVCache",
    "GPTConfig",
    "PRESETS",
    "GPTForTask",
    "TaskHead",
    "TaskOutput",
    "TRANSFORMATIONS",
    "extract_states",
    "lm_loss",
    "task_loss",
    "combined_loss",
    "make_optimizer",
    "make_schedule",
    "param_groups",
    "warmup_cosine",
    "warmup_linear",
    "warmup_constant",
]
