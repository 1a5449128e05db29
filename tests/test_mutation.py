"""The mutation tool (bench/mutation.py): which of the money suite's tests a mutant runs against, and
that a worker's copy of the tree is the code its tests and their subprocesses load."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.mutation import (
    MONEY_SUITE,
    ROOT,
    SUITE_OPTIONS,
    Mutant,
    confirmed,
    environment,
    first_failure,
    node_of,
    reached,
    rerender,
    selected_tests,
    worker_copy,
)

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
    # A mutated except clause names CosmicRayTestingException: defined there, raised by nothing.
    named = "try:\n    raise KeyError\nexcept (CosmicRayTestingException, KeyError):\n    print('caught')"
    caught = subprocess.run([sys.executable, "-c", named], cwd=tree, env=environment(tree), capture_output=True)
    assert caught.stdout == b"caught\n", caught.stderr


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


def test_a_kill_names_the_first_test_that_failed() -> None:
    summary = (
        "..F\nERROR    tillplug.flows.vouchers:vouchers.py:196 a log line, not a test\n"
        "=== short test summary info ===\n"
        "FAILED tests/flows/test_a.py::test_b[strict] - AssertionError: 750 != 1250\n"
        "ERROR tests/flows/test_c.py::test_d\n1 failed, 2 passed"
    )
    assert first_failure(summary) == "tests/flows/test_a.py::test_b[strict] - AssertionError: 750 != 1250"
    assert node_of(first_failure(summary)) == "tests/flows/test_a.py::test_b[strict]"
    assert first_failure("3 passed") == ""


FLAKY = """
from pathlib import Path

def test_fails_once():
    ran = Path("ran-once")
    first = not ran.exists()
    ran.touch()
    assert not first, "the machine was busy"

def test_always_fails():
    assert False, "750 != 1250"
"""


def test_a_kill_counts_only_if_it_comes_back(tmp_path: Path) -> None:
    """A test that fails once under a loaded machine is no kill: the mutant counts as survived and
    the failure is listed; a real failure fails again."""
    (tmp_path / "test_flaky.py").write_text(FLAKY)
    options = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    verdict, failure, flaky = confirmed([*options, "test_flaky.py::test_fails_once"], options, 60, tmp_path)
    assert (verdict, failure) == ("survived", "")
    assert flaky.startswith("test_flaky.py::test_fails_once - AssertionError: the machine was busy")
    verdict, failure, flaky = confirmed([*options, "test_flaky.py"], options, 60, tmp_path)
    assert (verdict, node_of(failure), flaky) == ("killed", "test_flaky.py::test_always_fails", "")


def test_a_report_is_written_again_from_its_results_with_the_equivalents_as_they_read_now(tmp_path: Path) -> None:
    """A long run's results outlive it: a mutant named equivalent after the run leaves the shares."""
    line = "for old, at in list(itertools.islice(self._sent.items(), 8)):"
    clock = "tillplug/engine/clock.py"
    killed = Mutant(clock, "sent", "AddNot", 1, 136, line, model="killed", suite="killed", seconds=9.0)
    same = Mutant(clock, "sent", "NumberReplacer", 13, 136, line, ordinal=1, model="survived", suite="survived")
    args = {"sample": 0, "seed": 21, "timeout": 240.0, "jobs": 3, "only": []}
    saved = {"args": args, "total": 2, "seconds": 600.0, "when": "2026-12-07 22:00"}
    saved["mutants"] = [dataclasses.asdict(killed), dataclasses.asdict(same)]
    (tmp_path / "m.json").write_text(json.dumps(saved))
    assert same.equivalent is not None
    rerender(tmp_path / "m.md")
    text = (tmp_path / "m.md").read_text()
    assert "| the model check alone | 1 of 1 | 100.0 % |" in text
    assert "2026-12-07 22:00 UTC, 10 min" in text
    assert f"`{same.name}`: {same.equivalent}" in text
