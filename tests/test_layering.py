"""The package's import graph: no module imports one that imports it back (directly or through
others, counting imports inside functions), and the figures module is a leaf.

The graph is read from the source (ast), so an import hidden in a function body counts as much as a
top-level one; the runtime checks then confirm what ``import destseg_lib.viz`` really loads.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "destseg_lib"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _module_name(path: Path) -> str:
    """``destseg_lib/x.py`` -> "x"; ``destseg_lib/reproduce/grid.py`` -> "reproduce.grid";
    ``destseg_lib/reproduce/__init__.py`` -> "reproduce"; the package's own ``__init__`` -> "__init__"."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


FILES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py")) if p.name != "__main__.py"}
MODULES = sorted(FILES)


def _owner(dotted: str) -> str | None:
    """The module of ``dotted`` (a module, or a name defined in one): its longest known prefix."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in FILES:
            return ".".join(parts[:n])
    return None


def _imports(module: str) -> set[str]:
    """Package modules that ``module`` imports anywhere in its source (relative or absolute)."""
    path = FILES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = [] if module == "__init__" else module.split(".")
    package = here if path.name == "__init__.py" else here[:-1]  # the package relative imports start from
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                base = base + (node.module.split(".") if node.module else [])
            elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
                base = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # from .x import y: y may be a submodule of x, else a name in x
                target = _owner(".".join(base + [alias.name])) or (_owner(".".join(base)) if base else None)
                if target:
                    found.add(target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    target = _owner(alias.name[len(PACKAGE) + 1:])
                    if target:
                        found.add(target)
    found.discard(module)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles(graph: dict) -> list[list[str]]:
    """Every elementary cycle's representative found by depth-first search (empty: a DAG)."""
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_scan_sees_function_local_imports():
    src = "def f():\n    from .train import train\n    from . import metrics\n    import destseg_lib.viz\n"
    tree = ast.parse(src)
    assert sum(isinstance(n, (ast.ImportFrom, ast.Import)) for n in ast.walk(tree)) == 3
    assert "train" in GRAPH["experiment"], "experiment imports train at the top level"
    assert "viz" in GRAPH["experiment"], "experiment imports viz inside a function (_figures)"
    # modules of the reproduce package: their relative imports resolve to the library's modules
    assert {"reproduce.grid", "reproduce.records"} <= GRAPH["reproduce.batch"], GRAPH["reproduce.batch"]
    assert {"config", "paper"} <= GRAPH["reproduce.grid"], GRAPH["reproduce.grid"]


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles (a -> b means a imports b): " + "; ".join(" -> ".join(c) for c in cycles)


def test_viz_is_a_leaf():
    """viz draws arrays and the public data types; of the package it may use only metrics (pure
    numpy, itself a leaf) for the PRO curve, and the atomic file writer (standard library only)."""
    assert GRAPH["viz"] <= {"metrics", "files"}, f"viz imports {sorted(GRAPH['viz'])}"
    assert GRAPH["metrics"] == set(), f"metrics imports {sorted(GRAPH['metrics'])}"
    assert GRAPH["files"] <= {"errors"} and GRAPH["errors"] == set(), (GRAPH["files"], GRAPH["errors"])


def test_nothing_in_the_package_imports_the_notebook_glue():
    users = sorted(m for m, deps in GRAPH.items() if "notebook" in deps)
    assert users == [], f"{users} import destseg_lib.notebook: only the notebooks should"


def _loaded_after(statement: str) -> dict:
    code = (f"import json, sys\n{statement}\n"
            "print(json.dumps({'package': sorted(m for m in sys.modules if m.startswith('destseg_lib')),"
            " 'torch': 'torch' in sys.modules}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=ROOT.parent)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_importing_viz_loads_neither_experiment_nor_train():
    loaded = _loaded_after("import destseg_lib.viz")
    assert loaded["package"] == ["destseg_lib", "destseg_lib.viz"], loaded
    assert not loaded["torch"], "viz should not need torch"


@pytest.mark.slow
@pytest.mark.parametrize("module", ["widgets", "metrics", "viz"])
def test_leaves_do_not_load_the_pipeline(module):
    loaded = _loaded_after(f"import destseg_lib.{module}")
    assert not {"destseg_lib.experiment", "destseg_lib.train", "destseg_lib.notebook"} & set(loaded["package"]), loaded


@pytest.mark.slow
def test_the_package_namespace_still_works():
    loaded = _loaded_after("import destseg_lib as ds\nimport destseg_lib.train as module\n"
                           "import types\nassert isinstance(module, types.ModuleType) and ds.train is module\n"
                           "assert callable(ds.train_model) and ds.train_model is module.train_model\n"
                           "assert ds.get_preset('ci').preset == 'ci' and ds.viz.ANOMALY_CMAP\n"
                           "from destseg_lib import load_or_train, TestImages, Predictions")
    assert "destseg_lib.experiment" in loaded["package"]


# The package's groups, in order (destseg_lib/__init__.py): a module imports only from its own group
# and the groups before it.
GROUPS = [
    ("foundations", {"config", "errors", "files", "precision"}),
    ("data", {"data", "data_checks", "toy"}),
    ("the method", {"synthesis", "textures", "models", "losses", "train", "infer", "checkpoint"}),
    ("evaluation", {"metrics", "baseline", "thresholds", "paper"}),
    ("applications", {"experiment", "cli", "scoring", "fast", "export", "notebook", "widgets", "viz", "reproduce"}),
]


def test_modules_import_only_from_their_group_or_the_groups_before_it():
    level = {m: i for i, (_, members) in enumerate(GROUPS) for m in members}
    grouped = {m for m in MODULES if m != "__init__"}
    assert {m.split(".")[0] for m in grouped} <= set(level), sorted({m.split(".")[0] for m in grouped} - set(level))
    upward = [f"{m} ({GROUPS[level[m.split('.')[0]]][0]}) -> {d} ({GROUPS[level[d.split('.')[0]]][0]})"
              for m in sorted(grouped) for d in sorted(GRAPH[m])
              if d != "__init__" and level[d.split(".")[0]] > level[m.split(".")[0]]]
    assert not upward, "imports against the layering: " + "; ".join(upward)
