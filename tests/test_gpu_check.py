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
    assert {r[0].lstrip("| ")[0] for r in rows} == {"1", "2", "3", "4", "5", "6"}
    assert not [r for r in rows if "FAIL" in r[-1]]
    resume = next(r for r in rows if "resume at step" in r[1])
    assert "largest loss difference 0.00e+00" in resume[2]
    assert sum("fine-tuning" in r[0] for r in rows) == 4  # one per input transformation
