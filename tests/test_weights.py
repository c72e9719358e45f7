"""save_pretrained / from_pretrained: native, Hugging Face, and the original OpenAI release."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model import GPT, GPTConfig
from model.weights import read_npy

ROOT = Path(__file__).resolve().parent.parent
SHARED_SHAPES = ROOT.parent / "shared" / "data" / "gpt1-vocab" / "params_shapes.json"


def random_gpt(**overrides) -> GPT:
    # Non-trivial values everywhere (LayerNorm gains and biases included), so that a swapped or
    # untransposed tensor would show in the logits.
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.preset("tiny", **overrides)).eval()
    with torch.no_grad():
        for p in gpt.parameters():
            p.copy_(
                torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 and p.numel() == gpt.config.n_embd else 0.0)
            )
    return gpt


def test_native_round_trip_is_bit_exact(tmp_path, ids):
    gpt = random_gpt()
    gpt.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    back = GPT.from_pretrained(tmp_path).eval()
    assert back.config == gpt.config
    for (k, a), (k2, b) in zip(gpt.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    assert torch.equal(gpt(ids), back(ids))


def test_overrides_replace_config_fields(tmp_path):
    random_gpt().save_pretrained(tmp_path)
    assert GPT.from_pretrained(tmp_path, resid_pdrop=0.0).config.resid_pdrop == 0.0
    with pytest.raises(ValueError, match="unknown GPTConfig keys"):
        GPT.from_pretrained(tmp_path, n_layers=3)


def test_hf_export_loads_in_transformers(tmp_path, ids):
    from transformers import OpenAIGPTLMHeadModel

    gpt = random_gpt()
    gpt.save_pretrained(tmp_path, format="hf")
    hf = OpenAIGPTLMHeadModel.from_pretrained(tmp_path).eval()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.tokens_embed.weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, gpt(ids), atol=1e-4, rtol=0)
    # and reading the HF directory back gives the same logits
    torch.testing.assert_close(GPT.from_pretrained(tmp_path).eval()(ids), gpt(ids), atol=0, rtol=0)


def test_transformers_checkpoint_loads_here(tmp_path, ids):
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

    torch.manual_seed(3)
    cfg = GPTConfig.preset("tiny")
    hf = OpenAIGPTLMHeadModel(
        OpenAIGPTConfig(
            vocab_size=cfg.vocab_size,
            n_positions=cfg.n_ctx,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            afn="gelu",
        )
    ).eval()
    with torch.no_grad():  # HF initialises LayerNorm to (1, 0): perturb so a mix-up would show
        for n, p in hf.named_parameters():
            if "ln_" in n:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    gpt = GPT.from_pretrained(tmp_path).eval()
    assert gpt.config.n_ctx == cfg.n_ctx and gpt.config.vocab_size == cfg.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(gpt(ids), hf(ids).logits, atol=1e-4, rtol=0)


def test_pickle_checkpoints_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "openai-gpt"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="not unpickled"):
        GPT.from_pretrained(tmp_path)


def test_unknown_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        GPT.from_pretrained(tmp_path / "missing")


# --- the original OpenAI release -------------------------------------------------------------


def release_shapes(n_layer=12, d=768, n_ctx=512, n_vocab=40478) -> list[list[int]]:
    block = [
        [1, d, 3 * d],
        [3 * d],
        [1, d, d],
        [d],
        [d],
        [d],
        [1, d, 4 * d],
        [4 * d],
        [1, 4 * d, d],
        [d],
        [d],
        [d],
    ]
    return [[n_ctx, d], [n_vocab, d]] + block * n_layer


def write_release(d: Path, shapes, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s, dtype=np.float32) * 0.1 for s in shapes]
    (d / "params_shapes.json").write_text(json.dumps(shapes))
    for i, part in enumerate(np.array_split(np.concatenate([a.ravel() for a in arrays]), 10)):
        np.save(d / f"params_{i}.npy", part)
    return arrays


def test_release_shapes_match_the_released_file():
    if not SHARED_SHAPES.exists():
        pytest.skip(f"{SHARED_SHAPES} not present")
    assert release_shapes() == json.loads(SHARED_SHAPES.read_text())


def test_original_release_import_at_full_size(tmp_path):
    arrays = write_release(tmp_path, release_shapes())
    gpt = GPT.from_pretrained(tmp_path)
    cfg = gpt.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_ctx, cfg.vocab_size) == (12, 768, 512, 40481)
    sd = gpt.state_dict()
    assert torch.equal(sd["positions_embed.weight"], torch.from_numpy(arrays[0]))
    assert torch.equal(sd["tokens_embed.weight"][:40478], torch.from_numpy(arrays[1]))
    special = sd["tokens_embed.weight"][40478:]
    assert special.shape == (3, 768) and abs(special.std().item() - 0.02) < 0.003
    last = 2 + 11 * 12  # layer 11's arrays
    assert torch.equal(sd["h.11.attn.c_attn.weight"], torch.from_numpy(arrays[last][0]).T)
    assert torch.equal(sd["h.11.mlp.c_proj.bias"], torch.from_numpy(arrays[last + 9]))
    assert torch.equal(sd["h.11.ln_2.weight"], torch.from_numpy(arrays[last + 10]))
    # n_ctx truncates the position table, as the released train.py does
    assert GPT.from_pretrained(tmp_path, n_ctx=128).positions_embed.weight.shape == (128, 768)


def _released_forward(arrays, x, n_head, n_special):
    """The released train.py's forward pass, re-done in numpy (float64) for the comparison."""

    def ln(h, g, b):
        u = h.mean(-1, keepdims=True)
        s = ((h - u) ** 2).mean(-1, keepdims=True)
        return (h - u) / np.sqrt(s + 1e-5) * g + b

    def gelu(h):
        return 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))

    a = [v.astype(np.float64) for v in arrays]
    pos, tok = a[0], a[1]
    T = x.shape[1]
    h = tok[x] + pos[:T]  # special ids are not used in x
    d = tok.shape[1]
    for i in range((len(a) - 2) // 12):
        w = a[2 + 12 * i : 14 + 12 * i]
        qkv = h @ w[0][0] + w[1]
        q, k, v = np.split(qkv, 3, -1)
        q, k, v = (t.reshape(t.shape[0], T, n_head, d // n_head).transpose(0, 2, 1, 3) for t in (q, k, v))
        att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // n_head)
        causal = np.tril(np.ones((T, T)))
        att = att * causal - 1e9 * (1 - causal)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(h.shape)
        n = ln(h + (y @ w[2][0] + w[3]), w[4], w[5])
        m = gelu(n @ w[6][0] + w[7]) @ w[8][0] + w[9]
        h = ln(n + m, w[10], w[11])
    return h @ tok.T  # logits over the released vocabulary


def test_original_release_forward_matches_the_released_computation(tmp_path):
    arrays = write_release(tmp_path, release_shapes(n_layer=2, d=32, n_ctx=16, n_vocab=50), seed=4)
    gpt = GPT.from_pretrained(tmp_path, n_head=4, vocab_size=53).eval()
    x = np.random.default_rng(0).integers(0, 50, (2, 16))
    ref = _released_forward(arrays, x, n_head=4, n_special=3)
    got = gpt(torch.from_numpy(x))[..., :50].double().detach().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_release_with_missing_part_is_a_clear_error(tmp_path):
    write_release(tmp_path, release_shapes(n_layer=1, d=8, n_ctx=4, n_vocab=10))
    (tmp_path / "params_7.npy").unlink()
    with pytest.raises(FileNotFoundError, match="params_7.npy"):
        GPT.from_pretrained(tmp_path, n_head=2)


def test_npy_reader_refuses_other_dtypes(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.float64))
    with pytest.raises(ValueError, match="float32"):
        read_npy(tmp_path / "a.npy")
    np.save(tmp_path / "b.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert torch.equal(read_npy(tmp_path / "b.npy"), torch.arange(6.0).reshape(2, 3))


# --- gpt1 export -----------------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gpt1.cli", *args], cwd=ROOT, capture_output=True, text=True)


def test_export_converts_and_refuses_bad_input(tmp_path, ids):
    gpt = random_gpt()
    gpt.save_pretrained(tmp_path / "native")
    (tmp_path / "native" / "tokenizer.json").write_text("{}")
    r = run_cli("export", str(tmp_path / "native"), str(tmp_path / "hf"), "--format", "hf")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "openai-gpt"
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    torch.testing.assert_close(GPT.from_pretrained(tmp_path / "hf").eval()(ids), gpt(ids), atol=0, rtol=0)

    r = run_cli("export", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nope" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    r = run_cli("export", str(tmp_path / "native"), str(tmp_path / "hf"))
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_weights_that_do_not_fit_the_config_are_a_clear_error(tmp_path):
    random_gpt().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_layer": 3}))
    with pytest.raises(ValueError, match=r"asks for .* parameters \(3 x 32.* the weights hold"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_ctx": 32}))
    with pytest.raises(ValueError, match=r"asks for .* n_ctx 32, transformer\) but the weights hold"):
        GPT.from_pretrained(tmp_path)
    # As many parameters, in other shapes: the tensors are named.
    (tmp_path / "config.json").write_text(
        json.dumps({**cfg, "n_ctx": cfg["n_ctx"] + 16, "vocab_size": cfg["vocab_size"] - 16})
    )
    with pytest.raises(ValueError, match="do not fit the config.*size mismatch"):
        GPT.from_pretrained(tmp_path)
