"""The layout's promises: the core stands on torch alone, `import caer_lightning` is cheap, no module imports
another in a circle, and every reach into a private name of torch, Lightning or Triton is in `_compat.py`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "caer_lightning"
CORE = (
    "caer_lightning", "caer_lightning.ops.op", "caer_lightning.functional", "caer_lightning.activation",
    "caer_lightning.swap", "caer_lightning.param_groups", "caer_lightning.optim", "caer_lightning.record",
    "caer_lightning.hf_record", "caer_lightning.statistics", "caer_lightning._compat",
)
HEAVY = ("lightning", "pytorch_lightning", "lightning_fabric", "matplotlib", "tensorboard", "timm", "torchmetrics")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_core_imports_neither_lightning_nor_matplotlib():
    code = "\n".join(f"import {module}" for module in CORE)
    code += "\nfrom caer_lightning import CAReLU, swap_activations, carelu_param_groups"
    code += "\nimport torch\nCAReLU()(torch.randn(2, 3)).sum().backward()"
    assert _loaded_after(code) == []


@pytest.mark.slow
def test_the_callback_is_a_lazy_attribute():
    assert _loaded_after("import caer_lightning\nassert 'CAReLUCallback' in dir(caer_lightning)") == []
    assert "lightning" in _loaded_after("from caer_lightning import CAReLUCallback")
    import caer_lightning

    with pytest.raises(AttributeError, match="has no attribute 'Callback'"):
        caer_lightning.Callback  # noqa: B018


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports_at_load(path: Path, modules: dict[str, Path]) -> set[str]:
    """The caer_lightning modules `path` imports when it is loaded (module level, not inside functions or
    `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module in modules:
                    found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports_at_load(path, modules) for name, path in modules.items()}
    for name in graph:  # importing a.b.c loads a and a.b first: that is no edge of a circle
        graph[name] -= {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def walk(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return path[path.index(child):] + [child]
            if child not in state and (circle := walk(child, path + [child])):
                return circle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (circle := walk(node, [node])):
            return circle
    return None


def test_no_module_imports_another_in_a_circle():
    graph = import_graph()
    assert "caer_lightning.callbacks.carelu" in graph["caer_lightning.callbacks"]  # the graph sees imports
    assert find_circle(graph) is None, find_circle(graph)
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the finder finds one


CORE_TIER = ("caer_lightning", "caer_lightning.ops", "caer_lightning.callsites", "caer_lightning.functional",
             "caer_lightning.activation", "caer_lightning.statistics", "caer_lightning.swap", "caer_lightning.record",
             "caer_lightning.hf_record", "caer_lightning.lr_policy", "caer_lightning.param_groups",
             "caer_lightning.optim", "caer_lightning.arguments", "caer_lightning.rank_zero", "caer_lightning._compat")


def _in_core(module: str) -> bool:
    return module == "caer_lightning" or any(module == c or module.startswith(f"{c}.") for c in CORE_TIER[1:])


def test_the_core_imports_no_module_of_the_tiers_below():
    graph = import_graph()
    below = {module: sorted(i for i in imports if not _in_core(i)) for module, imports in graph.items()
             if _in_core(module)}
    assert {module: imports for module, imports in below.items() if imports} == {}
    assert not _in_core("caer_lightning.callbacks.carelu") and _in_core("caer_lightning.ops.op")


def _own_names() -> set[str]:
    """Every name caer_lightning defines or assigns (its own private names are its business)."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


def private_reaches(path: Path, own: set[str]) -> list[str]:
    """`from x import _y` of another package, and `something._y` where `_y` is no name of caer_lightning."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("caer_lightning"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if node.attr not in own:
                found.append(ast.unparse(node))
    return found


def test_private_reaches_are_in_compat_only():
    own = _own_names() - {"_last_lr", "_schedulers", "_average_model", "_pack_args"}
    elsewhere = {str(p.relative_to(PACKAGE)): r for p in PACKAGE.rglob("*.py")
                 if p.name != "_compat.py" and (r := private_reaches(p, own))}
    assert elsewhere == {}
    assert private_reaches(PACKAGE / "_compat.py", own)  # the check sees the reaches where they are
