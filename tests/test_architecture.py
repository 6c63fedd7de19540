"""The house rules the README's architecture section states, checked on the source itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# offramp's subpackages bottom to top: a module imports only from its own layer or below
LAYERS = ["config", "schema", "policies", "text", "models", "exits", "quality", "planning", "training", "tasks", "serving"]
LEAVES = {"demo"}  # standalone modules that import nothing of offramp


def imports(path: Path, type_checking: bool = False) -> list[tuple[str, int]]:
    """(module, line) of every import in `path`; those under `if TYPE_CHECKING:` only when asked."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                skip |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "offramp":
                out += [(f"offramp.{a.name}", node.lineno) for a in node.names]
            else:
                out.append((node.module, node.lineno))
    return out


def layer_of(module: str) -> str:
    return module.split(".")[1]


def test_offramp_imports_point_down_the_layers():
    bad = []
    for path in sorted((ROOT / "offramp").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if len(rel.parts) == 2 and rel.parts[1] == "__init__":
            continue
        mine = rel.parts[1]
        for module, line in imports(path):
            if not module.startswith("offramp.") or layer_of(module) == mine:
                continue
            theirs = layer_of(module)
            if mine in LEAVES or theirs in LEAVES or LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{rel}.py:{line} ({mine}) imports {module} ({theirs})")
    assert not bad, "imports pointing up the layers:\n" + "\n".join(bad)


def test_the_library_below_ray_imports_no_ray_mlflow_or_pipeline_code():
    bad = [f"{p.relative_to(ROOT)}:{line} {m}" for p in (ROOT / "offramp").rglob("*.py")
           for m, line in imports(p) if m.split(".")[0] in ("ray", "mlflow", "pipelines", "actors")]
    assert not bad, bad


@pytest.mark.parametrize("module", ["offramp.tasks", "offramp.text.tokenize", "offramp.text.words", "offramp.schema",
                                    "pipelines.read"])
def test_light_steps_import_no_torch(module):
    """Read, tokenize and finalize run in Ray tasks whose workers should start fast and stay
    small (a read worker that imported torch held 373 MiB before reading a byte; 152 without)."""
    code = f"import sys, {module}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"], f"{module} pulls in torch/transformers"


def test_no_function_level_imports_of_project_code():
    """Imports of the project's own modules stand at the top of each file (a function-level one
    would hide an import circle); only the task's stage runner is loaded by name, in the actor.
    The exceptions: the command line (pipelines/cli.py), whose commands import their library
    when they run, so that --help and a configuration error answer without torch or Ray; and
    the package's library face (pipelines/__init__.py), loaded on first use so that a Ray
    worker unpickling the corpus reader does not import torch (test_light_steps_import_no_torch)."""
    bad = []
    for folder in ("offramp", "actors", "pipelines"):
        for path in (ROOT / folder).rglob("*.py"):
            if path in (ROOT / "pipelines" / "cli.py", ROOT / "pipelines" / "__init__.py"):
                continue
            tree = ast.parse(path.read_text())
            for fn in ast.walk(tree):
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for node in ast.walk(fn):
                        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                            "offramp", "pipelines", "actors"
                        ):
                            bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}")
    assert not bad, bad
