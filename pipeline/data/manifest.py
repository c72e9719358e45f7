"""A prepared dataset's manifest.json: its format version, and reading it with one clear line
where it is damaged. prepare writes it; dataset.py checks it against the shards."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.data.corpus import CorpusError

FORMAT_VERSION = 1


def is_dataset(d: Path) -> bool:
    """A directory that prepare wrote (or was writing, when only its manifest is damaged)."""
    return (d / "manifest.json").is_file()


def read_manifest(d: Path) -> dict:
    """manifest.json of a dataset directory, or one line saying why it cannot be read."""
    path = Path(d) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CorpusError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); the dataset is "
                          f"damaged: prepare it again with --overwrite") from None
    except UnicodeDecodeError:
        raise CorpusError(f"{path}: not UTF-8 text; the dataset is damaged: prepare it again with --overwrite") from None
    if not isinstance(manifest, dict):
        raise CorpusError(f"{path}: expected a JSON object; the dataset is damaged: prepare it again with --overwrite")
    return manifest
