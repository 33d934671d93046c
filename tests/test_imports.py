"""The package's import graph, read from the source (imports inside functions too): no circles
inside tuner or mnist_net, and mnist_net never imports the tuner, Ray or Optuna."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mnist_net", "tuner")


def imports(path: Path) -> set[str]:
    """Every project module `path` imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if node.module in PACKAGES:  # from tuner import budget, stats
                found |= {f"{node.module}.{a.name}" for a in node.names}
            elif top in PACKAGES:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
    return found


def graph() -> dict[str, set[str]]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).glob("*.py"):
            name = pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"
            out[name] = imports(path) - {name}
    return out


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import circle, if there is any (depth-first search, three colours)."""
    state, path = {}, []

    def visit(n):
        state[n] = "open"
        path.append(n)
        for d in sorted(g.get(n, ())):
            if state.get(d) == "open":
                return path[path.index(d):] + [d]
            if d in g and d not in state and (found := visit(d)):
                return found
        state[n] = "done"
        path.pop()
        return None

    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_circle_inside_the_packages():
    g = graph()
    assert {"tuner.search", "tuner.budget", "tuner.calibrate", "mnist_net.engine"} <= set(g)
    assert cycle(g) is None, " -> ".join(cycle(g))


def test_the_checker_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_mnist_net_knows_nothing_of_tuning():
    for path in (ROOT / "mnist_net").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"tuner", "ray", "optuna"}, path.name
