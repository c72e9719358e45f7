"""Stage: a fine-tuned model's predictions on new rows, on Ray Data.

    gpt1 predict --model M --input PATH [PATH ...] --out PATH [--columns A,B]
                 [--on-bad-row error|skip|fail] [--actors N] [--gpus-per-actor G]

M is a fine-tuned model directory (gpt1 finetune's --out, a sweep's registered model), an MLflow
model URI (models:/gpt1-sst-2/3, models:/gpt1-sst-2@champion, runs:/<id>/model) or a URI on
object storage. The inputs are TSV, CSV (each with a header line), JSON Lines or Parquet, by
their extension, local or on object storage; their columns are the task's fields
(tuning/inputs.py: sentence; premise, hypothesis; sentence1, sentence2; context, candidates) or
those --columns names. Ray Data reads them; a pool of actors, each loading the model once (a
GPU, or a fraction of one, each where the cluster has GPUs; CPUs otherwise), encodes every row
with the task's transformation exactly as fine-tuning did (tuning/encode.py) and runs the model.

The output (Parquet, JSON Lines, CSV or TSV by --out's extension) keeps every input column, in
input order, one row per input row, and adds `label` (the label; for regression the score; for
multiple choice the chosen candidate's index) and the probabilities: a `p_<label>` column per
class, or a `probabilities` list per candidate. A row the transformation cannot read (a missing
or empty field) gets its reason in an `error` column (--on-bad-row error, the default), is left
out and counted (skip), or stops the run with its file and line (fail). The output is written
beside its place and moved there whole: nothing half-written is left.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from pathlib import Path

from pipeline import errors, remote

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
BATCH = 64  # rows an actor encodes and runs at a time
READ_CPUS = 0.5  # what each read task of the inputs reserves


def format_of(path: str, option: str) -> str:
    suffix = Path(str(path).rstrip("/")).suffix.lower()
    if suffix not in FORMATS:
        raise errors.ConfigError(
            f"{option} {path}: expected a .tsv, .csv, .jsonl (or .json, JSON Lines) or .parquet file"
        )
    return FORMATS[suffix]


@contextlib.contextmanager
def model_dir(spec: str):
    """The model as a local directory: itself, a copy from object storage, or an MLflow model."""
    if str(spec).startswith(("models:/", "runs:/")):
        import mlflow

        from pipeline.tracking import tracking_uri

        # The store named per call: mlflow.set_tracking_uri would change it for the whole process.
        uri = tracking_uri()
        with tempfile.TemporaryDirectory(prefix="gpt1-model-") as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(
                    artifact_uri=spec, dst_path=tmp, tracking_uri=uri, registry_uri=uri
                )
            except Exception as err:  # MLflow's errors for an unknown name, version or alias
                raise errors.ConfigError(f"--model {spec}: {str(err).splitlines()[0]}") from None
            yield Path(path)
        return
    with remote.fetched(spec, "a fine-tuned model directory") as d:
        yield d


@contextlib.contextmanager
def damaged_model(what: str):
    """Loading a model directory: what a damaged one raises (truncated weights, a corrupt
    task.json or config.json, a head of the wrong shape) as one UserError naming what."""
    from safetensors import SafetensorError

    try:
        yield
    except errors.UserError:
        raise
    except (ValueError, KeyError, TypeError, OSError, RuntimeError, SafetensorError) as err:
        first = (str(err).splitlines() or [""])[0][:200]
        raise errors.UserError(
            f"{what}: a damaged model directory ({type(err).__name__}: {first}); copy or export it again"
        ) from None


def check_model(d: Path, what: str) -> None:
    """Load the model once in this process, before Ray starts: a damaged one is one line naming
    --model, not a replica's traceback naming its temporary copy."""
    from tuning.finetune import is_finetune_output, load_task_model

    if is_finetune_output(d):
        with damaged_model(what):
            load_task_model(d, "cpu")
    else:
        from pipeline.train.checkpoint import load_model_and_tokenizer

        with damaged_model(what):
            load_model_and_tokenizer(d)


def read(paths: list[str]):
    """The inputs as one Ray Dataset, every CSV / TSV cell as text (no number guessed from a
    sentence)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import ray.data

    kinds = {format_of(p, "--input") for p in paths}
    if len(kinds) > 1:
        raise errors.ConfigError(
            f"--input: {', '.join(sorted(kinds))} files together; give one kind at a time"
        )
    (kind,) = kinds
    if kind == "parquet":
        return ray.data.read_parquet(paths, num_cpus=READ_CPUS)
    if kind == "jsonl":
        return ray.data.read_json(paths, lines=True, num_cpus=READ_CPUS)
    fs, first = remote.filesystem(paths[0])
    with fs.open_input_stream(first) as f:
        header = f.read(1 << 20).split(b"\n", 1)[0].decode("utf-8").rstrip("\r")
    names = header.split("\t" if kind == "tsv" else ",")
    return ray.data.read_csv(
        paths,
        num_cpus=READ_CPUS,
        parse_options=pacsv.ParseOptions(
            delimiter="\t" if kind == "tsv" else ",", quote_char=False if kind == "tsv" else '"'
        ),
        convert_options=pacsv.ConvertOptions(column_types={n.strip('"'): pa.string() for n in names}),
    )


class Predictor:
    """A Ray Data actor: the model loaded once, then every batch of rows it is handed."""

    def __init__(self, files, fields: tuple[str, ...], device: str):
        import ray

        from tuning.finetune import load_task_model

        files = ray.get(files) if isinstance(files, ray.ObjectRef) else files
        self.tmp = tempfile.TemporaryDirectory(prefix="gpt1-predictor-")
        for name, data in files.items():
            (Path(self.tmp.name) / name).write_bytes(data)
        self.tm = load_task_model(Path(self.tmp.name), device)
        self.fields, self.device = fields, device

    def __call__(self, batch):
        task = self.tm.task
        out = label_rows(self.tm, batch.to_dict("records"), self.fields, self.device)
        batch = batch.copy()
        batch["label"] = [None if p is None else p.label for p, _ in out]
        probs = [None if p is None else p.probabilities for p, _ in out]
        if task.transformation == "multiple_choice":
            batch["probabilities"] = probs
        elif not task.regression:
            for c, name in enumerate(task.labels):
                batch[f"p_{name}"] = [None if p is None else p[c] for p in probs]
        batch["error"] = [e for _, e in out]
        return batch


def label_rows(tm, rows: list[dict], fields: tuple[str, ...], device: str) -> list[tuple]:
    """(Prediction, None) for each row the task's transformation reads, (None, why) for each it
    cannot: the rows encoded as fine-tuning encoded its examples, run BATCH at a time. Shared by
    predict's actors and serve's replicas."""
    import torch

    from pipeline.runtime import autocast
    from tuning.encode import collate
    from tuning.inputs import BadRow, example_of, predictions

    task = tm.task
    n_choices = len(task.labels) if task.transformation == "multiple_choice" else None
    out: list[tuple] = [(None, None)] * len(rows)
    examples = {}
    for i, row in enumerate(rows):
        try:
            examples[i] = example_of(row, task.transformation, fields, n_choices)
        except BadRow as err:
            out[i] = (None, str(err))
    good = sorted(examples)
    try:
        encoded = tm.encoder.encode([examples[i] for i in good])
    except (ValueError, UnicodeError, TypeError):
        # One row the tokenizer cannot take fails only itself: encode them one at a time.
        encoded, kept = [], []
        for i in good:
            try:
                encoded += tm.encoder.encode([examples[i]])
                kept.append(i)
            except (ValueError, UnicodeError, TypeError) as err:
                out[i] = (None, f"cannot be encoded ({str(err).splitlines()[0][:200]})")
        good = kept
    with torch.no_grad():
        for k in range(0, len(good), BATCH):
            chunk = encoded[k : k + BATCH]
            # A batch holds examples of one shape: multiple-choice rows may differ in candidates.
            groups = [[e] for e in chunk] if task.transformation == "multiple_choice" else [chunk]
            got = []
            for group in groups:
                ids, mask, _ = collate(group, task.regression)
                with autocast(torch.device(device)):
                    logits = tm.model(ids.to(device), mask.to(device)).logits
                got += predictions(task, logits.float().cpu())
            for i, p in zip(good[k : k + BATCH], got):
                out[i] = (p, None)
    return out


def write(batches, out: Path, kind: str, on_bad_row: str, inputs: list[str]) -> tuple[int, int, list[str]]:
    """The predicted batches (pandas, in input order) into `out`, a local file: (rows written,
    rows skipped, where the first bad rows were). For --on-bad-row fail, the first bad row ends
    it with its file and line (a UserError)."""
    header = 1 if format_of(inputs[0], "--input") in ("csv", "tsv") else 0  # the line after the header

    def where_is(row: int) -> str:  # row: 1-based, over the inputs in the order given
        return (
            f"{inputs[0]}: line {row + header}"
            if len(inputs) == 1
            else f"--input row {row} (the files in order)"
        )

    import pyarrow as pa
    import pyarrow.parquet as pq

    written = skipped = read = 0
    where: list[str] = []
    writer = None
    with open(out, "wb") as f:
        for df in batches:
            bad = df["error"].notna()
            for row, reason in zip(df.index[bad], df["error"][bad]):
                at = where_is(read + 1 + list(df.index).index(row))
                if on_bad_row == "fail":
                    raise errors.UserError(
                        f"{at}: {reason}; fix the row, or pass --on-bad-row error (an error column) or skip"
                    )
                if len(where) < 3:
                    where.append(f"{at} ({reason})")
            read += len(df)
            if on_bad_row == "skip":
                skipped += int(bad.sum())
                df = df[~bad].drop(columns=["error"])
            written += len(df)
            if kind == "parquet":
                table = pa.Table.from_pandas(df, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(f, table.schema)
                writer.write_table(table.cast(writer.schema))
            elif kind == "jsonl":
                text = df.to_json(orient="records", lines=True, force_ascii=False) if len(df) else ""
                f.write((text if text.endswith("\n") or not text else text + "\n").encode())
            else:
                for col in ("probabilities",):
                    if col in df:
                        df[col] = [None if v is None else json.dumps(list(v)) for v in df[col]]
                sep = "\t" if kind == "tsv" else ","
                f.write(df.to_csv(sep=sep, index=False, header=written == len(df)).encode())
        if writer is not None:
            writer.close()
    return written, skipped, where


def _input_error(err: BaseException) -> str | None:
    """The one line that says why pyarrow (inside a Ray Data read) refused an input's text (a
    row of the wrong width, a line that is not JSON), or None where err is something else."""
    import re

    chain, seen = [], set()
    while err is not None and id(err) not in seen:  # Ray's wrapper, Ray Data's, then pyarrow's
        seen.add(id(err))
        chain.append(str(err))
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    text = "\n".join(chain)
    found = re.search(r"((?:CSV|JSON) parse error[^\n]*)", text)
    if found:
        return found[1].strip()
    found = re.search(r"Failed to read (CSV|JSON) file: (\S+?)\.?\s", text)
    if not found:
        return None
    if found[1] == "JSON":
        return f"{found[2]}: not JSON Lines; expected one JSON object a line"
    return (
        f"{found[2]}: a row does not have its header's fields; expected as many in every row (tabs in a .tsv)"
    )


def predict(
    model: str,
    inputs: list[str],
    out: str,
    columns: list[str] | None = None,
    on_bad_row: str = "error",
    actors: int = 0,
    gpus_per_actor: float = 1.0,
) -> dict:
    """Run the stage; returns rows written and skipped and the output's path."""
    import ray

    from pipeline import cluster, outdir
    from pipeline.runtime import ray_init
    from tuning.finetune import is_finetune_output
    from tuning.inputs import fields_of, task_of

    if on_bad_row not in ("error", "skip", "fail"):
        raise errors.ConfigError(f"--on-bad-row {on_bad_row}: expected error, skip or fail")
    kind = format_of(out, "--out")
    for p in inputs:
        format_of(p, "--input")
    if not remote.is_remote(out):
        outdir.check_writable(remote.local_path(out))
    with model_dir(model) as d:
        if not is_finetune_output(d):
            raise errors.ConfigError(
                f"--model {model}: not a fine-tuned model (no task.json and head.safetensors); "
                "expected gpt1 finetune's --out or a sweep's registered model"
            )
        check_model(d, f"--model {model}")
        task = task_of(d)
        try:
            fields = fields_of(task.transformation, columns)
        except ValueError as err:
            raise errors.ConfigError(str(err)) from None
        files = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    ray_init()
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # output in input order
    gpus = cluster.wants_gpus("auto")
    cpus = ray.cluster_resources().get("CPU", 1)
    n = actors or (max(1, int(ray.cluster_resources().get("GPU", 0) / gpus_per_actor)) if gpus else 1)
    # CPU actors leave half a core to the reads that feed them: actors holding every core would
    # wait for ever on reads that cannot be scheduled (--actors 2 on a 2-core machine).
    per_actor = (
        {"num_gpus": gpus_per_actor} if gpus else {"num_cpus": min(1.0, max(cpus - READ_CPUS, 0.1) / n)}
    )
    ds = read(inputs).map_batches(
        Predictor,
        fn_constructor_kwargs={
            "files": ray.put(files),
            "fields": fields,
            "device": "cuda" if gpus else "cpu",
        },
        batch_size=BATCH * 4,
        batch_format="pandas",
        concurrency=n,
        **per_actor,
    )
    print(
        f"predict: {task.name} ({task.transformation}) on {', '.join(inputs)}, fields "
        f"{', '.join(fields)}; {n} {'GPU' if gpus else 'CPU'} actor(s)",
        flush=True,
    )
    # Written beside its place (a local --out) or in a temporary directory (object storage),
    # then moved or uploaded whole: a failed run leaves nothing half-written at --out.
    with tempfile.TemporaryDirectory(prefix="gpt1-predict-") as tmp:
        final = None if remote.is_remote(out) else remote.local_path(out)
        local = Path(tmp) / "out" if final is None else final.with_name(f".{final.name}.tmp-{os.getpid()}")
        try:
            written, skipped, where = write(
                ds.iter_batches(batch_format="pandas"), local, kind, on_bad_row, inputs
            )
            if final is None:
                import pyarrow.fs as pafs

                fs, path = pafs.FileSystem.from_uri(str(out))
                pafs.copy_files(
                    str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
                )
            else:
                os.replace(local, final)
        except Exception as err:
            line = None if isinstance(err, errors.UserError) else _input_error(err)
            if line is None:
                raise
            raise errors.UserError(f"--input: {line}") from None
        finally:
            if final is not None:
                local.unlink(missing_ok=True)
    bad = len(where)
    line = f"predict: {written:,} row(s) to {out}"
    if skipped:
        line += f"; {skipped:,} malformed row(s) skipped, first at {where[0]}"
    elif bad:
        line += f"; malformed row(s) marked in the error column, first at {where[0]}"
    print(line, flush=True)
    return {"rows": written, "skipped": skipped, "out": str(out)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="a fine-tuned model directory, models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/model, or s3://",
    )
    p.add_argument(
        "--input", nargs="+", required=True, help="TSV, CSV, JSON Lines or Parquet files, local or s3://"
    )
    p.add_argument(
        "--out", required=True, help="the output file: .parquet, .jsonl, .csv or .tsv, local or s3://"
    )
    p.add_argument(
        "--columns", help="the input's columns for the task's fields, in order (default: their names)"
    )
    p.add_argument(
        "--on-bad-row",
        default="error",
        choices=["error", "skip", "fail"],
        help="a row the task cannot read: its reason in an error column (default: error), left out "
        "and counted (skip), or the end of the run with its line (fail)",
    )
    p.add_argument("--actors", type=int, default=0, help="model replicas (default: one per GPU, else 1)")
    p.add_argument("--gpus-per-actor", type=float, default=1.0, help="a fraction shares a GPU (default 1)")


def run(args: argparse.Namespace) -> None:
    predict(
        args.model,
        args.input,
        args.out,
        columns=args.columns.split(",") if args.columns else None,
        on_bad_row=args.on_bad_row,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
    )


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("predict", __doc__, add_arguments, run, argv)
