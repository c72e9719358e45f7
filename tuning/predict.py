"""Stage: a fine-tuned model's predictions on new rows, in this process or on Ray Data.

    gpt1 predict --model M --input PATH [PATH ...] --out PATH [--overwrite] [--columns A,B]
                 [--on-bad-row error|skip|fail] [--ray] [--actors N] [--gpus-per-actor G]

M is a fine-tuned model directory (gpt1 finetune's --out, a sweep's registered model), an MLflow
model URI (models:/gpt1-sst-2/3, models:/gpt1-sst-2@champion, runs:/<id>/model) or a URI on
object storage. The inputs are TSV, CSV (each with a header line), JSON Lines or Parquet, by
their extension, local or on object storage; their columns are the task's fields
(tuning/inputs.py: sentence; premise, hypothesis; sentence1, sentence2; context, candidates) or
those --columns names. Up to IN_PROCESS_ROWS rows (5,000) run in this process, on its GPU if it
has one; more, or --ray, on Ray Data: its reads, and a pool of actors, each loading the model
once (a GPU, or a fraction of one, each where the cluster has GPUs; CPUs otherwise). Either way
every row is encoded with the task's transformation exactly as fine-tuning did
(tuning/encode.py) and run through the same model code (label_rows).

The output (Parquet, JSON Lines, CSV or TSV by --out's extension) keeps every input column, in
input order, one row per input row (a blank line is no row: the readers pass over it, and the
closing line counts them and names the first), and adds `label` (the label; for regression the
score; for multiple choice the chosen candidate's index) and the probabilities: a `p_<label>` column per
class, or a `probabilities` list per candidate. A row the transformation cannot read (a missing
or empty field) gets its reason in an `error` column (--on-bad-row error, the default), is left
out and counted (skip), or stops the run with its file and line (fail). The output is written
beside its place and moved there whole: nothing half-written is left. An existing --out is
replaced only with --overwrite, and never when it is an input. Inputs may be gzipped (.csv.gz);
the files, their columns and the model are checked before Ray starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

from model.config import bucketed
from pipeline import cluster, errors, outdir, remote
from pipeline.model_source import local_model
from pipeline.runtime import autocast, ray_init

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
BATCH = 64  # rows an actor encodes and runs at a time
READ_CPUS = 0.5  # what each read task of the inputs reserves
# Rows up to which predict runs in this process: below it, Ray's and the actors' start-up (tens of
# seconds here) costs more than the rows; on a cluster, --ray spreads even a small input.
IN_PROCESS_ROWS = 5000


def format_of(path: str, option: str) -> str:
    """The format a path's extension names; an input's may end in .gz (read as Ray Data reads it)."""
    name = Path(str(path).rstrip("/")).name.lower()
    if option == "--input" and name.endswith(".gz") and not name.endswith(".parquet.gz"):
        name = name.removesuffix(".gz")
    suffix = Path(name).suffix
    if suffix not in FORMATS:
        raise errors.ConfigError(
            f"{option} {path}: expected a .tsv, .csv, .jsonl (or .json, JSON Lines) or .parquet file"
            + (" (inputs may end in .gz)" if option == "--input" else "")
        )
    return FORMATS[suffix]


def expand_inputs(paths: list[str]) -> list[str]:
    """The input files, each checked to exist before any work: a glob is expanded (one matching
    nothing is refused), a file or object that is not there is one line naming it."""
    import glob

    out = []
    for spec in paths:
        if remote.Location.of(spec).local is not None and glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec) if Path(p).is_file())
            if not found:
                raise errors.ConfigError(f"--input {spec}: matches no file")
            out += found
            continue
        fs, path = remote.filesystem(spec)
        try:
            info = fs.get_file_info(path)
        except OSError as err:
            raise (errors.storage_error(err) or err) from None
        if info.type == pafs_type().NotFound:
            raise errors.ConfigError(f"--input {spec}: no such file")
        out.append(spec)
    return out


def pafs_type():
    import pyarrow.fs as pafs

    return pafs.FileType


def first_record(path: str, kind: str) -> list[str]:
    """The column names of an input's first record (its header, first JSON object or schema),
    checked to be readable: an empty file, bytes that are not UTF-8 or a first line that is not
    JSON are one line naming the file and line."""
    fs, p = remote.filesystem(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            with fs.open_input_file(p) as f:
                return list(pq.read_schema(f).names)
        except Exception as err:  # pyarrow: ArrowInvalid for a file that is not Parquet
            raise errors.ConfigError(
                f"--input {path}: not a Parquet file ({str(err).splitlines()[0]})"
            ) from None
    compression = "gzip" if p.lower().endswith(".gz") else None
    with fs.open_input_stream(p, compression=compression) as f:
        head = f.read(1 << 20)
    lines = head.split(b"\n")
    number = next((i for i, line in enumerate(lines) if line.strip()), None) if kind == "jsonl" else 0
    if number is None or not head.strip():
        raise errors.ConfigError(
            f"--input {path}: is empty; expected {'a header line' if kind != 'jsonl' else 'rows'}"
        )
    line = lines[number].rstrip(b"\r")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise errors.ConfigError(
            f"{path}: line {number + 1}: byte 0x{line[err.start]:02x} at column {err.start + 1} is not UTF-8; "
            "save the file as UTF-8"
        ) from None
    if kind != "jsonl":
        return [n.strip('"') for n in text.split("\t" if kind == "tsv" else ",")]
    try:
        row = json.loads(text)
    except ValueError:
        row = None
    if not isinstance(row, dict):
        raise errors.ConfigError(
            f"{path}: line {number + 1}: not a JSON object; expected one JSON object a line"
        )
    return list(row)


@contextlib.contextmanager
def model_dir(spec: str):
    """The model as a local directory (pipeline/model_source.py: a directory, an MLflow model, a
    copy from object storage)."""
    with local_model(spec, "--model", "a fine-tuned model directory") as (d, _):
        yield d


def check_out(out: str, inputs: list[str], overwrite: bool) -> None:
    """--out may be new, or (with --overwrite) a file; never an input, a directory or a place
    whose directory or bucket is not there. A local parent is made; a dead run's staging
    directory beside it is removed."""
    final = remote.Location.of(out).local
    if final is None:  # object storage: the bucket must be there, and nothing is made
        if any(str(out).rstrip("/") == str(i).rstrip("/") for i in inputs):
            raise errors.ConfigError(
                f"--out {out}: is one of the --input files; write the predictions elsewhere"
            )
        fs, path = remote.filesystem(out)
        bucket = path.split("/", 1)[0]
        try:
            found, there = fs.get_file_info(bucket), fs.get_file_info(path)
        except OSError as err:
            raise (errors.storage_error(err) or err) from None
        if found.type == pafs_type().NotFound:
            raise errors.ConfigError(f"--out {out}: no bucket {bucket!r}; create it, or fix the URI")
        if there.type == pafs_type().Directory:
            raise errors.ConfigError(
                f"--out {out}: is a directory; name a file (.parquet, .jsonl, .csv, .tsv)"
            )
        if there.type == pafs_type().File and not overwrite:
            raise errors.ConfigError(f"--out {out}: already exists; pass --overwrite to replace it")
        return
    for spec in inputs:
        src = remote.Location.of(spec).local
        if src is not None:
            src = src.resolve()
            if final.resolve() == src or src in final.resolve().parents:
                raise errors.ConfigError(
                    f"--out {out}: is (or lies in) the --input {spec}; write the predictions elsewhere"
                )
    if final.is_dir():
        raise errors.ConfigError(f"--out {out}: is a directory; name a file (.parquet, .jsonl, .csv, .tsv)")
    if final.exists() and not overwrite:
        raise errors.ConfigError(f"--out {out}: already exists; pass --overwrite to replace it")
    outdir.check_writable(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise errors.ConfigError(f"--out {out}: cannot make {final.parent} ({err.strerror})") from None
    outdir.remove_orphans(final)


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
        from pipeline.model_dir import load_model_and_tokenizer

        with damaged_model(what):
            load_model_and_tokenizer(d)


def read(paths: list[str], kind: str):
    """The inputs as one Ray Dataset, read as tuning/rows reads them in this process."""
    import ray.data

    from tuning.rows import csv_options

    if kind == "parquet":
        return ray.data.read_parquet(paths, num_cpus=READ_CPUS)
    if kind == "jsonl":
        return ray.data.read_json(paths, lines=True, num_cpus=READ_CPUS)
    parse, convert = csv_options(kind, first_record(paths[0], kind))
    return ray.data.read_csv(paths, num_cpus=READ_CPUS, parse_options=parse, convert_options=convert)


class Predictor:
    """The model loaded once, then every batch of rows it is handed: a Ray Data actor, or called
    in this process for a small input."""

    def __init__(self, files, fields: tuple[str, ...], device: str):
        from tuning.finetune import load_task_model

        if not isinstance(files, dict):  # on Ray: the model's files as one object in its store
            import ray

            files = ray.get(files)
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
        return as_text_where_mixed(batch)


def as_text_where_mixed(batch):
    """A JSON Lines column of mixed values (5, null, ["a"], "text") as text, each value as its
    JSON: Arrow has no type for such a column, and Ray Data's fallback (pickled Python objects)
    reaches the writer as values that pandas' JSON writer crashes on (a segfault)."""
    for col in batch.columns:
        values = batch[col]
        if values.dtype != object:
            continue
        kinds = {type(v) for v in values if v is not None and not (isinstance(v, float) and v != v)}
        if len(kinds) > 1:
            batch[col] = [
                v if v is None or isinstance(v, str) else json.dumps(v, default=str) for v in values
            ]
    return batch


def label_rows(tm, rows: list[dict], fields: tuple[str, ...], device: str) -> list[tuple]:
    """(Prediction, None) for each row the task's transformation reads, (None, why) for each it
    cannot: the rows encoded as fine-tuning encoded its examples, run BATCH at a time. Shared by
    predict's actors and serve's replicas."""
    import torch

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
                ids, mask, _ = collate(group, task.regression, bucketed(tm.encoder.n_ctx, device))
                with autocast(torch.device(device)):
                    logits = tm.model(ids.to(device), mask.to(device)).logits
                got += predictions(task, logits.float().cpu())
            for i, p in zip(good[k : k + BATCH], got, strict=True):
                out[i] = (p, None)
    return out


def write(
    batches, out: Path, kind: str, on_bad_row: str, inputs: list[str], scans: list | None = None
) -> tuple[int, int, list[str]]:
    """The predicted batches (pandas, in input order) into `out`, a local file: (rows written,
    rows skipped, where the first bad rows were). For --on-bad-row fail, the first bad row ends
    it with its file and line (a UserError). scans (tuning/rows.scan, one per input) place a row
    in its file, past the blank lines the reader passed over."""
    header = 1 if format_of(inputs[0], "--input") in ("csv", "tsv") else 0  # the line after the header

    def where_is(row: int) -> str:  # row: 1-based, over the inputs in the order given
        if scans is None:
            return (
                f"{inputs[0]}: line {row + header}"
                if len(inputs) == 1
                else f"--input row {row} (the files in order)"
            )
        i = 0
        while i < len(scans) - 1 and row > scans[i].rows:
            row, i = row - scans[i].rows, i + 1
        line = row + header
        for b in scans[i].blank:
            line += b <= line
        return f"{inputs[i]}: line {line}"

    import pyarrow as pa
    import pyarrow.parquet as pq

    written = skipped = read = 0
    where: list[str] = []
    writer = None
    header_written = False
    with open(out, "wb") as f:
        for df in batches:
            bad = df["error"].notna()
            for row, reason in zip(df.index[bad], df["error"][bad], strict=True):
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
                f.write(df.to_csv(sep=sep, index=False, header=not header_written).encode())
                header_written = True  # once, even where every row of the first batch was skipped
        if writer is not None:
            writer.close()
    return written, skipped, where


def _input_error(err: BaseException) -> str | None:
    """The one line that says why pyarrow (inside a Ray Data read, or in this process) refused
    an input's text (a row of the wrong width, a line that is not JSON), or None where err is
    something else."""
    import re

    from tuning.rows import RowsError

    if isinstance(err, RowsError):
        return explain(err.path, err.kind, None)
    chain, seen = [], set()
    while err is not None and id(err) not in seen:  # Ray's wrapper, Ray Data's, then pyarrow's
        seen.add(id(err))
        chain.append(str(err))
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    text = "\n".join(chain)
    file = re.search(r"Failed to read (CSV|JSON) file: (\S+?)\.?\s", text)
    # pyarrow's own words, which say what is wrong (and for JSON, in which row).
    found = re.search(
        r"((?:CSV|JSON) parse error[^\n]*|In CSV column[^\n]*|Empty CSV file|straddling object[^\n]*)", text
    )
    if not (file or found):
        return None
    return explain(file[2] if file else None, file[1] if file else None, found[1] if found else None)


def explain(path: str | None, kind: str | None, said: str | None) -> str:
    """The line for a refused input: `said`, pyarrow's words, or where they are not at hand the
    file read again by pyarrow here (pyarrow_says), which also finds the line."""
    import re

    where = f"{path}: " if path else ""
    if said is None and path:
        said = (pyarrow_says(path, kind.lower()) or "").split("\n")[0] or None
    if said is None:
        return (
            f"{where}not JSON Lines; expected one JSON object a line"
            if kind == "JSON"
            else f"{where}a row does not have its header's fields; expected as many in every row (tabs in a .tsv)"
        )
    said = said.strip()
    line = re.match(r"line \d+: ", said)
    if line:  # pyarrow_says found the line: it goes with the file's name
        where, said = where + line[0], said[line.end() :]
    if "straddl" in said:
        said = "a line longer than the reader's 1 MiB block (pyarrow: " + said + ")"
    elif "invalid UTF8" in said:
        said += "; save the file as UTF-8"
    elif "Expected" in said and "columns" in said:
        said = f"a row does not have its header's fields ({said}); expected as many in every row (tabs in a .tsv)"
    return where + said


def pyarrow_says(path: str, kind: str) -> str | None:
    """What pyarrow itself says of an input Ray Data could not read (Ray's error keeps only the
    file's name): the file read again here, streaming, up to its first error."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    from tuning.rows import csv_options

    try:
        fs, p = remote.filesystem(path)
        compression = "gzip" if p.lower().endswith(".gz") else None
        with fs.open_input_stream(p, compression=compression) as f:
            if kind == "json":
                pajson.read_json(f)
            else:
                kind = format_of(path, "--input")
                parse, convert = csv_options(kind, first_record(path, kind))
                for _ in pacsv.open_csv(f, parse_options=parse, convert_options=convert):
                    pass
    except (pa.ArrowInvalid, errors.UserError) as err:
        said = (str(err).splitlines() or [""])[0]
        line = _line_of(path, said)
        return f"line {line}: {said}" if line else said
    except Exception:
        return None
    return None


def _line_of(path: str, said: str) -> int | None:
    """The line of path that pyarrow's error `said` is about, where it can be found by reading the
    file again: the first that is not UTF-8, longer than a read block, or the row it quotes."""
    quoted = said.split(": ", 2)[-1].encode() if "Expected" in said and "columns, got" in said else None
    if not (quoted or "invalid UTF8" in said or "straddl" in said):
        return None
    fs, p = remote.filesystem(path)
    with fs.open_input_stream(p, compression="gzip" if p.lower().endswith(".gz") else None) as f:
        number, rest = 0, b""
        while True:
            chunk = f.read(1 << 20)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop() if chunk else b""
            for line in lines:
                number += 1
                if quoted is not None and line.rstrip(b"\r") == quoted:
                    return number
                if "straddl" in said and len(line) >= 1 << 20:
                    return number
                if "invalid UTF8" in said:
                    try:
                        line.decode("utf-8")
                    except UnicodeDecodeError:
                        return number
            if "straddl" in said and len(rest) >= 1 << 20:
                return number + 1
            if not chunk:
                return None


def predict(
    model: str,
    inputs: list[str],
    out: str,
    columns: list[str] | None = None,
    on_bad_row: str = "error",
    actors: int = 0,
    gpus_per_actor: float = 1.0,
    overwrite: bool = False,
    use_ray: bool = False,
) -> dict:
    """Run the stage; returns rows written and skipped, blank lines passed over, and the output's
    path. Every input is checked here, before Ray starts: the files, their columns, the model,
    the output's place. Up to IN_PROCESS_ROWS rows run in this process (the same reading,
    encoding and model as the actors'), more (or use_ray, or actors) on Ray Data."""
    if on_bad_row not in ("error", "skip", "fail"):
        raise errors.ConfigError(f"--on-bad-row {on_bad_row}: expected error, skip or fail")
    if actors < 0 or not gpus_per_actor > 0:
        raise errors.ConfigError(
            f"--actors {actors} / --gpus-per-actor {gpus_per_actor}: expected --actors >= 0 (0: one per GPU, "
            "else 1) and --gpus-per-actor > 0"
        )
    kind = format_of(out, "--out")
    kinds = {format_of(p, "--input") for p in inputs}
    if len(kinds) > 1:
        raise errors.ConfigError(
            f"--input: {', '.join(sorted(kinds))} files together; give one kind at a time"
        )
    (kind_in,) = kinds
    inputs = expand_inputs(inputs)
    check_out(out, inputs, overwrite)
    # Only now torch (and Ray, for a large input): a missing file or a bad --out is refused
    # without their start-up.
    from tuning.finetune import is_finetune_output
    from tuning.inputs import fields_of, task_of
    from tuning.rows import batches, scan

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
    for path in inputs:
        names = first_record(path, format_of(path, "--input"))
        missing = [f for f in fields if f not in names]
        if missing:
            raise errors.ConfigError(
                f"--input {path}: has no column {missing[0]!r} (its columns: {', '.join(names[:8])}); "
                f"a {task.transformation} model reads {', '.join(fields)}: rename them, or name yours with --columns"
            )
    # One pass over the inputs: their rows decide where the work runs, and their blank lines,
    # which the readers pass over, are counted and said rather than lost in silence.
    scans = [scan(p, kind_in) for p in inputs]
    rows = sum(s.rows for s in scans)
    if not use_ray and not actors and rows <= IN_PROCESS_ROWS:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        predictor = Predictor(files, fields, device)
        source = (
            predictor(df) for df in batches(inputs, kind_in, lambda p: first_record(p, kind_in), BATCH * 4)
        )
        how = f"in this process on {device.upper()} ({rows:,} rows; over {IN_PROCESS_ROWS:,}, or with --ray, on Ray Data)"
    else:
        import ray

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
        ds = read(inputs, kind_in).map_batches(
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
        source = ds.iter_batches(batch_format="pandas")
        how = f"{n} {'GPU' if gpus else 'CPU'} actor(s) on Ray Data ({rows:,} rows)"
    print(
        f"predict: {task.name} ({task.transformation}) on {', '.join(inputs)}, fields {', '.join(fields)}; {how}",
        flush=True,
    )
    # Written beside its place, or in a temporary directory for object storage, and moved or
    # uploaded whole: a failed run leaves nothing half-written at --out.
    try:
        with remote.Location.of(out).writing("predict") as local:
            written, skipped, where = write(source, local, kind, on_bad_row, inputs, scans)
    except Exception as err:
        line = None if isinstance(err, errors.UserError) else _input_error(err)
        if line is None:
            raise
        raise errors.UserError(f"--input: {line}") from None
    bad = len(where)
    line = f"predict: {written:,} row(s) to {out}"
    if skipped:
        line += f"; {skipped:,} malformed row(s) skipped, first at {where[0]}"
    elif bad:
        line += f"; malformed row(s) marked in the error column, first at {where[0]}"
    blank = [(p, b) for p, sc in zip(inputs, scans, strict=True) for b in sc.blank]
    if blank:
        line += f"; {len(blank):,} blank line(s) in the input, not rows, left out: first {blank[0][0]}: line {blank[0][1]}"
    print(line, flush=True)
    return {"rows": written, "skipped": skipped, "blank": len(blank), "out": str(out)}


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
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument(
        "--ray",
        action="store_true",
        help=f"run on Ray Data whatever the input's size (default: in this process up to {IN_PROCESS_ROWS:,} rows)",
    )
    p.add_argument(
        "--actors",
        type=int,
        default=0,
        help="model replicas on Ray Data (default: one per GPU, else 1; implies --ray)",
    )
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
        overwrite=args.overwrite,
        use_ray=args.ray,
    )


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("predict", __doc__, add_arguments, run, argv)
