#!/usr/bin/env python3
"""Live watch of the market maker: the same code as ``intents-mm watch`` (see docs/watch.md).

Run from the repository root, with the virtualenv active or with plain ``python3``:

    python3 scripts/ops/watch_live_mm.py --once
    python3 scripts/ops/watch_live_mm.py --backfill 3

Without the venv active, ``src/`` is put on ``sys.path``; if the project's dependencies are missing
from this interpreter and ``.venv/bin/python`` exists, the script re-runs itself with it; otherwise it
says which packages are missing and how to install them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REEXEC_GUARD = "INTENTS_MM_WATCH_REEXEC"
NEEDED = ("msgspec", "aiohttp", "sqlalchemy", "alembic", "psycopg", "aiosqlite")


def _missing() -> list[str]:
    import importlib.util

    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def _bootstrap() -> None:
    try:
        import intents_mm  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))
    missing = _missing()
    if not missing:
        return
    venv_python = REPO / ".venv" / "bin" / "python"
    in_venv = Path(sys.prefix).resolve() == (REPO / ".venv").resolve()
    if venv_python.is_file() and not in_venv and not os.environ.get(REEXEC_GUARD):
        os.environ[REEXEC_GUARD] = "1"
        os.execv(str(venv_python), [str(venv_python), str(Path(__file__).resolve()), *sys.argv[1:]])
    print(
        f"watch_live_mm: missing Python packages for {sys.executable}: {', '.join(missing)}.\n"
        "  Install the project first (make install), then run it with the venv active\n"
        "  (. .venv/bin/activate) or as .venv/bin/python scripts/ops/watch_live_mm.py",
        file=sys.stderr,
    )
    sys.exit(2)


if __name__ == "__main__":
    _bootstrap()
    from intents_mm.watch import main

    sys.exit(main(sys.argv[1:]))
