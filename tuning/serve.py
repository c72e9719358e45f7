"""Stage: a model behind an HTTP endpoint, on Ray Serve (`pip install -e ".[serve]"`).

    gpt1 serve --model M [--port 8000] [--min-replicas 1] [--max-replicas 1] [--max-batch-size 16]

M is what `gpt1 predict` takes (a fine-tuned model directory, models:/NAME/VERSION,
models:/NAME@champion, runs:/ID/model, s3://), or a language-model checkpoint.

    GET  /healthz     200 "ok" once a replica holds the model
    POST /predict     a fine-tuned model: the task's fields as JSON ({"sentence": ...};
                      {"premise": ..., "hypothesis": ...}; {"context": ..., "candidates": [...]})
                      or a list of them; answers {"label": ..., "probabilities": [...]} (for
                      regression {"label": score}), or a list of those
    POST /generate    a language-model checkpoint: {"prompt": ..., "max_new_tokens": 64,
                      "temperature": 1.0, "top_k": null, "top_p": null, "seed": 0,
                      "num_samples": 1}, as `gpt1 generate` takes them; answers {"texts": [...]}

Requests are batched across clients (`@serve.batch`, --max-batch-size, --batch-wait-ms) and
encoded with the task's transformation exactly as fine-tuning did (tuning/predict.label_rows).
Replicas autoscale between --min-replicas and --max-replicas. A body that is not JSON, or a row
without a field the task reads, is HTTP 400 with one line saying which. Ctrl-C or SIGTERM stops
the application and the process cleanly.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

from pipeline import errors

GENERATE_KEYS = {"prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "num_samples"}


def _reply(status: int, body):
    from starlette.responses import JSONResponse, PlainTextResponse

    return (
        PlainTextResponse(body + "\n", status_code=status)
        if isinstance(body, str)
        else JSONResponse(body, status)
    )


def endpoint():
    """The Ray Serve replica class, made here so that Ray Serve (an optional extra) is imported
    only by `gpt1 serve` itself."""
    import asyncio

    from ray import serve

    from tuning.predict import label_rows

    class Endpoint:
        """A replica: the model loaded once; /predict rows batched across requests."""

        def __init__(self, files, device: str, max_batch_size: int, batch_wait_s: float):
            import tempfile

            import ray

            from tuning.finetune import is_finetune_output, load_task_model

            files = ray.get(files) if isinstance(files, ray.ObjectRef) else files
            self.tmp = tempfile.TemporaryDirectory(prefix="gpt1-serve-")
            d = Path(self.tmp.name)
            for name, data in files.items():
                (d / name).write_bytes(data)
            self.device = device
            self.predict_batch.set_max_batch_size(max_batch_size)
            self.predict_batch.set_batch_wait_timeout_s(batch_wait_s)
            self.tm = self.gpt = None
            if is_finetune_output(d):
                from tuning.inputs import fields_of

                self.tm = load_task_model(d, device)
                self.fields = fields_of(self.tm.task.transformation)
            else:
                from pipeline.train.checkpoint import load_model_and_tokenizer

                self.gpt, self.tok = load_model_and_tokenizer(d)
                self.gpt = self.gpt.to(device).eval()

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
        async def predict_batch(self, rows: list[dict]) -> list[tuple]:
            return label_rows(self.tm, rows, self.fields, self.device)

        async def __call__(self, request):
            path = request.url.path.rstrip("/") or "/"
            if path == "/healthz" and request.method == "GET":
                return _reply(200, "ok")
            if request.method != "POST" or path not in ("/predict", "/generate"):
                return _reply(
                    404, f"{request.method} {path}: expected GET /healthz, POST /predict or POST /generate"
                )
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError) as err:
                return _reply(400, f"the body is not JSON ({str(err).splitlines()[0]})")
            if path == "/generate":
                return self.generate(body)
            if self.tm is None:
                return _reply(400, "this model is a language model, not a fine-tuned one: POST /generate")
            rows = body if isinstance(body, list) else [body]
            if not rows or not all(isinstance(r, dict) for r in rows):
                return _reply(
                    400,
                    f"expected a JSON object of the task's fields ({', '.join(self.fields)}) or a list of them",
                )
            answers = await asyncio.gather(*(self.predict_batch(r) for r in rows))
            bad = next(((i, e) for i, (_, e) in enumerate(answers) if e), None)
            if bad:
                return _reply(400, f"row {bad[0]}: {bad[1]}" if isinstance(body, list) else bad[1])
            out = [
                {"label": p.label, **({"probabilities": p.probabilities} if p.probabilities else {})}
                for p, _ in answers
            ]
            return _reply(200, out if isinstance(body, list) else out[0])

        def generate(self, body):
            from pipeline.eval.generate import continuations

            if self.gpt is None:
                return _reply(400, "this model is fine-tuned for a task: POST /predict")
            if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
                return _reply(400, 'expected {"prompt": TEXT, ...}')
            unknown = sorted(set(body) - GENERATE_KEYS)
            if unknown:
                return _reply(400, f"unknown key {unknown[0]!r}; expected {', '.join(sorted(GENERATE_KEYS))}")
            try:
                texts = continuations(
                    self.gpt,
                    self.tok,
                    body["prompt"],
                    int(body.get("max_new_tokens", 64)),
                    float(body.get("temperature", 1.0)),
                    body.get("top_k"),
                    body.get("top_p"),
                    int(body.get("seed", 0)),
                    int(body.get("num_samples", 1)),
                    self.device,
                )
            except (errors.UserError, ValueError, TypeError) as err:
                return _reply(400, str(err).splitlines()[0])
            return _reply(200, {"texts": [t for t, _ in texts]})

    return Endpoint


def application(files, device: str, opts: argparse.Namespace):
    """The Ray Serve application: the replica class, batched and scaled as opts says."""
    from ray import serve

    scaling = (
        {"autoscaling_config": {"min_replicas": opts.min_replicas, "max_replicas": opts.max_replicas}}
        if opts.max_replicas > opts.min_replicas
        else {"num_replicas": opts.min_replicas}
    )
    gpus = 1 if device == "cuda" else 0
    # A replica holds at most max_ongoing_requests at once (Serve's default is 5), so a batch can
    # fill only if that is at least max_batch_size; twice it, so one batch fills while one runs.
    deployment = serve.deployment(
        endpoint(),
        name="gpt1",
        ray_actor_options={"num_gpus": gpus, "num_cpus": 1},
        max_ongoing_requests=max(5, 2 * opts.max_batch_size),
        **scaling,
    )
    return deployment.bind(files, device, opts.max_batch_size, opts.batch_wait_ms / 1000)


def run(args: argparse.Namespace) -> None:
    import ray

    from pipeline import cluster
    from pipeline.runtime import ray_init
    from tuning.predict import model_dir

    if not 1 <= args.min_replicas <= args.max_replicas or args.max_batch_size < 1 or args.batch_wait_ms < 0:
        raise errors.ConfigError(
            "--min-replicas / --max-replicas: expected 1 <= MIN <= MAX; --max-batch-size >= 1; --batch-wait-ms >= 0"
        )
    try:
        from ray import serve
    except ImportError as err:
        raise errors.ConfigError(
            f'gpt1 serve needs Ray Serve ({err}); install it with pip install -e ".[serve]"'
        ) from None
    with model_dir(args.model) as d:
        if not (d / "config.json").is_file():
            raise errors.ConfigError(f"--model {args.model}: holds no model (config.json)")
        files = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    ray_init()
    device = "cuda" if cluster.wants_gpus("auto") else "cpu"
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(application(ray.put(files), device, args), name="gpt1", route_prefix="/", blocking=False)
    print(
        f"serving {args.model} at http://{args.host}:{args.port} (/predict, /generate, /healthz); Ctrl-C stops it",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        serve.shutdown()
        print("serve: stopped", flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="as gpt1 predict takes it, or a language-model checkpoint")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1; 0.0.0.0: every interface)",
    )
    p.add_argument("--port", type=int, default=8000, help="the HTTP port (default 8000)")
    p.add_argument("--min-replicas", type=int, default=1, help="replicas at least (default 1)")
    p.add_argument(
        "--max-replicas", type=int, default=1, help="autoscale up to this many replicas (default 1)"
    )
    p.add_argument(
        "--max-batch-size", type=int, default=16, help="requests batched into one forward pass (default 16)"
    )
    p.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default 5)"
    )


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("serve", __doc__, add_arguments, run, argv)
