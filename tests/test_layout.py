"""docs/layout.md and the package tell the same story: every module is listed, and each imports only
modules listed before it (so data and models know nothing of grids, reports or executors)."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vqlib"


def listed_modules() -> list[str]:
    """The top-level modules and subpackages of docs/layout.md's `vqlib/` block, in order."""
    text = (REPO / "docs" / "layout.md").read_text()
    return re.findall(r"^      (\w+)(?:\.py|/)\s", text, flags=re.MULTILINE)


def top_level(path: Path) -> str:
    """vqlib/models/prior.py -> 'models'; vqlib/grid.py -> 'grid'."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported(source: str, package: list[str]) -> set[str]:
    """The top-level vqlib modules a file in vqlib/<package...>/ imports, relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "vqlib":
                parts = node.module.split(".")[1:]
            else:
                continue
            found.update([parts[0]] if parts else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("vqlib."))
    return found


def test_every_module_is_listed_once():
    listed = listed_modules()
    on_disk = {top_level(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert len(listed) == len(set(listed)), "docs/layout.md lists a module twice"
    assert set(listed) == on_disk, (
        f"missing from docs/layout.md: {sorted(on_disk - set(listed))}; "
        f"listed but absent: {sorted(set(listed) - on_disk)}"
    )


def test_modules_import_only_those_listed_before_them():
    rank = {name: i for i, name in enumerate(listed_modules())}
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = top_level(path)
        if me in ("__init__", "__main__"):
            continue
        package = list(path.relative_to(PACKAGE).parts[:-1])
        for other in imported(path.read_text(), package) & rank.keys():
            if rank[other] > rank[me]:
                upward.append(f"{path.relative_to(REPO)} imports {other}")
    assert not upward, "imports that run up the layers of docs/layout.md: " + "; ".join(upward)


def test_the_check_sees_upward_imports():
    """Relative, absolute and from-package imports are all resolved (so the test above can fail)."""
    source = "from ..grid import run_grid\nimport vqlib.study\nfrom vqlib import reports\nfrom . import vqvae\n"
    assert imported(source, ["models"]) == {"grid", "study", "reports", "models"}
    assert imported("from .config import TrainConfig\nimport torch\n", []) == {"config"}
