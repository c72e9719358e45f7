"""gpt1 serve: a fine-tuned model answers a real HTTP client on loopback (one row, a list, bad
JSON and a missing field as 400 with one line), a language model answers /generate, and the
process stops cleanly on SIGTERM."""

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_pretrain_job import free_port

from pipeline.data.tasks import get
from tuning.finetune import FinetuneConfig, finetune, load_task_model, predict

pytestmark = pytest.mark.slow  # Ray Serve: a minute

ROOT = Path(__file__).resolve().parent.parent


def call(
    port: int, path: str, body=None, raw: bytes | None = None, token: str | None = None
) -> tuple[int, object]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method="POST" if data else "GET",
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if r.headers.get_content_type() == "application/json" else text
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def announce_oversized(port: int, path: str, length: int, token: str) -> tuple[int, str]:
    """The answer to a request whose headers announce `length` bytes of body, before any is sent.

    The server answers 413 from the headers alone and closes without reading a body: a client
    still sending one races that close (EPIPE, or a reset that loses the answer), so none is sent.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


class Server:
    """`gpt1 serve` in a process of its own, stopped (SIGTERM) when the block ends."""

    def __init__(self, model, tmp_path: Path, *extra: str):
        self.port, self.log = free_port(), tmp_path / f"serve-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gpt1.cli", "serve", "--model", str(model), "--port", str(self.port)]
                + list(extra),
                cwd=tmp_path,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
            )

    def __enter__(self):
        deadline = time.time() + 180
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if call(self.port, "/healthz") == (200, "ok\n"):
                    return self
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.time() < deadline, self.log.read_text()[-3000:]
            time.sleep(1)

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout=90)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="module")
def fine_tuned(task_checkpoint, sst2, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "model"
    finetune(
        get("sst-2"), sst2, task_checkpoint, FinetuneConfig(lr=2e-3, batch_size=16, max_steps=30), out=out
    )
    return out


def test_serve_answers_http_clients_and_stops_on_sigterm(fine_tuned, task_checkpoint, sst2, tmp_path):
    from functools import partial

    from tuning.serve import MAX_BODY_BYTES, MAX_ROWS

    dev = get("sst-2").load(sst2, "dev")[:6]
    tm = load_task_model(fine_tuned)
    want = [tm.task.labels[int(i)] for i in predict(tm, tm.encoder.encode(dev))]
    with Server(fine_tuned, tmp_path, "--token", "s3cret") as server:
        assert call(server.port, "/predict", {"sentence": "fine"})[0] == 401  # no token
        assert call(server.port, "/predict", {"sentence": "fine"}, token="wrong")[0] == 401
        ask = partial(call, token="s3cret")  # every request below carries the token
        status, one = ask(server.port, "/predict", {"sentence": dev[0].text[0]})
        assert (
            status == 200
            and one["label"] == want[0]
            and sum(one["probabilities"]) == pytest.approx(1, abs=1e-5)
        )
        status, many = ask(server.port, "/predict", [{"sentence": e.text[0]} for e in dev])
        assert status == 200 and [r["label"] for r in many] == want  # the model's own labels
        status, text = ask(server.port, "/predict", raw=b'{"sentence": ')
        assert status == 400 and text.startswith("the body is not JSON") and text.count("\n") == 1
        status, text = ask(server.port, "/predict", [{"sentence": "fine"}, {"text": "x"}])
        assert (status, text) == (400, "row 1: no 'sentence'\n")
        assert ask(server.port, "/generate", {"prompt": "the"})[0] == 400
        # Text of control characters only is empty, not a sentence to label.
        assert ask(server.port, "/predict", {"sentence": "\u0000\u0001 "}) == (
            400,
            "'sentence' is empty (control characters only)\n",
        )
        # One client's bad row fails its own request only, never the batch it shares with others.
        good = {"sentence": dev[0].text[0]}
        bodies = [good] * 24 + [{"sentence": "\ud800"}] + [good] * 24
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: ask(server.port, "/predict", b), bodies))
        assert answers[24][0] == 400 and "lone surrogate" in answers[24][1], answers[24]
        others = answers[:24] + answers[25:]
        assert all(a[0] == 200 and a[1]["label"] == one["label"] for a in others), [
            a for a in others if a[0] != 200
        ][:3]
        # Every request is bounded: rows, and the body's bytes.
        status, text = ask(server.port, "/predict", [good] * (MAX_ROWS + 1))
        assert status == 413 and f"at most {MAX_ROWS}" in text
        status, text = announce_oversized(server.port, "/predict", MAX_BODY_BYTES + 1, "s3cret")
        assert status == 413 and "larger than" in text
        assert ask(server.port, "/predict", raw=b"[" * 100_000)[0] == 400  # nested too deeply
        assert call(server.port, "/healthz") == (200, "ok\n")  # a load balancer's, no token
        # The model runs off the event loop: /healthz answers while batches are being labelled.
        long = {"sentence": " ".join(["a fine and moving film"] * 12)}
        with ThreadPoolExecutor(8) as pool:
            busy = [pool.submit(ask, server.port, "/predict", [long] * MAX_ROWS) for _ in range(6)]
            time.sleep(0.2)
            health = call(server.port, "/healthz")
            pending = sum(not b.done() for b in busy)
            assert all(b.result()[0] == 200 for b in busy)
        assert health == (200, "ok\n") and pending > 0, pending
    console = server.log.read_text()
    assert server.returncode == 143 and "serve: stopped" in console
    # Ray Serve's own lines go to the log file, not the console; its access lines name the route.
    assert " INFO " not in console and "Deploying new version" not in console, console[-3000:]
    (log,) = (tmp_path / "logs").glob("serve-*.log")
    assert "POST /predict 200 " in log.read_text() and "GET /healthz 200 " in log.read_text()

    # A language model: /generate, with gpt1 generate's options.
    with Server(task_checkpoint, tmp_path) as server:
        status, out = call(
            server.port, "/generate", {"prompt": "the film", "max_new_tokens": 5, "num_samples": 2}
        )
        assert status == 200 and len(out["texts"]) == 2
        assert call(server.port, "/generate", {"prompt": "x", "beams": 3}) == (
            400,
            "unknown key 'beams'; expected max_new_tokens, num_samples, prompt, seed, temperature, top_k, top_p\n",
        )
        # gpt1 generate's checks, and a bound on the tokens one request asks for.
        for bad, words in (
            ({"temperature": -1}, "temperature -1.0: expected a finite number >= 0"),
            ({"temperature": "nan"}, "temperature: 'nan' is not a number"),
            ({"top_p": 2}, "top_p 2: expected a probability in (0, 1]"),
            ({"top_k": -1}, "top_k -1: expected at least 1"),
            ({"max_new_tokens": -5}, "max_new_tokens and num_samples: expected at least 1"),
            ({"num_samples": 0}, "max_new_tokens and num_samples: expected at least 1"),
            ({"max_new_tokens": 1000, "num_samples": 1500}, "at most 4,096 tokens a request"),
        ):
            status, text = call(server.port, "/generate", {"prompt": "the", **bad})
            assert status == 400 and words in text and text.count("\n") == 1, (bad, status, text)
    assert server.returncode == 143
