"""The package's layout: no import cycles, and searching never loads torch or the training code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fashionrec.quality.config import TrainConfig
from fashionrec.quality.train import train

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fashionrec"
TRAINING_ONLY = ("torch", "fashionrec.quality", "fashionrec.encoders.adapter", "fashionrec.encoders.backbones")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere (module level, in functions, under `if`)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from package import submodule` imports the submodule; `from module import name` the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import fashionrec.x.y` where only fashionrec.x is ours
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in files}
    return {module_name(path): imported_modules(path, modules) for path in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "fashionrec.encoders.runtimes" in graph and "fashionrec.quality.train" in graph  # the walk saw the tree
    assert "fashionrec.quality.evaluate" in graph["fashionrec.quality.train"]  # ... and resolved imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = import_graph()
    graph["fashionrec.encoders.spec"] = graph["fashionrec.encoders.spec"] | {"fashionrec.search"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and "fashionrec.encoders.spec" in cycle


def loaded_after(code: str) -> list[str]:
    """The modules of TRAINING_ONLY that a fresh interpreter has loaded after running `code`."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    return [m for m in modules if any(m == t or m.startswith(f"{t}.") for t in TRAINING_ONLY)]


def test_searching_with_the_base_encoder_loads_no_training_code(
    built_index: tuple[Path, object], catalog_photo: Path
) -> None:
    code = (
        "from fashionrec import Recommender\n"
        f"recommender = Recommender.open({str(built_index[0])!r})\n"
        f"assert len(recommender.similar_to_image({str(catalog_photo)!r}, k=3)) == 3\n"
    )
    assert loaded_after(code) == []


@pytest.mark.slow
def test_a_trained_encoder_runs_without_training_code(
    built_index: tuple[Path, object], catalog_photo: Path, tmp_path: Path
) -> None:
    config = TrainConfig(epochs=1, batch_size=64, hidden=32, dim=16, members=1, base_components=8)
    train(built_index[0], tmp_path / "model", config, progress=False, log=lambda _: None)
    code = (
        "from fashionrec.encoders import load_encoder\nfrom fashionrec.images import open_image\n"
        f"encoder = load_encoder({str(tmp_path / 'model')!r})\n"
        f"assert encoder.embed([open_image({str(catalog_photo)!r})]).shape[0] == 1\n"
    )
    assert loaded_after(code) == []
