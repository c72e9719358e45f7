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
without a field the task reads, is HTTP 400 with one line saying which; a bad row fails only its
own request, never the batch it shares with other clients. Every request is bounded: its body
(MAX_BODY_BYTES, 413), its rows (MAX_ROWS, 413), a multiple-choice row's candidates (the count
the model was fine-tuned on), and /generate's max_new_tokens x num_samples (MAX_GENERATED_TOKENS).
The model runs on a thread of its own, so /healthz answers while a batch runs.

Listening beyond loopback (--host 0.0.0.0) needs a bearer token (--token, or GPT1_SERVE_TOKEN):
every route but /healthz then wants `Authorization: Bearer TOKEN` (401 without it). Ctrl-C or
SIGTERM stops the application and the process cleanly, with status 130 or 143.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import signal
import threading
from pathlib import Path

from pipeline import cluster, env, errors
from pipeline.eval.generate import check, continuations
from pipeline.runtime import ray_init

GENERATE_KEYS = {"prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "num_samples"}
# The bounds of one request: what one client may ask of a replica that others share.
MAX_BODY_BYTES = 1 << 20
MAX_ROWS = 256
MAX_GENERATED_TOKENS = 4096  # max_new_tokens x num_samples
TOKEN_ENV = "GPT1_SERVE_TOKEN"


def generate_options(body: dict) -> argparse.Namespace:
    """/generate's body as `gpt1 generate`'s options, with its checks (pipeline/eval/generate.py):
    a ConfigError whose line names the key."""

    def number(key: str, default, whole: bool):
        value = body.get(key, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            raise errors.ConfigError(f"{key}: {value!r} is not {'a whole number' if whole else 'a number'}")
        return value

    opts = argparse.Namespace(
        max_new_tokens=number("max_new_tokens", 64, True),
        temperature=float(number("temperature", 1.0, False)),
        top_k=number("top_k", None, True),
        top_p=number("top_p", None, False),
        seed=number("seed", 0, True),
        num_samples=number("num_samples", 1, True),
    )
    try:
        check(opts)
    except errors.ConfigError as err:  # its words name the command's flags: name the JSON keys
        raise errors.ConfigError(re.sub(r"--([a-z-]+)", lambda m: m[1].replace("-", "_"), str(err))) from None
    if opts.max_new_tokens * opts.num_samples > MAX_GENERATED_TOKENS:
        raise errors.ConfigError(
            f"max_new_tokens x num_samples is {opts.max_new_tokens * opts.num_samples:,}; "
            f"at most {MAX_GENERATED_TOKENS:,} tokens a request"
        )
    return opts


def token_digest(token: str | None) -> str | None:
    """What a replica is handed of the token: its sha256, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reply(status: int, body):
    from starlette.responses import JSONResponse, PlainTextResponse

    return (
        PlainTextResponse(body + "\n", status_code=status)
        if isinstance(body, str)
        else JSONResponse(body, status)
    )


def endpoint():  # noqa: C901 (the sum of the replica class's methods, each well under the bound)
    """The Ray Serve replica class, made here so that Ray Serve (an optional extra) is imported
    only by `gpt1 serve` itself."""
    import asyncio

    from ray import serve

    from tuning.predict import label_rows

    class Endpoint:
        """A replica: the model loaded once; /predict rows batched across requests."""

        def __init__(
            self, files, device: str, max_batch_size: int, batch_wait_s: float, token_sha: str | None = None
        ):
            import tempfile
            from concurrent.futures import ThreadPoolExecutor

            import ray

            from tuning.finetune import is_finetune_output, load_task_model

            files = ray.get(files) if isinstance(files, ray.ObjectRef) else files
            self.tmp = tempfile.TemporaryDirectory(prefix="gpt1-serve-")
            d = Path(self.tmp.name)
            for name, data in files.items():
                (d / name).write_bytes(data)
            self.device, self.token_sha = device, token_sha
            # The model's work runs here, one batch at a time, off the event loop that answers
            # /healthz and takes the next requests.
            self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="gpt1-model")
            self.predict_batch.set_max_batch_size(max_batch_size)
            self.predict_batch.set_batch_wait_timeout_s(batch_wait_s)
            self.tm = self.gpt = None
            if is_finetune_output(d):
                from tuning.inputs import fields_of

                self.tm = load_task_model(d, device)
                self.fields = fields_of(self.tm.task.transformation)
            else:
                from pipeline.model_dir import load_model_and_tokenizer

                self.gpt, self.tok = load_model_and_tokenizer(d)
                self.gpt = self.gpt.to(device).eval()

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
        async def predict_batch(self, rows: list[dict]) -> list[tuple]:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self.model_thread, label_rows, self.tm, rows, self.fields, self.device
            )

        def authorized(self, request) -> bool:
            import hmac

            if self.token_sha is None:
                return True
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(
                token_digest(token.strip()) or "", self.token_sha
            )

        async def body_of(self, request) -> bytes | None:
            """The body, or None once it is larger than MAX_BODY_BYTES (read no further)."""
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                return None
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return None
            return bytes(body)

        async def __call__(self, request):
            """The answer, and its access line naming the real route (Serve's own would name
            the application's prefix, /, for every route): in Serve's log, hence the log file."""
            import logging
            import time

            start, path = time.perf_counter(), request.url.path.rstrip("/") or "/"
            response = await self.answer(request, path)
            logging.getLogger("ray.serve").info(
                f"{request.method} {path} {response.status_code} {(time.perf_counter() - start) * 1000:.1f}ms"
            )
            return response

        async def answer(self, request, path: str):
            if path == "/healthz" and request.method == "GET":
                return _reply(200, "ok")
            if not self.authorized(request):
                return _reply(401, "expected the header Authorization: Bearer TOKEN (gpt1 serve's --token)")
            if request.method != "POST" or path not in ("/predict", "/generate"):
                return _reply(
                    404, f"{request.method} {path}: expected GET /healthz, POST /predict or POST /generate"
                )
            raw = await self.body_of(request)
            if raw is None:
                return _reply(
                    413, f"the body is larger than {MAX_BODY_BYTES:,} bytes; send fewer rows a request"
                )
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as err:
                return _reply(400, f"the body is not JSON ({str(err).splitlines()[0]})")
            except RecursionError:
                return _reply(400, "the body is not JSON this server reads (nested too deeply)")
            if path == "/generate":
                return await self.generate(body)
            if self.tm is None:
                return _reply(400, "this model is a language model, not a fine-tuned one: POST /generate")
            rows = body if isinstance(body, list) else [body]
            if not rows or not all(isinstance(r, dict) for r in rows):
                return _reply(
                    400,
                    f"expected a JSON object of the task's fields ({', '.join(self.fields)}) or a list of them",
                )
            if len(rows) > MAX_ROWS:
                return _reply(413, f"{len(rows):,} rows; at most {MAX_ROWS} a request")
            answers = await asyncio.gather(*(self.predict_batch(r) for r in rows))
            bad = next(((i, e) for i, (_, e) in enumerate(answers) if e), None)
            if bad:
                return _reply(400, f"row {bad[0]}: {bad[1]}" if isinstance(body, list) else bad[1])
            out = [
                {"label": p.label, **({"probabilities": p.probabilities} if p.probabilities else {})}
                for p, _ in answers
            ]
            return _reply(200, out if isinstance(body, list) else out[0])

        async def generate(self, body):

            if self.gpt is None:
                return _reply(400, "this model is fine-tuned for a task: POST /predict")
            if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
                return _reply(400, 'expected {"prompt": TEXT, ...}')
            unknown = sorted(set(body) - GENERATE_KEYS)
            if unknown:
                return _reply(400, f"unknown key {unknown[0]!r}; expected {', '.join(sorted(GENERATE_KEYS))}")
            try:
                body["prompt"].encode("utf-8")
                o = generate_options(body)
            except UnicodeEncodeError as err:
                return _reply(400, f"prompt is not valid Unicode (character {err.start} is a lone surrogate)")
            except errors.ConfigError as err:
                return _reply(400, str(err))
            args = (body["prompt"], o.max_new_tokens, o.temperature, o.top_k, o.top_p, o.seed, o.num_samples)
            try:
                texts = await asyncio.get_running_loop().run_in_executor(
                    self.model_thread, continuations, self.gpt, self.tok, *args, self.device
                )
            except errors.UserError as err:
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
        logging_config={"enable_access_log": False},  # the replica writes its own (Endpoint.__call__)
        **scaling,
    )
    return deployment.bind(
        files, device, opts.max_batch_size, opts.batch_wait_ms / 1000, token_digest(opts.token)
    )


def run(args: argparse.Namespace) -> None:
    import ray

    from tuning.predict import check_model, model_dir

    if not 1 <= args.min_replicas <= args.max_replicas or args.max_batch_size < 1 or args.batch_wait_ms < 0:
        raise errors.ConfigError(
            "--min-replicas / --max-replicas: expected 1 <= MIN <= MAX; --max-batch-size >= 1; --batch-wait-ms >= 0"
        )
    args.token = args.token or env.serve_token()
    check_listen(args.host, args.port, args.token)
    try:
        from ray import serve
    except ImportError as err:
        raise errors.ConfigError(
            f'gpt1 serve needs Ray Serve ({err}); install it with pip install -e ".[serve]"'
        ) from None
    with model_dir(args.model) as d:
        if not (d / "config.json").is_file():
            raise errors.ConfigError(f"--model {args.model}: holds no model (config.json)")
        check_model(d, f"--model {args.model}")
        files = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    ray_init()
    device = "cuda" if cluster.wants_gpus("auto") else "cpu"
    stop = threading.Event()

    def stopping(signum, frame):
        errors.note_signal(signum)  # exit 130 or 143 once stopped, as a shell reports it
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stopping)
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
    raise errors.Interrupted("stopped")


def check_listen(host: str, port: int, token: str | None) -> None:
    """Before Ray starts: a port that exists and is free, and a token wherever others can reach it."""
    import socket

    if not 1 <= port <= 65535:
        raise errors.ConfigError(f"--port {port}: expected a port from 1 to 65535")
    if not is_loopback(host) and not token:
        raise errors.ConfigError(
            f"--host {host}: listening beyond this machine needs a bearer token; pass --token or set "
            f"{TOKEN_ENV} (clients then send Authorization: Bearer TOKEN), or use --host 127.0.0.1"
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise errors.ConfigError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server binds it
        try:
            sock.bind(addr)
        except OSError as err:
            raise errors.ConfigError(
                f"--port {port}: cannot listen on {host}:{port} ({err.strerror}); choose another --port"
            ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="as gpt1 predict takes it, or a language-model checkpoint")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1; 0.0.0.0: every interface, with --token)",
    )
    p.add_argument("--port", type=int, default=8000, help="the HTTP port (default 8000)")
    p.add_argument(
        "--token",
        help=f"a bearer token every request but /healthz must carry; needed beyond loopback "
        f"(default: ${TOKEN_ENV}, else none)",
    )
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
