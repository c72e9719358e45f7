"""The shape of the code: every import points down (model <- pipeline <- tuning <- gpt1), and no
module imports itself back through others. Read from the source with ast, imports inside
functions included, so the shape cannot drift without this failing."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ["model", "pipeline", "tuning", "gpt1"]  # from the bottom floor up


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
            while t and t not in known:  # `from pipeline import config` names a module; `from model import GPT` not
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def room(name: str) -> int:
    return ROOMS.index(name.split(".")[0])


def test_every_import_points_down():
    up = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets if room(b) > room(a))
    assert not up, "imports that point up a floor: " + "; ".join(up)


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
                circles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
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
    assert "pipeline.train_config" in g["pipeline.train_loop"]
    assert "tuning.finetune" in g["gpt1.cli"] and "pipeline.prepare" in g["gpt1.cli"]
