"""The house's one rule: the wings (commands, daemon) sit on top; nothing below imports from a wing.

``tillplug/commands`` may use ``tillplug/daemon``, which uses the rooms below (api, engine, flows,
outbox, spool, …); leaf modules at the package root import no room at all.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tillplug"
WINGS = ("tillplug.commands", "tillplug.daemon")
LEAVES = {"errors", "money", "ids", "identifiers", "logs", "net", "procfs"}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("tillplug")}


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def test_no_room_imports_a_wing():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mine = module_of(path)
        for name in imports_of(path):
            wing = next((w for w in WINGS if name == w or name.startswith(w + ".")), None)
            if wing is None or mine.startswith(wing):
                continue
            if mine.startswith("tillplug.commands") or mine == "tillplug.__main__":  # the top wing, the face
                continue
            offenders.append(f"{mine} imports {name}")
    assert offenders == []


def test_the_root_holds_only_leaves_and_the_face():
    loose = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert loose == LEAVES
    for leaf in LEAVES:
        rooms = {n for n in imports_of(PACKAGE / f"{leaf}.py") if n.split(".")[1] not in LEAVES | {"__version__"}}
        assert rooms == set(), f"leaf {leaf} imports {rooms}"
