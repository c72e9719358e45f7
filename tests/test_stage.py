"""Staging a dataset from storage (pipeline/data/stage.py): files fetched in ranged pieces by
several streams land whole and verified; a damaged one is refused and leaves nothing behind."""

import hashlib
import random

import pytest

from pipeline.data import stage
from pipeline.data.manifest import DataError


def test_piece_size_keeps_every_stream_busy_within_its_bounds():
    mib = 1 << 20
    assert stage.piece_size(16 * 64 * mib, 8) == 64 * mib  # many shards: one GET each
    assert stage.piece_size(4 * 64 * mib, 8) == 16 * mib  # two pieces a stream
    assert stage.piece_size(10 * mib, 8) == 8 * mib  # never below AWS's suggested range
    assert stage.piece_size(0, 8) == 8 * mib


def dataset(root, sizes):
    rng = random.Random(0)
    manifest = {"shards": {}, "tokenizer": {}}
    for i, size in enumerate(sizes):
        data = rng.randbytes(size)
        name = f"train/shard-{i:05d}.bin"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        manifest["shards"][name] = {"sha256": hashlib.sha256(data).hexdigest()}
    (root / "tokenizer.json").write_bytes(b"")
    manifest["tokenizer"] = {"sha256": hashlib.sha256(b"").hexdigest()}
    return manifest


@pytest.mark.parametrize("streams", [1, 3])
def test_files_staged_in_ranged_pieces_land_whole(tmp_path, monkeypatch, streams):
    monkeypatch.setattr(stage, "_PIECE_MIN", 1000)
    monkeypatch.setattr(stage, "_PIECE_MAX", 4000)
    src = tmp_path / "src"
    # Files of several pieces, one shorter than a piece, an empty tokenizer.json.
    manifest = dataset(src, [20_000, 9_999, 700, 4000])
    stage._download(f"file://{src}", manifest, tmp_path / "dest", streams=streams)
    for name in [*manifest["shards"], "tokenizer.json"]:
        assert (tmp_path / "dest" / name).read_bytes() == (src / name).read_bytes()
    assert not list((tmp_path / "dest").rglob("*.part-*"))


def test_a_damaged_file_is_refused_and_no_part_is_left(tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "_PIECE_MIN", 1000)
    monkeypatch.setattr(stage, "_PIECE_MAX", 4000)
    src = tmp_path / "src"
    manifest = dataset(src, [20_000, 9_999])
    damaged = bytearray((src / "train/shard-00001.bin").read_bytes())
    damaged[5000] ^= 1
    (src / "train/shard-00001.bin").write_bytes(damaged)
    with pytest.raises(DataError, match=r"shard-00001\.bin: sha256 differs from the manifest"):
        stage._download(f"file://{src}", manifest, tmp_path / "dest", streams=3)
    assert not [p for p in (tmp_path / "dest").rglob("*") if p.is_file()]


def test_staging_holds_a_cpu_on_each_node_of_the_runs_accelerator_type_only():
    from pipeline.data.stage import staging_nodes

    nodes = [
        {"NodeID": "head", "Alive": True, "Resources": {"CPU": 0}},
        {"NodeID": "a100", "Alive": True, "Resources": {"CPU": 96, "GPU": 8, "accelerator_type:A100": 1}},
        {"NodeID": "h100", "Alive": True, "Resources": {"CPU": 192, "GPU": 8, "accelerator_type:H100": 1}},
        {"NodeID": "gone", "Alive": False, "Resources": {"CPU": 96, "GPU": 8, "accelerator_type:A100": 1}},
        {"NodeID": "cpu", "Alive": True, "Resources": {"CPU": 32}},
    ]
    # The run's workers go on A100 nodes only: the H100 node never stages its data.
    assert staging_nodes(nodes, "GPU", "A100") == [("a100", 1)]
    assert staging_nodes(nodes, "GPU") == [("a100", 1), ("h100", 1)]
    # CPU workers: every node with CPUs, each task holding one (Ray then counts the node busy).
    assert staging_nodes(nodes, "CPU") == [("a100", 1), ("h100", 1), ("cpu", 1)]
