"""The layer rules of DESIGN.md that hold today, checked on the source (no import side effects).

- ``domain/`` is pure: it imports only the standard library, other ``domain`` modules and
  ``intents_mm.errors`` (the project's own exception types);
- no product module imports the simulated venue (``intents_mm.sim``) except the entry points that run
  it (``simulate``, ``bench``, ``bench_venue``, ``commands``, ``cli``, ``distributed``).

(Issue 15 adds the rest: services import no adapter and no other service, no import circles.)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "intents_mm"
SIM_USERS = {"simulate", "bench", "bench_venue", "commands", "cli", "distributed"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_domain_imports_only_the_standard_library() -> None:
    bad = {}
    for path in sorted((SRC / "domain").glob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            allowed = (
                top in sys.stdlib_module_names
                or name.startswith("intents_mm.domain")
                or name == "intents_mm.errors"
            )
            if not allowed:
                bad.setdefault(path.name, []).append(name)
    assert not bad, f"domain modules importing outside the standard library: {bad}"


def test_only_the_entry_points_import_the_simulated_venue() -> None:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "sim" or rel.stem in SIM_USERS:
            continue
        if any(name == "intents_mm.sim" or name.startswith("intents_mm.sim.") for name in _imports(path)):
            bad.append(str(rel))
    assert not bad, f"product modules importing intents_mm.sim: {bad}"
