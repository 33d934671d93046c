"""Security properties of the code in mnist_net/ and tuner/, checked on the syntax tree of every
source file. README "Reliability and security" cites these tests; the checksummed pickle is
tests/test_download.py, what can reach the local Ray is tests/test_ray_exposure.py.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "mnist_net").rglob("*.py"), *(ROOT / "tuner").rglob("*.py")])


def calls_to(module: str, names: set[str]) -> list[tuple[Path, ast.Call, dict]]:
    """Every call `module.name(...)` (or `name(...)` after `from module import name`) in SOURCES,
    with the module's simple `x = ...` assignments to look up a variable argument."""
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module == module for a in node.names if a.name in names}
        assigned = {t.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr in names and isinstance(f.value, ast.Name)
                    and f.value.id == module) or (isinstance(f, ast.Name) and f.id in imported):
                found.append((path, node, assigned))
    return found


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def test_every_torch_load_is_weights_only():
    loads = calls_to("torch", {"load"})
    assert loads, "no torch.load found: is SOURCES right?"
    for path, call, _ in loads:
        kw = {k.arg: k.value for k in call.keywords}
        assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
            f"{where(path, call)}: torch.load without weights_only=True can run code from the file"


def test_every_subprocess_gets_an_argument_list_and_no_shell():
    assert calls_to("os", {"system", "popen"}) == [], "os.system/os.popen run a shell"
    assert calls_to("subprocess", {"getoutput", "getstatusoutput"}) == [], "these run a shell"
    runs = calls_to("subprocess", {"run", "Popen", "call", "check_call", "check_output"})
    assert runs, "no subprocess call found: is SOURCES right?"
    for path, call, assigned in runs:
        shell = {k.arg: k.value for k in call.keywords}.get("shell")
        assert shell is None or (isinstance(shell, ast.Constant) and shell.value is False), where(path, call)
        args = call.args[0] if call.args else {k.arg: k.value for k in call.keywords}.get("args")
        if isinstance(args, ast.Name):
            args = assigned.get(args.id)
        assert isinstance(args, ast.List), f"{where(path, call)}: pass an argument list, not a string"


def test_no_pickle_is_loaded_but_the_checksummed_one():
    """pickle.load(s)/Unpickler appear only in mnist_net/download.py, whose pickle_to_idx checks the
    SHA-256 first (tests/test_download.py::test_tampered_pickle_is_refused_before_unpickling)."""
    users = {where(p, c) for p, c, _ in calls_to("pickle", {"load", "loads", "Unpickler"})}
    assert users == set(), f"unpickling outside download.pickle_to_idx: {users}"
    subclasses = [f"{p.relative_to(ROOT)}:{n.name}" for p in SOURCES for n in ast.walk(ast.parse(p.read_text()))
                  if isinstance(n, ast.ClassDef) and any(ast.unparse(b) == "pickle.Unpickler" for b in n.bases)]
    assert subclasses == ["mnist_net/download.py:NumpyOnlyUnpickler"]
