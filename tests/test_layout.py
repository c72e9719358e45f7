"""The shape of the code: every import points down (model <- pipeline <- tuning <- gpt1), no
module imports itself back through others, and no module imports a stage's entry file. Read from
the source with ast, imports inside functions included, so the shape cannot drift without this
failing."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ["model", "pipeline", "tuning", "gpt1"]  # from the bottom floor up
# The stages' scripts (`python pipeline/pretrain.py`, what `ray job submit` runs): they only run
# their stage's main, whose code lives in a module that anything may import.
ENTRY_FILES = {
    "pipeline.prepare": "pipeline.data.prepare_cli",
    "pipeline.pretrain": "pipeline.train.pretrain_cli",
    "tuning.sweep": "tuning.search",
}


def modules() -> dict[str, Path]:
    out = {}
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules that `name` imports (as far as they are modules of ours)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while (
                t and t not in known
            ):  # `from pipeline import config` names a module; `from model import GPT` not
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    g = {name: imports_of(name, path, set(mods)) for name, path in mods.items()}
    # The command imports each verb's module by name, when that verb runs (gpt1/cli.py VERBS):
    # arrows all the same, which the checks below must see.
    from gpt1.cli import VERBS

    g["gpt1.cli"] |= {path for path, _ in VERBS.values()}
    return g


def scripts() -> dict[str, Path]:
    """The benchmarks: scripts above every room, which may import any module but no entry file."""
    return {f"bench.{p.stem}": p for p in sorted((ROOT / "bench").glob("*.py"))}


def room(name: str) -> int:
    return ROOMS.index(name.split(".")[0])


def test_every_import_points_down():
    up = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets if room(b) > room(a))
    assert not up, "imports that point up a floor: " + "; ".join(up)


# Inside a room, its parts from the bottom up: an import points to a lower row only. A part is a
# module, or a sub-package taken whole (pipeline/data, pipeline/eval, pipeline/train). A new
# module takes the row its imports put it in.
FLOORS = {
    "pipeline": [
        {"errors", "env", "files"},  # no imports of ours
        {"outdir", "configio", "console", "cluster"},
        {"remote"},  # Location: a path here or on object storage
        {"runtime", "tracking"},
        {"data"},
        {"model_dir"},  # a model directory read back (below the verbs that read one)
        {"model_source"},
        {"eval"},
        {"train"},  # the training loop evaluates (eval), never the other way
        {"prepare", "pretrain"},  # the stages' scripts
    ],
    "tuning": [
        {"encode", "finetune_config", "inputs", "paper", "rows", "schedule", "space"},
        {"card", "report", "task_model"},
        {"evaluation"},
        {"finetune"},
        {"predict", "tracking", "trials"},
        {"finetune_cli", "search", "serve"},
        {"sweep"},
    ],
}


def part(name: str) -> tuple[str, str] | None:
    """(room, part) of a module below a room's package, None for the package itself."""
    pieces = name.split(".")
    return (pieces[0], pieces[1]) if len(pieces) > 1 and pieces[0] in FLOORS else None


def test_inside_pipeline_and_tuning_every_import_points_down():
    floor = {(r, p): i for r, rows in FLOORS.items() for i, row in enumerate(rows) for p in row}
    placed = {part(n) for n in modules()} - {None}
    assert placed <= set(floor), f"parts without a row in FLOORS: {sorted(placed - set(floor))}"
    up = sorted(
        f"{a} -> {b}"
        for a, targets in graph().items()
        for b in targets
        if part(a) and part(b) and part(a)[0] == part(b)[0] and part(a) != part(b)
        if floor[part(b)] >= floor[part(a)]
    )
    assert not up, "imports that point sideways or up inside a room: " + "; ".join(up)


# What a module may import inside a function rather than at its top: a dependency that costs a
# command's start-up (`gpt1 --help` answers without any of them) or that is optional.
HEAVY = {
    "torch", "ray", "mlflow", "pyarrow", "transformers", "tokenizers", "safetensors", "numpy", "pandas",
    "boto3", "spacy", "ftfy", "huggingface_hub", "matplotlib", "fastapi", "starlette", "uvicorn", "yaml",
}  # fmt: skip


def _imports(name: str, path: Path, known: set[str], where) -> list[tuple[str, int]]:
    """(module, line) of each import in the nodes `where` yields: one of ours by its module,
    another's by its top-level package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in where(ast.parse(path.read_text())):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
            targets = [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            ours = _lazy_export(t)
            while ours and ours not in known:
                ours = ours.rpartition(".")[0]
            out.append((ours or t.split(".")[0], node.lineno))
    return out


def _lazy_export(target: str) -> str:
    """`model.build` as the module that defines it (model.network): the model package exports its
    names lazily (model/__init__.py's _WHERE), so importing one imports that module."""
    import model

    package, _, name = target.partition(".")
    return f"model.{model._WHERE[name]}" if package == "model" and name in model._WHERE else target


def _top_level(tree: ast.Module):
    for node in tree.body:
        yield from ast.walk(node) if isinstance(node, (ast.Import, ast.ImportFrom, ast.If, ast.Try)) else ()


def _in_functions(tree: ast.Module):
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from (n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))


def test_our_modules_are_imported_at_the_top_unless_they_bring_a_heavy_dependency():
    """The import rule: the project's own modules are imported at the top of a module. Inside a
    function only where the module imported brings, at its own top or through ours, a dependency
    in HEAVY: so that `gpt1 --help` and a refusal before Ray cost no torch, Ray or MLflow start-up."""
    mods = modules()
    known = set(mods)
    top = {name: _imports(name, path, known, _top_level) for name, path in mods.items()}
    heavy: dict[str, bool] = {}

    def brings_heavy(name: str, seen: frozenset = frozenset()) -> bool:
        if name not in heavy:
            parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
            found = [t for t, _ in top[name]] + [p for p in parents if p in known]
            heavy[name] = any(
                t in HEAVY or (t in known and t not in seen and brings_heavy(t, seen | {name})) for t in found
            )
        return heavy[name]

    late = sorted(
        f"{path.relative_to(ROOT)}:{line} imports {target} inside a function"
        for name, path in mods.items()
        for target, line in _imports(name, path, known, _in_functions)
        if target in known and target != name and not brings_heavy(target)
    )
    assert not late, "import these at the top (they bring nothing heavy): " + "; ".join(late)
    assert (
        brings_heavy("pipeline.remote") and brings_heavy("pipeline.train.loop") and brings_heavy("model.gpt")
    )
    assert (
        not brings_heavy("pipeline.errors")
        and not brings_heavy("gpt1.cli")
        and not brings_heavy("model.config")
    )


def test_every_verbs_help_imports_neither_torch_nor_ray_nor_mlflow():
    """`gpt1 VERB --help` answers in a fraction of a second: none of the heavy libraries is
    imported to print it (an import at a module's top that brings one would, silently)."""
    import subprocess
    import sys

    from gpt1.cli import VERBS

    code = (
        "import sys\n"
        "from gpt1.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'ray', 'mlflow', 'transformers') if m in sys.modules])"
    )
    for verb in VERBS:
        out = subprocess.run(
            [sys.executable, "-c", code, verb, "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert out.stdout.strip().splitlines()[-1] == "[]", (
            f"gpt1 {verb} --help: {out.stdout[-300:]}{out.stderr[-2000:]}"
        )


def test_no_import_circles():
    g = graph()
    # Package __init__ files re-export their modules; an import of the package is an import of them.
    edges = {a: {b for b in targets if b != a.rpartition(".")[0]} for a, targets in g.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(trail[trail.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles: " + "; ".join(circles)


def test_the_layout_reader_sees_real_imports():
    """The checks above are only as good as the graph: it holds arrows we know are there."""
    g = graph()
    assert "model.gpt" in g["model.weights"] or "model.config" in g["model.weights"]
    assert "pipeline.train.config" in g["pipeline.train.loop"]
    assert "tuning.finetune_cli" in g["gpt1.cli"] and "pipeline.data.prepare_cli" in g["gpt1.cli"]
    assert imports_of("pipeline.pretrain", modules()["pipeline.pretrain"], set(g)) == {
        "pipeline.train.pretrain_cli"
    }


def test_no_module_imports_a_stage_entry_file():
    known = set(modules())
    uses = {**graph(), **{name: imports_of(name, path, known) for name, path in scripts().items()}}
    bad = sorted(f"{a} -> {b}" for a, targets in uses.items() for b in targets if b in ENTRY_FILES)
    assert not bad, "imports of a stage's entry file (import its module instead): " + "; ".join(bad)


def _runs_as_script(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)


def test_entry_files_are_thin_and_the_only_scripts():
    """An entry file defines nothing and imports only its stage's module; a module that is
    imported is never also run as a script (gpt1.cli, the console command, excepted)."""
    mods = modules()
    for entry, target in ENTRY_FILES.items():
        tree = ast.parse(mods[entry].read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))], entry
        assert imports_of(entry, mods[entry], set(mods)) == {target}, entry
    scripts_ = sorted(n for n, p in mods.items() if _runs_as_script(ast.parse(p.read_text())))
    assert scripts_ == sorted([*ENTRY_FILES, "gpt1.cli"])


def test_every_module_says_its_job():
    missing = sorted(
        n
        for n, p in {**modules(), **scripts()}.items()
        if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()
    )
    assert not missing, "modules without a docstring that says their job: " + ", ".join(missing)


def test_only_the_storage_module_tells_local_paths_from_uris():
    """pipeline/remote.py decides what is object storage (Location, filesystem): a `"://" in`
    test elsewhere would fork that rule (file:// is local everywhere)."""
    import re

    forked = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in [*modules().values(), *sorted((ROOT / "bench").glob("*.py"))]
        if path.relative_to(ROOT).as_posix() != "pipeline/remote.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"""["']://["']\s+(not\s+)?in\b""", line)
    ]
    assert not forked, forked
    # Callers hold a Location and ask it what they need (a file's bytes, a listing, a lock), not
    # which side it is on: the one question lives in the storage module.
    asking = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in modules().values()
        if path.relative_to(ROOT).as_posix() != "pipeline/remote.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "is_remote(" in line
    ]
    assert not asking, asking


def test_only_the_env_module_reads_environment_variables_and_the_docs_list_each():
    """pipeline/env.py names every variable the project reads; a read elsewhere would be a
    setting nobody can find."""
    import re

    from pipeline import env

    reads = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in modules().values()
        if path.relative_to(ROOT).as_posix() != "pipeline/env.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"os\.environ\.get\(|os\.getenv\(|(?<!del )os\.environ\[[^]]+\](?!\s*=)", line)
    ]
    assert not reads, reads
    listed = (ROOT / "docs" / "whats-here.md").read_text()
    assert all(f"`{name}`" in listed for name in env.VARIABLES), listed


def test_every_module_is_named_in_architecture_md():
    """A new module gets its line in ARCHITECTURE.md: a reader looks there first."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    missing = [
        str(path.relative_to(ROOT))
        for path in modules().values()
        if path.stem != "__init__" and f"`{path.stem}`" not in text and f"{path.stem}.py" not in text
    ]
    assert not missing, "modules ARCHITECTURE.md does not name: " + ", ".join(missing)
