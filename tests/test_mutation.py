"""The mutation tool (bench/mutation.py): which of the money suite's tests a mutant runs against, and
that a worker's copy of the tree is the code its tests and their subprocesses load."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.mutation import MONEY_SUITE, ROOT, SUITE_OPTIONS, environment, reached, selected_tests, worker_copy

PHASES = ("setup", "call", "teardown")
node_ids = st.lists(st.from_regex(r"tests/[a-z]{1,3}\.py::t[a-z0-9\[\]|-]{0,6}", fullmatch=True), unique=True)


@given(order=node_ids, data=st.data())
def test_a_line_runs_the_tests_that_ran_it_in_the_suites_order(order: list[str], data: st.DataObject) -> None:
    ran = data.draw(st.lists(st.sampled_from(order), min_size=1, unique=True)) if order else []
    contexts = {f"{t}|{data.draw(st.sampled_from(PHASES))}" for t in ran}
    chosen = selected_tests(contexts, order)
    if not contexts:
        assert chosen is None  # nothing says who ran it: the whole suite
        return
    assert chosen == [t for t in order if t in set(ran)]


@given(order=node_ids.filter(bool), data=st.data())
def test_a_line_run_outside_any_test_runs_the_whole_suite(order: list[str], data: st.DataObject) -> None:
    """A subprocess started without the test's environment, or code run at import, names no test:
    any test might depend on it."""
    ran = data.draw(st.lists(st.sampled_from(order), unique=True))
    assert selected_tests({"", *(f"{t}|call" for t in ran)}, order) is None


def test_a_test_the_run_did_not_order_runs_the_whole_suite() -> None:
    assert selected_tests({"tests/a.py::t|call"}, ["tests/a.py::u"]) is None


def fixture_scopes(path: Path) -> set[str]:
    scopes = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("pytest.fixture", "fixture"):
            for kw in node.keywords:
                if kw.arg == "scope":
                    scopes.add(ast.unparse(kw.value))
    return scopes


def test_the_money_suite_shares_no_fixture_between_tests() -> None:
    """Running only the tests that ran a line is exact only if no test's outcome depends on a fixture
    another test set up (selected_tests's docstring): every fixture the suite sees is per test."""
    files: set[Path] = set()
    for arg in MONEY_SUITE[len(SUITE_OPTIONS) :]:
        path = ROOT / arg
        files.update(path.rglob("*.py") if path.is_dir() else {path})
        for parent in [path, *path.parents]:
            if parent == ROOT.parent:
                break
            if (parent / "conftest.py").exists():
                files.add(parent / "conftest.py")
    wider = {str(f.relative_to(ROOT)): s for f in sorted(files) if (s := fixture_scopes(f))}
    assert wider == {}, "widen selected_tests to the fixture's reach, then allow it here"


def test_a_workers_copy_is_the_code_its_subprocesses_load(tmp_path: Path) -> None:
    """A deliberate mutant in the copy (``python -m tillplug`` exits 97 at once) is what a daemon
    started as the money suite starts them runs; the work tree is untouched."""
    tree = worker_copy(ROOT, tmp_path / "tree")
    for needed in ("tillplug/flows/points.py", "tests/flows", "bench/mutation_contexts.py", "pyproject.toml"):
        assert (tree / needed).exists(), needed
    assert not (tree / ".venv").exists()
    main = tree / "tillplug" / "__main__.py"
    main.write_text("raise SystemExit(97)\n" + main.read_text())
    ran = subprocess.run([sys.executable, "-m", "tillplug", "--help"], cwd=tree, env=environment(tree), timeout=60)
    assert ran.returncode == 97
    where = subprocess.run(
        [sys.executable, "-c", "import tillplug.flows.points as p; print(p.__file__)"],
        cwd=tree,
        env=environment(tree),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip() == str(tree / "tillplug" / "flows" / "points.py")
    assert "SystemExit(97)" not in (ROOT / "tillplug" / "__main__.py").read_text()


PROBE = """
import subprocess, sys
from tillplug.engine.clock import InFlight

def test_in_process():
    InFlight(1.0).sent("k")

def test_in_a_subprocess():
    code = "from tillplug.engine.clock import InFlight; InFlight(1.0).may_land('k')"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

def test_in_a_subprocess_with_an_environment_of_its_own():
    code = "from tillplug.engine.clock import in_flight_window; in_flight_window(1.0, 2.0)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env={"PATH": "/usr/bin"}, cwd="tillplug/..")
"""


@pytest.mark.slow
def test_the_unmutated_run_names_the_test_that_ran_each_line_in_its_subprocesses_too(tmp_path: Path) -> None:
    tree = worker_copy(ROOT, tmp_path / "tree")
    (tree / "tests" / "test_probe.py").write_text(PROBE)
    seen = reached([*SUITE_OPTIONS, "tests/test_probe.py"], 120, tree)
    assert seen.outcome == "survived"
    probe = "tests/test_probe.py::test_"
    assert seen.order == [
        f"{probe}in_process",
        f"{probe}in_a_subprocess",
        f"{probe}in_a_subprocess_with_an_environment_of_its_own",
    ]
    clock = Path(tree / "tillplug/engine/clock.py").read_text().splitlines()

    def contexts_of(definition: str) -> set[str]:
        start = next(n for n, line in enumerate(clock, 1) if line.strip().startswith(f"def {definition}("))
        body = {n: c for n, c in seen.contexts["tillplug/engine/clock.py"].items() if n > start}
        return body[min(body)]  # the first line of its body that ran

    assert contexts_of("sent") == {f"{probe}in_process|call"}
    assert contexts_of("may_land") == {f"{probe}in_a_subprocess|call"}
    assert selected_tests(contexts_of("may_land"), seen.order) == [f"{probe}in_a_subprocess"]
    # A subprocess given an environment of its own is not measured: its lines count as not reached
    # (a survivor in the report, never a kill), which is why the suite's subprocesses inherit theirs.
    start = next(n for n, line in enumerate(clock, 1) if line.startswith("def in_flight_window("))
    end = next(n for n, line in enumerate(clock, 1) if n > start and line[:1] not in ("", " ", ")"))
    assert not any(start < n < end for n in seen.contexts["tillplug/engine/clock.py"])
