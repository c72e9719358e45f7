"""Names that come from someone else (an object's key, a run name, a hidden folder beside an
output) never carry a write or a delete outside the place it was meant for, and the demo's
--fresh removes only what the demo wrote, after every argument is checked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_faults_inputs import one_line

from gpt1.cli import main as gpt1


def dead_pid() -> str:
    return subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()


def put_raw(s3: dict, key: str, body: bytes) -> None:
    """An object under exactly this key (boto3 sends it as given: pyarrow would normalise it)."""
    import boto3

    boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"]).put_object(Bucket="gpt1-test", Key=key, Body=body)


@pytest.mark.slow
def test_an_object_key_with_dotdot_never_writes_outside_the_local_copy(s3, tmp_path, capsys, task_checkpoint):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    put_raw(s3, "evil/tokenizer.json", (task_checkpoint / "tokenizer.json").read_bytes())
    put_raw(s3, "evil/" + "../" * 30 + str(victim).lstrip("/"), b"overwritten")
    assert (
        gpt1(
            [
                "prepare",
                "--corpus",
                str(victim),
                "--out",
                str(tmp_path / "ds"),
                "--no-mlflow",
                "--set",
                "tokenizer=s3://gpt1-test/evil",
            ]
        )
        == 2
    )
    one_line(capsys, "s3://gpt1-test/evil", "leads outside")
    assert victim.read_text() == "the user's file"
    assert not (tmp_path / "ds").exists()


def test_a_name_that_leads_outside_its_directory_is_refused(tmp_path):
    from pipeline.errors import UserError
    from pipeline.remote import inside

    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert inside(root, "train/shard-00000.bin", "m") == root.resolve() / "train" / "shard-00000.bin"
    for name in ("../x", "train/../../x", "/etc/passwd", "link/x", ".", ""):
        with pytest.raises(UserError, match="leads outside"):
            inside(root, name, "m")


def test_staging_names_a_manifest_gives_are_kept_under_the_node_cache(tmp_path, monkeypatch):
    from pipeline.data import stage
    from pipeline.errors import UserError

    manifest = {
        "shards": {"train/../../../escaped.bin": {"sha256": "0" * 64, "tokens": 1}},
        "tokenizer": {"sha256": "0" * 64},
    }
    with pytest.raises(UserError, match="leads outside"):
        stage._download(f"file://{tmp_path / 'src'}", manifest, tmp_path / "cache" / "ds")
    assert not list(tmp_path.rglob("escaped.bin"))


def test_demo_checks_its_arguments_before_fresh_touches_anything(tmp_path, capsys, monkeypatch):
    project = tmp_path / "project"
    (project / "notes").mkdir(parents=True)
    (project / "notes" / "n.txt").write_text("notes")
    (project / "books.txt").write_text("a corpus")
    (project / "mlflow.db").write_bytes(b"runs")
    (project / "stages.json").write_text("{}")
    monkeypatch.chdir(project)
    assert gpt1(["demo", "--workdir", ".", "--fresh", "--corpus", "books.txt"]) == 2
    one_line(capsys, "--corpus and --task go together")
    assert sorted(p.name for p in project.iterdir()) == ["books.txt", "mlflow.db", "notes", "stages.json"]


def test_demo_fresh_removes_only_the_entries_it_wrote_and_never_an_input(tmp_path, capsys, monkeypatch):
    from gpt1.demo import STAGES_FORMAT, fresh

    work = tmp_path / "work"
    for d in ("data", "runs", "builtin", "mine"):
        (work / d).mkdir(parents=True)
        (work / d / "f").write_text(d)
    (work / "stages.json").write_text(json.dumps({"format": STAGES_FORMAT, "written": ["data", "runs"]}))
    with pytest.raises(Exception, match="holds .*an input of this command"):
        fresh(work, [work / "runs" / "corpus.txt"])
    assert sorted(p.name for p in work.iterdir()) == ["builtin", "data", "mine", "runs", "stages.json"]
    fresh(work, [work / "mine" / "corpus.txt"])
    assert sorted(p.name for p in work.iterdir()) == ["builtin", "mine"]  # builtin/ was not the demo's


@pytest.mark.parametrize("stages", ["{}", '{"written": ["data", "runs"]}', "not json", '{"format": "other"}'])
def test_demo_fresh_deletes_nothing_beside_a_stages_json_it_did_not_write(tmp_path, capsys, stages):
    work = tmp_path / "d"
    for d, f in (("data", "thesis.txt"), ("runs", "exp1.log"), ("builtin", "b"), ("report", "r.md")):
        (work / d).mkdir(parents=True)
        (work / d / f).write_text("the only copy")
    (work / "stages.json").write_text(stages)
    before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    assert gpt1(["demo", "--workdir", str(work), "--fresh", "--size", "ci"]) == 2
    one_line(capsys, "is not a demo directory")
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before
    # Without --fresh the demo refuses it too, rather than write over it or claim what is beside it.
    assert gpt1(["demo", "--workdir", str(work), "--size", "ci"]) == 2
    one_line(capsys, "was not written by gpt1 demo")
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before
    assert (work / "stages.json").read_text() == stages


def test_staging_cleanup_leaves_a_users_hidden_folder_alone(task_checkpoint, tmp_path, capsys):
    backup = tmp_path / ".model.backup-2019-12"
    backup.mkdir()
    (backup / "weights").write_text("the only copy")
    dead = dead_pid()
    unmarked = tmp_path / f".model.gpt1-tmp-{dead}-aaaa"  # the project's name, but no marker file in it
    unmarked.mkdir()
    orphan = tmp_path / f".model.gpt1-tmp-{dead}-bbbb"
    orphan.mkdir()
    (orphan / ".gpt1-staging").write_text(dead)
    assert gpt1(["export", str(task_checkpoint), str(tmp_path / "model")]) == 0
    assert (backup / "weights").read_text() == "the only copy"
    assert unmarked.exists() and not orphan.exists()
    assert not (tmp_path / "model" / ".gpt1-staging").exists()  # the marker stays behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.backup-2019-12", unmarked.name, "model"]


@pytest.mark.parametrize("name", ["../../escape", "/abs/path", "a/b", "..", ".hidden", "x" * 200])
def test_a_run_name_is_one_safe_path_component(tmp_path, capsys, name):
    storage = tmp_path / "deep" / "storage"
    assert (
        gpt1(
            [
                "pretrain",
                "--data",
                str(tmp_path / "nowhere"),
                "--storage",
                str(storage),
                "--name",
                name,
                "--no-mlflow",
            ]
        )
        == 2
    )
    one_line(capsys, "--name", "one name of letters")
    assert not list(tmp_path.rglob("*")) and not Path("/abs/path").exists()


def test_a_default_run_name_keeps_only_safe_characters():
    from pipeline.train.config import check_run_name, default_run_name

    name = default_run_name("/data/my corpus (v2)/", "tiny", "abcd1234")
    assert name == "my_corpus__v2_-tiny-abcd1234"
    check_run_name(name)
    assert os.sep not in default_run_name("s3://b/..", "tiny", "x")


def test_a_corpus_directory_with_link_loops_reads_each_real_file_once(tmp_path, capsys):
    from pipeline.data.corpus import resolve_inputs

    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("a document\n")
    (d / "sub" / "loop").symlink_to(d)  # back up the tree
    (d / "self.txt").symlink_to(d / "self.txt")  # a link to itself
    (d / "again.txt").symlink_to(d / "a.txt")  # the same file under a second name
    files = resolve_inputs([str(d)])
    assert [f.uri for f in files] == [str(d / "a.txt")]
    err = capsys.readouterr().err
    for skipped in ("sub/loop", "self.txt", "again.txt"):
        assert f"skipping {d / skipped}" in err, err


@pytest.mark.slow
def test_a_users_folder_named_model_is_not_imported_as_the_package(tmp_path):
    """`gpt1 export CKPT model` is a natural name; the command run from beside that folder must
    still import its own `model` package, not the user's directory."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "in.csv").write_text("sentence\nfine\n")
    gpt1_script = Path(sys.executable).parent / "gpt1"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [str(gpt1_script), "predict", "--model", "model", "--input", "in.csv", "--out", "o.csv"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "ImportError" not in done.stderr and "not a fine-tuned model" in done.stderr, done.stderr[-3000:]
