"""The import architecture: the contracts in pyproject.toml's ``[tool.importlinter]`` hold, and no module of the
project takes part in an import cycle (imports inside functions count for both).

    python -m pytest tests/test_architecture.py -q
    .venv/bin/lint-imports                         # the contracts alone, from the repository root
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import grimp
import networkx

from tests.conftest import REPO

PACKAGES = ("webui", "backend", "evaluator", "trainer")


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    assert lint.is_file(), f"{lint} is missing: install the test extras (scripts/setup.sh --test)"
    out = subprocess.run(
        [str(lint), "--no-cache", "--no-logo"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, f"lint-imports failed (rc {out.returncode}):\n{out.stdout}\n{out.stderr}"


def _strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """The import graph's cycles as groups of modules that all reach each other."""
    g = networkx.DiGraph((m, n) for m in graph.modules for n in graph.find_modules_directly_imported_by(m))
    return sorted(sorted(c) for c in networkx.strongly_connected_components(g) if len(c) > 1)


def _one_cycle(graph: grimp.ImportGraph, group: list[str]) -> str:
    """A shortest cycle through the group's first module, as ``a -> b -> ... -> a`` with line numbers."""
    start = group[0]
    nxt = next(m for m in sorted(graph.find_modules_directly_imported_by(start)) if m in group)
    chain = [start, *graph.find_shortest_chain(importer=nxt, imported=start)]
    steps = []
    for a, b in itertools.pairwise(chain):
        lines = sorted({d["line_number"] for d in graph.get_import_details(importer=a, imported=b)})
        steps.append(f"{a} (line {', '.join(map(str, lines))})")
    return " -> ".join([*steps, start])


def test_no_import_cycles():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    groups = _strongly_connected(graph)
    assert not groups, "import cycles:\n" + "\n".join(_one_cycle(graph, g) for g in groups)
