"""bench/gpu_check.py in its CPU mode, as the GPU machine runs it: with no Ray, MLflow, ftfy or
spaCy importable, so the GPU check never rots where no GPU is."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Make each of these unimportable (an ImportError at `import ray`), as on the GPU machine.
BLOCK = "import sys; sys.modules.update({m: None for m in ('ray', 'mlflow', 'ftfy', 'spacy')}); "


@pytest.mark.slow
def test_gpu_check_runs_without_ray_or_mlflow():
    code = (
        BLOCK + "import runpy; sys.argv = ['bench/gpu_check.py', '--device', 'cpu', '--quick']; "
        "runpy.run_path('bench/gpu_check.py', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("| section | check |") :]
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert {r[0].lstrip("| ")[0] for r in rows} == set("123456789")
    assert not [r for r in rows if "FAIL" in r[-1]]
    resume = next(r for r in rows if "resume at step" in r[1])
    assert "largest loss difference 0.00e+00" in resume[2]
    assert sum(r[0] == "| 4 fine-tuning" for r in rows) == 4  # one per input transformation
    # gpt1's table ran at each micro-batch, the DDP path kept the plain path's losses, generation
    # gave the same tokens with and without the cache, and bucketed fine-tuning ran.
    assert sum("micro-batch" in r[1] and "tok/s" in r[2] for r in rows) == 2
    assert any("DDP on 1 rank" in r[1] and r[-1].strip(" |") == "ok" for r in rows)
    assert sum("the cache's tokens equal" in r[1] and "True" in r[2] for r in rows) == 2
    assert any("64-token buckets" in r[1] for r in rows)
