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


def imported_files(path: Path) -> set[Path]:
    """The package's files ``path`` imports, anywhere in it (a ``TYPE_CHECKING`` block or a function
    too: either still ties the two files together), each name resolved to the file that holds it."""
    found = set()
    for name in imports_of(path):
        parts = name.split(".")
        while parts:
            base = PACKAGE.parent.joinpath(*parts)
            if (file := base.with_suffix(".py")).is_file() or (file := base / "__init__.py").is_file():
                found.add(file)
                break
            parts.pop()
    return found


def room_circles() -> list[list[str]]:
    """Every import circle between the files of one room (one folder of the package)."""
    graph = {
        path: {f for f in imported_files(path) if f.parent == path.parent and f != path}
        for path in PACKAGE.rglob("*.py")
    }
    circles: list[list[str]] = []
    finished: set[Path] = set()

    def visit(path: Path, trail: list[Path]) -> None:
        if path in trail:
            circle = sorted(str(p.relative_to(PACKAGE.parent)) for p in trail[trail.index(path) :])
            if circle not in circles:
                circles.append(circle)
            return
        if path not in finished:
            for imported in sorted(graph[path]):
                visit(imported, [*trail, path])
            finished.add(path)

    for path in sorted(graph):
        visit(path, [])
    return circles


def test_no_room_has_an_import_circle():
    """A room's modules import one another in one direction (#23: spool.py and share.py imported each
    other; one of them had to be imported first, and a module-level use of the other would break)."""
    assert room_circles() == []
