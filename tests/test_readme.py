"""The README's commands, as a user types them in a fresh clone: every command of its bash blocks
is run here, in order, or names the test that runs it (or why CI cannot).

The only changes to what a user types: the one `curl` download is replaced by a file of the same
name that the test makes (1 MB of generated text); the README's placeholders (runs/NAME/...,
CKPT, s3://bucket, path/to/gpt1-vocab) become what the earlier commands made, a moto bucket and a
vocabulary in the released format; the data the README assumes (books/*.txt, glue/SST-2, glue/RTE,
data/reviews, held-out/*.txt) is generated; and sizes are shrunk by options appended to the line
(SHRINK; a later flag wins in argparse), so that the line itself stays the README's.
"""

import gzip
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from corpus_gen import documents, released_vocabulary, reviews, write_sst2
from test_runbook import runbook_lines

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The reference pages the README links, in the order a user reads them: their commands run after
# the README's, in this order, as the README's sections did when they held them.
DOCS = [
    ROOT / "docs" / f"{p}.md"
    for p in ("prepare", "pretrain", "finetune", "sweep", "serve", "paper", "evaluate", "faults")
]
VENV = Path(sys.executable).parent.parent

# Commands run by another test, or that CI cannot run, and why.
ELSEWHERE = {
    "bash .ci/setup && .venv/bin/gpt1 demo": "CI runs .ci/setup; tests/test_demo.py runs the demo at --size ci",
    "bash .ci/setup && .venv/bin/python -m pytest -q tests": "CI's own command",
    "ray start --head": "tests/test_pretrain_job.py starts a head and submits this job",
    "export RAY_AUTH_MODE=token": "tests/test_pretrain_job.py",
    "ray job submit": "tests/test_pretrain_job.py",
    "gpt1 serve": "tests/test_serve.py serves a fine-tuned model and a language model on loopback",
    "curl -s -X POST http://127.0.0.1:8000/predict": "tests/test_serve.py sends these requests",
    "gpt1 predict": "tests/test_predict.py runs predict on a fine-tuned model, a models:/ URI and S3",
    "--checkpoint openai-community/openai-gpt": "downloads the released GPT-1 from the Hugging Face Hub: no network in CI",
}
# Options appended to a command that starts so, to fit two CPU cores.
SHRINK = {
    ".venv/bin/gpt1 demo --workdir mydemo": "--size ci",
    # A vocabulary of 40,000 merges is learnt in 20-40 s on 1 MB; 2,000 show the same path.
    ".venv/bin/gpt1 prepare --corpus tinyshakespeare.txt --out data/shakespeare": "--set n_merges=2000",
    ".venv/bin/gpt1 pretrain": "--set max_steps=30 --set eval_every=10 --set eval_blocks=8",
    ".venv/bin/gpt1 finetune": "--set epochs=1",
    ".venv/bin/gpt1 sweep --task sst-2": "--samples 2 --set epochs=1",
    ".venv/bin/gpt1 sweep --task glue": "--samples 1 --set epochs=1",
    ".venv/bin/gpt1 evaluate --checkpoint runs/": "--stride 32",  # the window of the tiny model here: 64
}
BUCKET = "gpt1-test"  # the s3 fixture's


def readme_commands() -> list[str]:
    return [line for page in (README, *DOCS) for line in runbook_lines(page.read_text())]


def test_the_readme_is_short_and_links_every_reference_page():
    text = README.read_text()
    assert len(text.splitlines()) < 200
    for page in DOCS:
        assert f"](docs/{page.name})" in text, page.name
    assert sorted((ROOT / "docs").glob("*.md")) == sorted([*DOCS, ROOT / "docs" / "whats-here.md"])


def elsewhere(line: str) -> str | None:
    return next((why for start, why in ELSEWHERE.items() if line.startswith(start) or start in line), None)


def test_every_readme_command_runs_here_or_names_where_it_runs():
    lines = readme_commands()
    assert len(lines) >= 15
    for line in lines:
        argv = shlex.split(line, comments=True)
        assert (
            elsewhere(line)
            or argv[0] == "curl"
            or argv[0].startswith(".venv/bin/")
            or line.startswith("bash .ci/setup")
        ), f"a README command this test neither runs nor names: {line}"
    # Every exception still names a line of the README: none is stale.
    for start in ELSEWHERE:
        assert any(line.startswith(start) or start in line for line in lines), start
    for start in SHRINK:
        assert any(line.startswith(start) for line in lines), start


def write_inputs(work: Path) -> None:
    """The data the README's commands assume, made here."""
    text = "\n\n".join(documents(9000, seed=21)) + "\n"
    (work / "tinyshakespeare.txt").write_text((text * (1 + 1_000_000 // len(text)))[:1_000_000])
    books = work / "books"
    books.mkdir()
    for i in range(3):
        (books / f"book{i}.txt").write_text("\n\n".join(documents(300, seed=30 + i)) + "\n")
    held = work / "held-out"
    held.mkdir()
    (held / "a.txt").write_text("\n\n".join(documents(40, seed=40)) + "\n")
    glue = work / "glue"
    (glue / "SST-2").mkdir(parents=True)
    write_sst2(glue / "SST-2", n_train=120, n_dev=60, n_test=20)
    (glue / "RTE").mkdir()
    for split, n, seed in (("train", 120, 50), ("dev", 60, 51)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        for i, ((a, ya), (b, yb)) in enumerate(zip(reviews(n, seed), reviews(n, seed + 100), strict=True)):
            rows.append(f"{i}\t{a}\t{b}\t{'entailment' if ya == yb else 'not_entailment'}")
        (glue / "RTE" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    reviews_dir = work / "data" / "reviews"
    reviews_dir.mkdir(parents=True)
    for split, n, seed in (("train", 120, 60), ("dev", 60, 61)):
        rows = [json.dumps({"text": s, "stars": "good" if y == "1" else "bad"}) for s, y in reviews(n, seed)]
        (reviews_dir / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    (reviews_dir / "task.yaml").write_text(
        "transformation: classification\ntext_columns: [text]\nlabel_column: stars\n"
        "labels: [bad, good]\nfiles: {train: train.jsonl, dev: dev.jsonl}\n"
    )
    released_vocabulary(work / "path" / "to" / "gpt1-vocab")


def put_books_in_the_bucket(s3) -> None:
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=s3["AWS_ENDPOINT_URL"].split("//")[1], scheme="http")
    for i in range(2):
        # Compressed here, as a user's gzip would: pyarrow would otherwise compress it again (.gz).
        with fs.open_output_stream(f"{BUCKET}/books/b{i}.txt.gz", compression=None) as f:
            f.write(gzip.compress(("\n\n".join(documents(200, seed=70 + i)) + "\n").encode()))


def newest_checkpoint(work: Path) -> str:
    (run,) = [
        p for p in (work / "runs").iterdir() if p.is_dir() and not p.name.startswith(("sweep-", "ablations-"))
    ]
    return str(max(run.glob("checkpoint_0*")))


def filled_in(line: str, work: Path) -> str:
    """The README's placeholders, as the user fills them in, and the options that shrink it."""
    extra = next((opts for start, opts in SHRINK.items() if line.startswith(start)), "")
    line = line.replace("s3://bucket/", f"s3://{BUCKET}/")
    if "runs/NAME/checkpoint_000001000" in line or "--checkpoint CKPT" in line:
        ckpt = newest_checkpoint(work)
        line = line.replace("runs/NAME/checkpoint_000001000", ckpt).replace(
            "--checkpoint CKPT", f"--checkpoint {ckpt}"
        )
    # Before a trailing comment, or bash would take the options for part of it.
    command, comment = (re.split(r"\s+(?=#\s)", line, maxsplit=1) + [""])[:2]
    return f"{command} {extra} {comment}".strip()


def check_mlflow_ui(line: str, work: Path, env: dict) -> None:
    """The UI command as written, on a free port: it serves the runs' store."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = line.split("#")[0].strip() + f" --port {port}"
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                assert time.time() < deadline, "mlflow ui did not answer in 90 s"
                time.sleep(1)
        assert b"<html" in page.lower()
        body = json.dumps({"max_results": 50}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        names = {
            e["name"] for e in json.loads(urllib.request.urlopen(request, timeout=10).read())["experiments"]
        }
        assert {"gpt1-prepare", "gpt1-pretrain", "gpt1-finetune-sst-2", "gpt1-evaluate"} <= names, names
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_the_readme_commands_run_in_a_fresh_directory_as_written(tmp_path, s3):
    work = tmp_path / "clone"
    work.mkdir()
    (work / ".venv").symlink_to(VENV)
    write_inputs(work)
    put_books_in_the_bucket(s3)
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "GPT1_STORAGE")
    }
    env["PYTHONPATH"] = str(ROOT)
    ran: dict[str, str] = {}  # command -> its console
    ui = None
    for line in readme_commands():
        if elsewhere(line) or line.startswith("bash .ci/setup"):
            continue
        if line.startswith("curl "):  # its file is made by write_inputs
            assert shlex.split(line)[3] == "tinyshakespeare.txt"
            continue
        if line.startswith(".venv/bin/mlflow ui"):
            ui = line  # run last, when the store holds the runs
            continue
        command = filled_in(line, work)
        proc = subprocess.run(
            ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        ran[command] = console = proc.stdout + proc.stderr
        assert "Traceback" not in console, f"{command}\n{console[-3000:]}"
    assert len(ran) >= 9, ran
    assert ui is not None
    check_mlflow_ui(ui, work, env)
    # What the commands were to make.
    for d in ("data/shakespeare", "data/shakespeare-64"):
        assert json.loads((work / d / "manifest.json").read_text())["splits"]["train"]["tokens"] > 0
    assert json.loads((work / "finetuned-sst2" / "task.json").read_text())["task"] == "sst-2"
    (demo,) = [out for command, out in ran.items() if " demo " in command]
    for task, transformation in (
        ("sst-2", "classification"),
        ("rte", "entailment"),
        ("reviews", "classification"),
    ):
        assert f"| {task} | {transformation} |" in demo, demo[-3000:]
    # Without --lstm and --seeds, the ending names both, and the table has no LSTM column.
    assert "Left out to save time: Table 5's LSTM row (--lstm) and each row's spread over seeds" in demo
    assert "| λ = 0 |\n" in demo and "| LSTM |" not in demo.split("From the report")[0]
    # The options that shrink a line reach the command, a trailing comment or not.
    (glue,) = [out for command, out in ran.items() if " sweep --task glue " in command]
    assert "sweep sst-2: 1 trial(s)" in glue and "sweep rte: 1 trial(s)" in glue, glue[-3000:]
    (evaluation,) = [out for command, out in ran.items() if " evaluate " in command]
    assert "bits per byte" in evaluation, evaluation[-2000:]
