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


# Imports between tuner's modules in the flat layout (23 files, commit 4997d4a), counted as arrows() counts them.
FLAT_LAYOUT_ARROWS = 73


def arrows(g: dict[str, set[str]]) -> int:
    """Module-to-module imports inside tuner (file level: tuner.plan.budget -> tuner.space is one)."""
    return sum(len({d for d in deps if d.startswith("tuner")}) for name, deps in g.items() if name.startswith("tuner"))


def test_fewer_import_arrows_than_the_flat_layout():
    g = graph()
    assert arrows(g) < FLAT_LAYOUT_ARROWS, sorted((len(v), k) for k, v in g.items() if k.startswith("tuner"))[-5:]
    assert arrows({"tuner.a": {"tuner.b", "mnist_net.c"}, "tuner.b": set(), "mnist_net.c": {"tuner.a"}}) == 1


def test_the_checker_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_mnist_net_knows_nothing_of_tuning():
    for path in (ROOT / "mnist_net").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"tuner", "ray", "optuna"}, path.name


def old_module(name: str):
    """tuner.<name> as tuner's finder builds it for an old path. Built here through the finder itself: an editable
    install of another checkout that still has the file would otherwise serve its own copy."""
    import importlib.util
    import sys

    import tuner

    finder = next(f for f in sys.meta_path if isinstance(f, tuner._OldPaths))
    spec = finder.find_spec(f"tuner.{name}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_merged_modules_path_still_finds_its_names():
    """Ray pickles the searcher, the stopper's settings and their plan under the module paths they had when the
    experiment was saved: every path in tuner.MOVED is gone from the source, its homes import, and it finds each
    name where it lives now. A folder-layout path (tuner.run.searcher) imports as any module does."""
    import importlib

    import tuner
    from tuner import settings, space
    from tuner.plan import placement, search_plan
    from tuner.run import study

    for old, homes in tuner.MOVED.items():
        assert not (ROOT / "tuner" / f"{old.replace('.', '/')}.py").exists(), old
        for home in homes:
            importlib.import_module(f"tuner.{home}")
    moved = {"fidelity": {"BudgetPlan": settings.BudgetPlan, "Throughput": settings.Throughput,
                          "Fidelity": space.Fidelity, "LADDER": space.LADDER, "rungs": space.rungs},
             "budget": {"BudgetPlan": settings.BudgetPlan, "expected_epochs": space.expected_epochs},
             "plan.calibrate": {"calibrate": search_plan.calibrate}, "calibrate": {"calibrate": search_plan.calibrate},
             "plan.nodes": {"check_nodes": placement.check_nodes, "one_precision": placement.one_precision},
             "resources": {"DEFAULT_GPU_SHARE": settings.DEFAULT_GPU_SHARE},
             "run.searcher": {"LiveOptunaSearch": study.LiveOptunaSearch},
             "searcher": {"LiveOptunaSearch": study.LiveOptunaSearch}}
    for old, names in moved.items():
        module = old_module(old)
        assert {n: getattr(module, n) for n in names} == names, old
    assert importlib.import_module("tuner.run.searcher").live_searcher is study.live_searcher
    assert importlib.import_module("tuner.plan.nodes").check_nodes is placement.check_nodes
