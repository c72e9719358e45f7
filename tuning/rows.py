"""predict's input rows read in this process, as Ray Data reads them on a cluster (the same
pyarrow and pandas readers with the same options, so the same rows), and one pass over a file
that counts its rows and finds the blank lines those readers pass over.

    scan(path, kind)                  -> Scan: the rows, and the blank lines (1-based) outside quotes
    batches(paths, kind, names, size) -> pandas DataFrames, in input order (RowsError on bad text)
    csv_options(kind, names)          -> pyarrow's parse and convert options for a CSV or TSV

kind is "csv", "tsv", "jsonl" or "parquet"; a .gz file is read through gzip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pipeline import remote


@dataclass
class Scan:
    rows: int = 0
    blank: list[int] = field(default_factory=list)


class RowsError(Exception):
    """A file the reader refused part-way (a row of the wrong width, a line that is not JSON)."""

    def __init__(self, path: str, kind: str, said: str):
        super().__init__(f"{path}: {said}")
        self.path, self.kind, self.said = path, kind, said


def csv_options(kind: str, names: list[str]):
    """Every cell as text, so no number is guessed from a sentence; a TSV has no quoting."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return (
        pacsv.ParseOptions(
            delimiter="\t" if kind == "tsv" else ",", quote_char=False if kind == "tsv" else '"'
        ),
        pacsv.ConvertOptions(column_types={n: pa.string() for n in names}),
    )


def _opened(path: str):
    fs, p = remote.filesystem(path)
    return fs.open_input_stream(p, compression="gzip" if p.lower().endswith(".gz") else None)


def _lines(path: str) -> Iterator[bytes]:
    """The file's lines without their ends, read a MiB at a time."""
    rest = b""
    with _opened(path) as f:
        while chunk := f.read(1 << 20):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            yield from lines
    if rest:
        yield rest


def scan(path: str, kind: str) -> Scan:
    """The rows of one input, and its blank lines: pyarrow's CSV reader passes over an empty line
    (outside quotes), pandas' JSON Lines reader over one of spaces, and neither says so."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        fs, p = remote.filesystem(path)
        with fs.open_input_file(p) as f:
            return Scan(pq.ParquetFile(f).metadata.num_rows)
    out, quoted = Scan(), False
    for number, line in enumerate(_lines(path), 1):
        text = line.rstrip(b"\r")
        if quoted:  # a line break inside a quoted CSV field: the same row goes on
            quoted = text.count(b'"') % 2 == 0
            continue
        if not (text.strip() if kind == "jsonl" else text):
            out.blank.append(number)
            continue
        out.rows += 1
        quoted = kind == "csv" and text.count(b'"') % 2 == 1  # "" inside a field counts twice
    if kind in ("csv", "tsv") and out.rows:
        out.rows -= 1  # the header
    return out


def batches(paths: list[str], kind: str, names: Callable[[str], list[str]], size: int) -> Iterator:
    """Each file's rows as pandas DataFrames of at most about `size` rows, file after file;
    names(path) gives a CSV's header (predict.first_record)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    for path in paths:
        try:
            if kind == "parquet":
                import pyarrow.parquet as pq

                fs, p = remote.filesystem(path)
                with fs.open_input_file(p) as f:
                    for b in pq.ParquetFile(f).iter_batches(batch_size=size):
                        yield b.to_pandas()
            elif kind == "jsonl":
                import pandas as pd

                with _opened(path) as f, pd.read_json(f, lines=True, chunksize=size) as reader:
                    for df in reader:
                        yield df.reset_index(drop=True)
            else:
                parse, convert = csv_options(kind, names(path))
                with _opened(path) as f:
                    for b in pacsv.open_csv(f, parse_options=parse, convert_options=convert):
                        if b.num_rows:
                            yield b.to_pandas()
        except (pa.ArrowInvalid, ValueError) as err:  # pandas says bad JSON with a ValueError
            raise RowsError(path, "JSON" if kind == "jsonl" else "CSV", str(err).splitlines()[0]) from None
