"""The package's import graph, read from the source (imports inside functions too): no circles
inside tuner or mnist_net, none between tuner's stage folders, and mnist_net never imports the
tuner, Ray or Optuna."""

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
            folder = ROOT / node.module.replace(".", "/")
            if folder.is_dir():  # from tuner import space; from tuner.run import study
                found |= {f"{node.module}.{a.name}" if (folder / f"{a.name}.py").exists() else node.module
                          for a in node.names}
            elif top in PACKAGES:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
    return found


def graph() -> dict[str, set[str]]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = imports(path) - {name}
    return out


def rooms(g: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph with each of tuner's stage folders as one node (tuner.plan.budget -> tuner.plan)."""
    def room(name: str) -> str:
        return ".".join(name.split(".")[:2])

    out = {}
    for name, deps in g.items():
        out.setdefault(room(name), set()).update(room(d) for d in deps if room(d) != room(name))
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
    assert {"tuner.search", "tuner.plan.budget", "tuner.plan.search_plan", "mnist_net.engine"} <= set(g)
    assert g["tuner.plan.search_plan"] >= {"tuner.plan.budget", "tuner.plan.placement"}  # submodules are read
    assert cycle(g) is None, " -> ".join(cycle(g))


def test_no_circle_between_the_stage_folders():
    folders = rooms(graph())
    assert {"tuner.plan", "tuner.run", "tuner.publish", "tuner.confirm"} <= set(folders)
    assert "tuner.plan" in folders["tuner.run"]  # the run stage reads the plan's SearchPlan
    assert cycle(folders) is None, " -> ".join(cycle(folders))


def test_the_checker_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_mnist_net_knows_nothing_of_tuning():
    for path in (ROOT / "mnist_net").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"tuner", "ray", "optuna"}, path.name
