"""Stage 1, prepare: an unlabeled corpus -> a tokenizer and token shards read by offset.

    gpt1 prepare --corpus PATH_OR_URI... --out DIR_OR_URI [--config YAML] [--set key=value ...]
    python pipeline/prepare.py ...     the same options, as a `ray job submit` entrypoint

The driver coordinates; the workers read and write. Ray Data workers read the inputs in byte-range
chunks (hashing them as they read), normalise and tokenize them, and each writes its work item's
token stream, split by split, as a part file under the output; the driver receives only counts,
lengths and hashes. Ray tasks then cut the parts into the dataset's shards, each assembled from
the byte ranges it covers and hashed as it is written (pipeline/data/packing.py). The driver
writes tokenizer.json and, last, manifest.json: a directory or prefix without one is not a
dataset. The output is the same, byte for byte, whatever the parallelism and the chunk size.

What the workers run is pipeline/data/work.py; this module plans, schedules and commits.

The output is a local directory (written under a temporary name and renamed into place) or any
pyarrow filesystem URI (s3://, gs://, file://), written in place with the manifest last; a re-run
clears what an interrupted one left there.
"""

from __future__ import annotations

import argparse

from pipeline import configio, errors
from pipeline.data.config import PrepareConfig
from pipeline.runtime import add_wait_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus",
        nargs="+",
        required=True,
        metavar="PATH",
        help="files, globs, directories or URIs (s3://, gs://, ...); .gz is read too",
    )
    p.add_argument(
        "--val-corpus",
        nargs="+",
        metavar="PATH",
        help="held-out inputs that make up the val split (instead of val_fraction of the documents)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="dataset directory to create, or an object-storage URI (s3://bucket/prefix)",
    )
    p.add_argument("--config", help="YAML file of PrepareConfig keys")
    configio.add_set_option(p, PrepareConfig, seed="which documents are held out as val")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing, different dataset (a directory that is not a dataset is never replaced)",
    )
    add_wait_option(p)
    p.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")


def run(args: argparse.Namespace) -> None:
    cfg = configio.load(PrepareConfig(), args.config, sets=args.set)
    if args.print_config:
        print(configio.dump(cfg), end="")
        return
    from pipeline.data.prepare import prepare  # pyarrow, numpy and Ray: after --help and --print-config

    prepare(
        args.corpus,
        args.out,
        cfg,
        overwrite=args.overwrite,
        track=not args.no_mlflow,
        val_corpus=args.val_corpus,
        wait_minutes=args.wait_minutes,
    )


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("prepare", __doc__, add_arguments, run, argv)
