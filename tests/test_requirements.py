"""README's first command installs requirements.txt only: everything the server and the
command-line client import must come from it, not from the test tools."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_PACKAGES = ("enigmo", "keys", "messaging")
OURS = {"enigmo", "keys", "messaging", "tests"}


def _pinned(path: Path) -> set[str]:
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        names.add(re.split(r"[<>=!\[ ;]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def _imported_top_levels() -> dict[str, str]:
    found: dict[str, str] = {}
    for package in RUNTIME_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _requires(distribution: str, seen: set[str]) -> set[str]:
    """A distribution and everything it pulls in, as pip would install it."""
    key = distribution.lower().replace("_", "-")
    if key in seen:
        return seen
    seen.add(key)
    try:
        requirements = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return seen
    for requirement in requirements:
        if "extra ==" in requirement:
            continue
        _requires(re.split(r"[<>=!\[ ;(]", requirement, maxsplit=1)[0], seen)
    return seen


def test_every_runtime_import_is_installed_by_requirements_txt():
    """A module the server or the CLI imports is the standard library, ours, or installed by
    requirements.txt (directly or as a dependency) — never only by requirements-test.txt."""
    installed: set[str] = set()
    for name in _pinned(ROOT / "requirements.txt"):
        _requires(name, installed)
    providers = metadata.packages_distributions()
    missing = []
    for module, where in sorted(_imported_top_levels().items()):
        if module in OURS or module in sys.stdlib_module_names or module == "__future__":
            continue
        distributions = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if not distributions & installed:
            missing.append(f"{module} (imported by {where}, from {sorted(distributions) or 'nothing installed'})")
    assert not missing, "not installed by requirements.txt: " + "; ".join(missing)
