"""The house's rules, checked: one owner of the run folder's names, no import circle, small functions."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "voxtune"
NAMES = ("config.yaml", "metrics.json", "checkpoints", "last.pt", "best.pt", "tb", "trial.json", "search.json",
         "leaderboard.csv", "best.json", "summary.json", "report.html", "trials", "bench.json", "bench.md",
         "speedup.png", "runs", "stale", "bench-code.json")


def _modules() -> dict[str, ast.Module]:
    return {p.relative_to(SRC).as_posix(): ast.parse(p.read_text()) for p in sorted(SRC.rglob("*.py"))}


def _path_parts(tree: ast.Module) -> set[str]:
    """String constants that are joined onto a path (`x / "name"`) or are a whole file name."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and isinstance(side.value, str):
                    found.add(side.value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and node.value in NAMES:
            found.add(node.value)
    return found & set(NAMES)


def test_only_the_layout_names_the_run_folders_files():
    """RUN, TRAIN and BENCH paths come from voxtune.layout; no other module joins their names itself."""
    spelled = {name: sorted(_path_parts(tree)) for name, tree in _modules().items() if name != "layout.py"}
    assert {k: v for k, v in spelled.items() if v} == {}


def test_the_layout_check_sees_a_name_joined_by_hand():
    tree = ast.parse('run_dir / "trials" / trial_id / "metrics.json"\nopen("leaderboard.csv")')
    assert _path_parts(tree) == {"trials", "metrics.json", "leaderboard.csv"}


def _imports(name: str, tree: ast.Module) -> set[str]:
    """voxtune modules `name` imports, at module level or inside a function."""
    package = ("voxtune." + name[:-3].replace("/", ".")).removesuffix(".__init__")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("voxtune"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("voxtune"))
    return out - {package}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, stack, seen = [], [], set()

    def visit(node: str) -> None:
        if node in stack:
            found.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    return found


def test_no_import_circle():
    trees = _modules()
    names = {("voxtune." + n[:-3].replace("/", ".")).removesuffix(".__init__"): t for n, t in trees.items()}
    graph = {m: {i for i in _imports(n, t) if i in names}
             for (m, t), n in zip(names.items(), trees)}
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]  # the check itself


@pytest.mark.parametrize("limit_lines, limit_function", [(400, 80)])
def test_files_and_functions_stay_small(limit_lines, limit_function):
    long_files = {n: len(p.read_text().splitlines()) for n, p in
                  ((p.relative_to(SRC).as_posix(), p) for p in SRC.rglob("*.py"))}
    assert {n: k for n, k in long_files.items() if k > limit_lines} == {}
    long_functions = {f"{n}:{f.name}": f.end_lineno - f.lineno + 1 for n, t in _modules().items()
                      for f in ast.walk(t) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and f.end_lineno - f.lineno + 1 > limit_function}
    assert long_functions == {}
