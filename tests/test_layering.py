"""The package's rooms import downward only (DESIGN §2): optics → data → models → depth → inference → evaluation →
training, with ``errors`` and ``utils`` below everything. An upward import is how a concept ends up in the wrong
room; this test names each one.

The same check from a shell: ``python -m pytest tests/test_layering.py -q``; the edges are listed on failure.
"""

from __future__ import annotations

import ast
from pathlib import Path

import magicbokeh

PACKAGE_DIR = Path(magicbokeh.__file__).resolve().parent
# Rooms in import order; within DESIGN's fourth tier (depth / inference / evaluation / training) the order is the one
# the code needs: inference picks focus with depth, evaluation runs the inference pipeline, training validates with
# evaluation's metrics.
LAYERS = ("errors", "utils", "optics", "data", "models", "depth", "inference", "evaluation", "training")
RANK = {name: rank for rank, name in enumerate(LAYERS)}
RANK["utils"] = RANK["errors"]  # utils and errors are one floor: utils raises errors, errors imports nothing


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "magicbokeh" else None


def imported_modules(path: Path) -> set[str]:
    """Every ``magicbokeh.*`` module a file imports, at module level or inside functions (lazy imports count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "magicbokeh":  # from magicbokeh import models
                found.update(f"magicbokeh.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("magicbokeh.")}


def upward_edges() -> list[tuple[str, str]]:
    """(file, imported module) pairs where a room imports a room above it."""
    edges = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR.parent)
        source_room = room_of(".".join(relative.with_suffix("").parts))
        if source_room is None or source_room not in RANK:
            continue
        for module in sorted(imported_modules(path)):
            target_room = room_of(module)
            if target_room in RANK and RANK[target_room] > RANK[source_room]:
                edges.append((str(relative), module))
    return sorted(set(edges))


def test_every_room_is_known():
    rooms = {p.name for p in PACKAGE_DIR.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    rooms |= {p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__"}
    assert rooms <= set(RANK), f"rooms without a layer: {sorted(rooms - set(RANK))}"


def test_imports_only_run_downward():
    edges = upward_edges()
    assert not edges, "upward imports:\n" + "\n".join(f"  {source} -> {target}" for source, target in edges)
