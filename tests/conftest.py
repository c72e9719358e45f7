import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import GPT, GPTConfig  # noqa: E402


@pytest.fixture
def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny")).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, GPTConfig.preset("tiny").vocab_size, (3, 20), generator=g)
