"""The library takes Python objects; runs from config files and command lines sit above it.

docs/architecture.md draws the packages with imports running downwards only. Checked here on the
source (every import statement, those inside functions included): the library below
``pssr.experiments`` imports neither it nor ``pssr.cli``, and evaluation loads no classifier through
the trainers (checkpoint model specs live in ``pssr.models.specs``).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pssr"
LIBRARY = ("data", "models", "attacks", "defense", "train", "evaluation", "utils")
LIBRARY_MODULES = ("defaults.py", "config.py", "registry.py", "distributed.py", "interop.py")
ABOVE_THE_LIBRARY = ("pssr.experiments", "pssr.cli")


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _library_files() -> list[Path]:
    files = [p for pkg in LIBRARY for p in sorted((SRC / pkg).rglob("*.py"))]
    return files + [SRC / m for m in LIBRARY_MODULES]


def _within(mod: str, package: str) -> bool:
    return mod == package or mod.startswith(package + ".")


def _breaks(files: list[Path], packages: tuple[str, ...]) -> list[tuple[str, str]]:
    """(file, imported module or name) pairs of ``files`` that import from ``packages``."""
    bad = []
    for f in files:
        rel = f.relative_to(SRC).as_posix()
        for mod in sorted(_imports(f)):
            if any(_within(mod, p) for p in packages):
                bad.append((rel, mod))
    return bad


def test_the_library_imports_no_run_or_command_code() -> None:
    assert len(_library_files()) > 40  # the scan sees the library
    assert not _breaks(_library_files(), ABOVE_THE_LIBRARY)


def test_evaluation_does_not_import_the_trainers() -> None:
    assert not _breaks(sorted((SRC / "evaluation").rglob("*.py")), ("pssr.train",))
