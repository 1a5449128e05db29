"""Mutation testing of the money core: does the model check (and the money suite) kill deliberate bugs?

    python -m bench mutation [--jobs N] [--sample N] [--seed S] [--timeout SECONDS] [--only PATH[:DEF]]...
                             [--no-coverage] [--out bench-results/mutation.md]

cosmic-ray (the ``mutation`` extra) finds every mutation of its decision operators in the money core
(``SCOPE``: the intent machine and its settle, the look-up verdicts, the outbox's decide-after-look-up,
void and refund, the burn verdicts, the in-flight rule) and applies each **in place** in a worker's
copy of the tree (``--jobs`` workers, each its own copy, ``PYTHONPATH`` and ``cwd`` on it), so the
subprocess daemons of the suite load the mutant too and the work tree is never touched.  Each mutant
is run against:

1. the model check alone (``tests/flows/test_money_machine.py`` under ``TILLPLUG_MONEY_PROFILE=mutation``:
   fixed examples, no shrinking), then, if it survives,
2. the money suite (``MONEY_SUITE``): only its tests that ran the mutated line unmutated
   (``selected_tests`` says why that cannot miss a kill), so "killed by the suite" counts both.

A run that outlasts ``--timeout`` counts as killed (the mutant hangs the money path) and is listed
as such.  ``--sample`` draws a fixed-seed sample of the mutants.  ``--only`` keeps the mutants of one
module (``tillplug/flows/points.py``) or one definition in it (``tillplug/flows/points.py:look_up``).
A worker starts no mutant while ``/tmp/bench-quiet.now`` exists (a quiet-machine benchmark runs).

Before any mutant, the model check and then the money suite run once, unmutated, under coverage
(subprocesses too), each line with the tests that ran it (``bench/mutation_contexts.py``): a mutant
on a line the model never executes is "not reached" by it, without running it, and likewise for the
suite; such a mutant survives (nothing could kill it) and the report lists it as not reached.
``EQUIVALENT`` names the mutants that cannot change what any caller sees, each with why; they are
shown and left out of the shares.  Not run by CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import itertools
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.mutation_contexts import ORDER_ENV

ROOT = Path(__file__).resolve().parents[1]
QUIET_FLAG = Path("/tmp/bench-quiet.now")  # the lead is measuring on a quiet machine: start no mutant
# The money core, by module and definition (cosmic-ray names the enclosing function or class).
SCOPE: dict[str, set[str]] = {
    "tillplug/flows/intents.py": {"settle", "set", "owed", "interrupted"},
    "tillplug/flows/settle.py": {"settle", "recover", "settle_owed", "kind_of"},
    "tillplug/engine/outcome.py": {"write_outcome"},
    "tillplug/engine/lookup.py": {"read_page", "works", "observe", "stamped", "key_in", "scan_recent", "found"},
    "tillplug/engine/clock.py": {"sent", "sent_at", "remaining", "may_land"},
    "tillplug/outbox/deliver.py": {
        "_look_up",
        "_settled_by_look_up",
        "_landed_or_waits",
        "_reversal_settled",
        "_still_in_flight",
        "_waits_for_applied",
    },
    "tillplug/engine/reactors.py": {"applied_within"},
    "tillplug/flows/points.py": {
        "event_finding",
        "look_up",
        "not_landed",
        "landed_open",
        "landed_closed",
        "interrupted",
        "shown_applied",
        "queue_refunds",
        "give_back",
        "_closed_meanwhile",
        "given",
    },
    "tillplug/flows/vouchers.py": {
        "verdict_between",
        "intent_window",
        "burn_verdict",
        "look_up",
        "_check_code",
        "_intent_on_engine_clock",
        "_told",
        "not_landed",
        "landed_open",
        "landed_closed",
        "cannot_tell",
        "interrupted",
    },
    "tillplug/flows/completion.py": {"void", "_void"},
}
# Operators that change a decision.  Left out: arithmetic permutations other than + and - (the core
# computes no money), and ``|`` replacements (``X | None`` in annotations, which
# ``from __future__ import annotations`` never evaluates: equivalent by construction).
OPERATORS = (
    "AddNot",
    "ReplaceTrueWithFalse",
    "ReplaceFalseWithTrue",
    "ReplaceAndWithOr",
    "ReplaceOrWithAnd",
    "ReplaceUnaryOperator_Delete_Not",
    "ExceptionReplacer",
    "NumberReplacer",
    "ZeroIterationForLoop",
    "ReplaceBreakWithContinue",
    "ReplaceContinueWithBreak",
    "ReplaceBinaryOperator_Add_Sub",
    "ReplaceBinaryOperator_Sub_Add",
    "ReplaceComparisonOperator_Is_IsNot",
    "ReplaceComparisonOperator_IsNot_Is",
    "ReplaceComparisonOperator_Eq_NotEq",
    "ReplaceComparisonOperator_NotEq_Eq",
    "ReplaceComparisonOperator_Lt_LtE",
    "ReplaceComparisonOperator_LtE_Lt",
    "ReplaceComparisonOperator_Gt_GtE",
    "ReplaceComparisonOperator_GtE_Gt",
    "ReplaceComparisonOperator_In_NotIn",
    "ReplaceComparisonOperator_NotIn_In",
)
MODEL = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "tests/flows/test_money_machine.py"]
SUITE_OPTIONS = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not system"]
MONEY_SUITE = [
    *SUITE_OPTIONS,
    "tests/flows",
    "tests/outbox/test_in_flight.py",
    "tests/outbox/test_recovery.py",
    "tests/outbox/test_outbox.py",
    "tests/outbox/test_upgrade_rows.py",
    "tests/outbox/test_look_up_since.py",
    "tests/outbox/test_look_up_cannot_tell.py",
    "tests/outbox/test_batches.py",
    "tests/outbox/test_time.py",
    "tests/engine/test_settle_every_dialect.py",
    "tests/engine/test_lookup_verdicts.py",
    "tests/engine/test_applied_within.py",
    "tests/engine/test_dialects.py",
    "tests/engine/test_auth_refused_is_said.py",
]


# Mutants that cannot change what any caller sees, by ``Mutant.key`` (module, definition, operator and the
# mutated line, so that edits elsewhere do not move it): why each is equivalent.  Left out of the shares.
EQUIVALENT: dict[str, str] = {
    "tillplug/engine/clock.py:sent ReplaceBreakWithContinue `break`": (
        "the map is in send order (a key sent again moves to the end), so after the first send still"
        " remembered every later one is newer: continuing past it deletes nothing more"
    ),
    "tillplug/engine/clock.py:sent NumberReplacer `for old, at in list(itertools.islice(self._sent.items(), 8)):`": (
        "how many sends past what anyone asks about (the window plus REACTION_WINDOW) one send prunes (7, 8"
        " or 9): a key forgotten is taken as sent at the process's start, earlier still, and no one asks"
        " about it any more, so no answer of the in-flight rule changes; only memory"
    ),
    "tillplug/engine/clock.py:sent ReplaceComparisonOperator_Lt_LtE `if now - at < self.remembered:`": (
        "whether a send exactly ``remembered`` old is forgotten now or at the next send: every window"
        " anyone asks ``remaining`` about is at most ``remembered`` (the in-flight window, or it plus"
        " REVERSAL_WINDOW = REACTION_WINDOW), so such a send answers 0 kept or forgotten (forgotten, it"
        " is taken as sent at the start, earlier still)"
    ),
    "tillplug/engine/clock.py:remaining NumberReplacer"
    " `return max(0.0, self.sent_at(key) + window - self._monotonic())` [1]": (
        "max(-1.0, …): a write past its window reads as up to 1 s below zero instead of 0, and every"
        " caller only compares ``remaining`` with 0 (``may_land``: > 0; the outbox: ≤ 0 and > 0), so"
        " no decision changes (the unit tests of ``InFlight`` pin the 0)"
    ),
    "tillplug/flows/settle.py:settle ReplaceOrWithAnd"
    " `if current is None or current.state != State.UNKNOWN or not current.owed:` [1]": (
        "an intent is owed only while unknown (``owed=True`` is set with State.UNKNOWN alone, and every"
        " other move clears it), so a known intent is never owed and ``state != UNKNOWN and not owed``"
        " reads as ``state != UNKNOWN``; an unknown one not owed (a crash's, left to the outbox) never"
        " reaches ``settle``, which tillplug calls only from ``settle_owed``, with owed intents"
    ),
}
_READ_IN_WINDOW = (
    "tillplug/outbox/deliver.py:_waits_for_applied NumberReplacer"
    " `applied = await applied_within(self.client, engine_id, 0 if wait > 0 else REVERSAL_LAST_LOOK)`"
)
EQUIVALENT |= {
    f"{_READ_IN_WINDOW} [0]": (
        "a read within the window that waits up to a second instead of reading once: whatever it sees is"
        " acted on as the single read's answer would be (applied: sent; not applied: looked at again;"
        " unreadable: as before), only sooner; past the window the last look is unchanged"
    ),
    f"{_READ_IN_WINDOW} [1]": "a deadline already past (-1 s) reads once and answers, exactly as 0 s does",
    f"{_READ_IN_WINDOW} [2]": (
        "in the window's last second the read waits REVERSAL_LAST_LOOK instead of reading once: what it"
        " sees is acted on as the single read's answer would be (applied: sent, sooner; not applied or"
        " unreadable: looked at again), and the decision past the window is unchanged"
    ),
    "tillplug/outbox/deliver.py:_waits_for_applied NumberReplacer"
    " `at = self.clock() + (min(wait, REVERSAL_RECHECK) if wait > 0 else REVERSAL_RECHECK)` [0]": (
        "in the window's last second the row is looked at again REVERSAL_RECHECK (5 s) on instead of at"
        " the window's end: past the window either way, its last look decides the same for any reaction"
        " within the engine's contract, up to 5 s later"
    ),
}
NOT_REACHED = "not reached"  # the mutated line never ran in the unmutated run: nothing there could kill it


@dataclass
class Mutant:
    module: str
    definition: str
    operator: str
    occurrence: int
    line: int
    source: str = ""  # the line mutated, as it reads unmutated
    ordinal: int = 0  # which of the operator's mutants on this line (a line may hold two numbers)
    diff: str = ""
    model: str = ""  # killed | survived | timeout | not reached
    suite: str = ""
    suite_tests: int | None = None  # how many of the suite's tests ran against it (None: the whole suite)
    killed_by: str = ""  # pytest's line on the first test that failed under it
    flaky: list[str] = field(default_factory=list)  # kills that did not come back (counted as survived)
    seconds: float = 0.0  # wall time of its runs

    @property
    def name(self) -> str:
        return f"{self.module}:{self.line} {self.definition} {self.operator}#{self.occurrence}"

    @property
    def key(self) -> str:
        """The mutant's name in ``EQUIVALENT``: stable while the mutated line and its definition stay.
        Every mutant of one operator on the line, or, with `` [n]``, the n-th of them (from 0)."""
        return f"{self.module}:{self.definition} {self.operator} `{self.source}`"

    @property
    def equivalent(self) -> str | None:
        return EQUIVALENT.get(f"{self.key} [{self.ordinal}]", EQUIVALENT.get(self.key))


def mutants() -> list[Mutant]:
    """Every mutation of ``OPERATORS`` inside ``SCOPE``, in a stable order."""
    init: Any = importlib.import_module("cosmic_ray.commands.init")
    found: list[Mutant] = []
    lines = {m: (ROOT / m).read_text().splitlines() for m in SCOPE}
    for item in init._all_work_items([Path(m) for m in SCOPE], {}):
        for spec in item.mutations:
            operator = spec.operator_name.split("/", 1)[1]
            module = str(spec.module_path)
            if operator in OPERATORS and str(spec.definition_name) in SCOPE[module]:
                line = spec.start_pos[0]
                source = lines[module][line - 1].strip()
                found.append(Mutant(module, str(spec.definition_name), operator, spec.occurrence, line, source))
    found.sort(key=lambda m: (m.module, m.line, m.operator, m.occurrence))
    for before, m in itertools.pairwise(found):
        if (before.module, before.line, before.operator) == (m.module, m.line, m.operator):
            m.ordinal = before.ordinal + 1
    return found


def only(every: list[Mutant], wanted: list[str]) -> list[Mutant]:
    """The mutants ``--only`` names: ``PATH`` (a module in scope) or ``PATH:DEF`` (a definition in it)."""
    if not wanted:
        return every
    chosen = []
    for m in every:
        for want in wanted:
            path, _, definition = want.partition(":")
            if m.module == path and definition in ("", m.definition):
                chosen.append(m)
                break
    return chosen


@dataclass
class Baseline:
    """What one unmutated run under coverage saw: its outcome, and for each module of ``SCOPE`` the
    contexts (``<node id>|<phase>``, or ``""`` outside any test) that ran each line."""

    outcome: str
    failure: str  # pytest's line on the first test that failed, if any
    contexts: dict[str, dict[int, set[str]]]
    order: list[str]  # the node ids, in the order the run ran them

    def lines(self, module: str) -> set[int]:
        return set(self.contexts.get(module, {}))


def reached(argv: list[str], timeout: float, tree: Path, keep: Path | None = None) -> Baseline:
    """Run ``argv`` unmutated in ``tree`` under coverage, subprocesses too, each line with the tests
    that ran it (``bench/mutation_contexts.py``)."""
    coverage: Any = importlib.import_module("coverage")
    with tempfile.TemporaryDirectory(prefix="tillplug-mutation-") as tmp:
        rc = Path(tmp) / "coveragerc"
        rc.write_text(
            f"[run]\nsource = {tree / 'tillplug'}\nparallel = true\npatch = subprocess\n"
            f"data_file = {Path(tmp) / 'coverage'}\n"
        )
        order_file = Path(tmp) / "order"
        outcome, failure = run(
            ["-m", "coverage", "run", f"--rcfile={rc}", *argv[:2], "-p", "bench.mutation_contexts", *argv[2:]],
            timeout,
            tree,
            {ORDER_ENV: str(order_file)},
            keep,
        )
        cov = coverage.Coverage(config_file=str(rc))
        cov.combine(data_paths=[tmp], keep=True)
        data = cov.get_data()
        contexts = {
            m: {line: set(names) for line, names in data.contexts_by_lineno(str(tree / m)).items()} for m in SCOPE
        }
        order = order_file.read_text().split("\n") if order_file.exists() else []
    return Baseline(outcome, failure, contexts, [n for n in order if n])


def selected_tests(contexts: set[str], order: list[str]) -> list[str] | None:
    """The tests of the suite to run against a mutant of a line the unmutated suite ran under
    ``contexts``: every test one of whose phases ran it, in the suite's ``order``; None (the whole
    suite) when some run of the line belongs to no test (code run at import) or to a test the run did
    not order.

    This cannot miss a kill: the mutant changes only that line, so a test none of whose phases runs
    it runs exactly as unmutated and passes as it did.  That holds while tests share no state but
    through fixtures of their own, which is why the money suite has no fixture wider than a test
    (``tests/test_mutation.py`` checks it), and while a subprocess a test starts inherits the test's
    environment (its coverage context): one given an environment of its own is not measured, so its
    lines count as not reached, a survivor in the report, never a kill."""
    if not contexts or any("|" not in c for c in contexts):
        return None
    wanted = {c.rpartition("|")[0] for c in contexts}
    if not wanted <= set(order):
        return None  # a name the run's order does not know: do not guess
    return [t for t in order if t in wanted]


def worker_copy(root: Path, dest: Path) -> Path:
    """A copy of the work tree at ``dest`` for one worker to mutate: every file git tracks or would
    track (so a test just written is there too), as it is in the tree now; no caches, no venvs."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = root / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (dest / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return dest


# First on every test process's path in a worker's copy (``environment``), daemons included: the name
# cosmic-ray's ExceptionReplacer writes into an ``except`` clause, which nothing defines otherwise.
# Undefined, any exception reaching that clause became a NameError, and a mutant replacing one type
# of a tuple (``except (A, B)`` → ``except (A, X)``) was "killed" even where ``A`` still caught it.
SITECUSTOMIZE = """import builtins


class CosmicRayTestingException(Exception):
    \"\"\"What a mutated except clause names: raised by nothing.\"\"\"


builtins.CosmicRayTestingException = CosmicRayTestingException
"""


def environment(tree: Path) -> dict[str, str]:
    """How a test run in ``tree`` loads ``tree``'s code, its subprocesses too (``python -m tillplug``
    inherits it): first on the path, ahead of the editable install's finder, and no bytecode kept,
    so a mutant is never read from a stale ``.pyc``."""
    return os.environ | {"TILLPLUG_MONEY_PROFILE": "mutation", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tree)}


def run(
    argv: list[str], timeout: float, tree: Path = ROOT, extra: dict[str, str] | None = None, keep: Path | None = None
) -> tuple[str, str]:
    """Run pytest's ``argv`` in ``tree``: killed, survived or timeout, and pytest's line on the first
    test that failed ("" if none).  ``keep``: where to write the output of a run that did not pass."""
    try:
        done = subprocess.run(
            [sys.executable, *argv],
            cwd=tree,
            env=environment(tree) | (extra or {}),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        if keep is not None:
            keep.write_bytes((exc.stdout or b"") + (exc.stderr or b""))
        return "timeout", ""
    if done.returncode == 0:
        return "survived", ""
    if keep is not None:
        keep.write_bytes(done.stdout + done.stderr)
    return "killed", first_failure(done.stdout.decode(errors="replace"))


def first_failure(output: str) -> str:
    """Pytest's short-summary line on the first test that failed (or erred), without the word."""
    _, _, summary = output.rpartition("short test summary info")
    for line in summary.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("FAILED", "ERROR") and rest:
            return rest.strip()
    return ""


def node_of(failure: str) -> str:
    return failure.split(" - ", 1)[0].strip()


def confirmed(argv: list[str], options: list[str], timeout: float, tree: Path) -> tuple[str, str, str]:
    """Run ``argv``; a kill counts only if it happens again: the first failed test run alone fails,
    or, passing alone (it may depend on what ran before it), the whole ``argv`` fails again.  A kill
    that does not come back (a timing test on a loaded machine) is flaky and counts as survived.
    Returns the verdict, the failure, and the flaky failure if any.  The model and the money suite
    are deterministic (fixed seeds) but for timing, so a real kill always comes back."""
    verdict, failure = run(argv, timeout, tree)
    if verdict != "killed":
        return verdict, failure, ""
    if node_of(failure) and run([*options, node_of(failure)], timeout, tree)[0] == "killed":
        return verdict, failure, ""
    again, failure_again = run(argv, timeout, tree)
    if again == "survived":
        return again, "", failure
    return again, failure_again or failure, ""


def wait_while_quiet(flag: Path = QUIET_FLAG, poll: float = 30.0) -> None:
    """While the lead measures on a quiet machine (``flag`` exists), start no mutant."""
    while flag.exists():
        time.sleep(poll)


@dataclass
class Plan:
    """What the unmutated runs say about where mutants can be killed (None: not measured, run all)."""

    model_lines: dict[str, set[int]] | None = None
    suite: Baseline | None = None
    run_suite: bool = True  # False: the model alone (``--model-only``)


def test_mutant(m: Mutant, timeout: float, plan: Plan, tree: Path) -> str:
    """Apply ``m`` in ``tree`` (a worker's copy), run the model check (then, if it survives, the
    tests of the suite that ran the line unmutated), restore.  Returns the model's verdict, which
    the caller sets last (a mutant with a model verdict is done); the rest goes into ``m``.  A line an
    unmutated run never executed is not run against it: not reached."""
    model = suite = ""
    selected: list[str] | None = None
    if plan.model_lines is not None and m.line not in plan.model_lines[m.module]:
        model = NOT_REACHED
    if plan.suite is not None:
        contexts = plan.suite.contexts[m.module].get(m.line, set())
        if not contexts:
            suite = NOT_REACHED
        else:
            selected = selected_tests(contexts, plan.suite.order)
    m.suite_tests = 0
    if model == NOT_REACHED and suite == NOT_REACHED:
        m.diff, m.suite = f"-{m.source}", suite
        return model
    plugins: Any = importlib.import_module("cosmic_ray.plugins")
    mutating: Any = importlib.import_module("cosmic_ray.mutating")
    operator = plugins.get_operator(f"core/{m.operator}")()
    with mutating.use_mutation(tree / m.module, operator, m.occurrence) as (before, after):
        if after is None:
            m.suite = "not applied"
            return m.suite
        m.diff = "\n".join(
            line
            for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and line[:3] not in ("+++", "---")
        )
        if model != NOT_REACHED:
            model, m.killed_by, flaky = confirmed(MODEL, MODEL[:6], timeout, tree)
            m.flaky.extend([flaky] if flaky else [])
        if model not in ("survived", NOT_REACHED):
            m.suite = model  # the suite counts the model's kills too
            return model
        if suite == NOT_REACHED or not plan.run_suite:
            m.suite = suite if suite == NOT_REACHED else "not run"
            return model
        m.suite_tests = None if selected is None else len(selected)
        suite_argv = MONEY_SUITE if selected is None else [*SUITE_OPTIONS, *selected]
        m.suite, m.killed_by, flaky = confirmed(suite_argv, SUITE_OPTIONS, timeout * 4, tree)
        m.flaky.extend([flaky] if flaky else [])
    return model


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


def report(chosen: list[Mutant], total: int, args: argparse.Namespace, seconds: float, when: str = "") -> str:
    done = [m for m in chosen if m.model in ("killed", "survived", "timeout", NOT_REACHED)]
    equivalent = [m for m in done if m.equivalent is not None]
    tested = [m for m in done if m.equivalent is None]
    by_model = sum(m.model in ("killed", "timeout") for m in tested)
    by_suite = sum(m.suite in ("killed", "timeout") for m in tested)
    n = len(tested)
    only = f" --only {' --only '.join(args.only)}" if args.only else ""
    only += " --model-only" if getattr(args, "model_only", False) else ""
    unreached_model = sum(m.model == NOT_REACHED for m in tested)
    unreached_suite = sum(m.suite == NOT_REACHED for m in tested)
    lines = [
        "# Mutation testing of the money core",
        "",
        f"`python -m bench mutation --sample {args.sample} --seed {args.seed} --timeout {args.timeout:g}"
        f" --jobs {args.jobs}{only}`,"
        f" {when or time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {seconds / 60:.0f} min, cosmic-ray, in place.",
        "",
        f"Mutants in scope: {total}; tested: {len(done)}"
        + (f" (a fixed-seed sample of {args.sample})" if args.sample and len(done) < total else "")
        + (" (those `--only` names)" if args.only else "")
        + (" (all)" if len(done) == total else " (the first in a fixed-seed shuffle of them: a fair sample)")
        + f"; equivalent (left out of the shares): {len(equivalent)}; not reached by the model: {unreached_model},"
        f" by the suite either: {unreached_suite}.",
        "",
        "| killed by | mutants | share | goal |",
        "|---|---|---|---|",
        f"| the model check alone | {by_model} of {n} | {percent(by_model, n)} | ≥ 90 % |",
        f"| the money suite (with the model) | {by_suite} of {n} | {percent(by_suite, n)} | ≥ 97 % |",
        "",
        "Scope (module: definitions): "
        + "; ".join(f"`{mod}`: {', '.join(sorted(defs))}" for mod, defs in SCOPE.items())
        + ".",
        "",
        "## Survivors",
        "",
    ]
    survivors = [m for m in tested if m.suite in ("survived", NOT_REACHED) or m.model in ("survived", NOT_REACHED)]
    if not survivors:
        lines.append("None.")
    for m in survivors:
        if m.suite in ("killed", "timeout"):
            model = "not reached by" if m.model == NOT_REACHED else "survived"
            how = f"{model} the model, killed by `{node_of(m.killed_by)}`"
        else:
            how = "not reached by either" if m.suite == NOT_REACHED else f"survived both (model: {m.model})"
        lines += [f"- `{m.name}` — {how}", "", "  ```diff", *(f"  {d}" for d in m.diff.splitlines()), "  ```", ""]
    lines += ["## Equivalent", ""]
    lines += [f"- `{m.name}`: {m.equivalent}" for m in equivalent] or ["None in this run."]
    lines += ["", "## Kills that did not come back (counted as survived)", ""]
    lines += [f"- `{m.name}`: {f}" for m in done for f in m.flaky] or ["None."]
    lines += [
        "",
        "## Every mutant tested",
        "",
        "| mutant | model | suite | suite's tests run | first failed | seconds |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| `{m.name}` | {m.model} | {m.suite} | {'all' if (ran := m.suite_tests) is None else ran}"
        f" | {node_of(m.killed_by).rpartition('::')[2] or '-'} | {m.seconds:.0f} |"
        for m in done
    ]
    return "\n".join(lines) + "\n"


def queue_order(chosen: list[Mutant], seed: int = 21) -> list[Mutant]:
    """A fixed-seed shuffle, so that a run stopped part-way has tested a fair sample of the scope
    (in file order it would have tested the first modules only); the mutants named equivalent last
    (they are out of the shares: run only to see that nothing kills them)."""
    shuffled = random.Random(seed).sample(chosen, len(chosen))
    return sorted(shuffled, key=lambda m: m.equivalent is not None)


def run_all(chosen: list[Mutant], jobs: int, timeout: float, plan: Plan, trees: list[Path], done: Any) -> None:
    """Test ``chosen`` with ``jobs`` workers, each in its own tree, taking the next mutant from one
    queue (``queue_order``); ``done(m)`` is called (one at a time) as each finishes."""
    todo: queue.SimpleQueue[Mutant] = queue.SimpleQueue()
    for m in queue_order(chosen):
        todo.put(m)
    lock = threading.Lock()

    def work(tree: Path) -> None:
        while True:
            wait_while_quiet()
            try:
                m = todo.get_nowait()
            except queue.Empty:
                return
            started = time.monotonic()
            model = test_mutant(m, timeout, plan, tree)
            with lock:
                m.seconds = time.monotonic() - started
                m.model = model  # last: a mutant with a model verdict is done (the report reads it)
                done(m)

    workers = [threading.Thread(target=work, args=(tree,), name=f"mutation-{n}") for n, tree in enumerate(trees)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def unmutated(trees: list[Path], timeout: float, coverage: bool) -> tuple[Plan, str]:
    """The unmutated runs: the model check (and, with ``coverage``, the money suite, both measured,
    at once in two trees: the suite mostly waits).  Returns the plan and what is wrong, if anything."""
    if not coverage:
        outcome, _ = run(MODEL, timeout, trees[0])
        return Plan(), "" if outcome == "survived" else f"the model check does not pass unmutated ({outcome})"
    runs: dict[str, Baseline] = {}
    logs = ROOT / "bench-results"
    logs.mkdir(exist_ok=True)

    def measure(name: str, argv: list[str], limit: float, tree: Path) -> None:
        # Once more if it fails: a timing test on a loaded machine is no reason to stop (kept: why).
        for attempt in (1, 2):
            runs[name] = reached(argv, limit, tree, logs / f"mutation-unmutated-{name}-{attempt}.txt")
            if runs[name].outcome == "survived":
                return

    suite_tree = trees[1 % len(trees)]
    suite_run = threading.Thread(target=measure, args=("suite", MONEY_SUITE, timeout * 8, suite_tree))
    suite_run.start()
    if suite_tree == trees[0]:
        suite_run.join()
    measure("model", MODEL, timeout * 2, trees[0])
    suite_run.join()
    model_run = runs["model"]
    plan = Plan({m: model_run.lines(m) for m in SCOPE}, runs["suite"])
    if model_run.outcome != "survived":
        return plan, f"the model check does not pass unmutated ({model_run.outcome} {model_run.failure})"
    if runs["suite"].outcome != "survived":
        return plan, f"the money suite does not pass unmutated ({runs['suite'].outcome} {runs['suite'].failure})"
    return plan, ""


def rerender(out: Path) -> int:
    """The report again from the results saved beside it, with ``EQUIVALENT`` as it reads now."""
    saved = json.loads(out.with_suffix(".json").read_text())
    done = [Mutant(**m) for m in saved["mutants"]]
    args = argparse.Namespace(**saved["args"])
    out.write_text(report(done, saved["total"], args, saved["seconds"], saved["when"]))
    print(out.read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench mutation")
    ap.add_argument("--sample", type=int, default=0, help="test a fixed-seed sample of this many mutants (0: all)")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds for the model check of one mutant")
    ap.add_argument("--jobs", type=int, default=2, help="mutants tested at once, each in its own copy of the tree")
    ap.add_argument("--out", default="bench-results/mutation.md")
    ap.add_argument("--list", action="store_true", help="list the mutants in scope and stop")
    ap.add_argument(
        "--only", action="append", default=[], metavar="PATH[:DEF]", help="only this module's (definition's) mutants"
    )
    ap.add_argument("--no-coverage", action="store_true", help="run every mutant against everything, reached or not")
    ap.add_argument(
        "--model-only", action="store_true", help="the model check alone, every mutant, no unmutated coverage run"
    )
    ap.add_argument(
        "--rerender", action="store_true", help="write the report again from its .json (EQUIVALENT as it reads now)"
    )
    args = ap.parse_args(argv)
    out = ROOT / args.out
    if args.rerender:
        return rerender(out)
    every = mutants()
    pool = only(every, args.only)
    if args.list:
        for m in pool:
            print(m.name)
        print(f"{len(pool)} mutants", file=sys.stderr)
        return 0
    if not pool:
        print(f"--only {args.only} names no mutant in scope", file=sys.stderr)
        return 2
    chosen = pool if not args.sample or args.sample >= len(pool) else random.Random(args.seed).sample(pool, args.sample)
    with tempfile.TemporaryDirectory(prefix="tillplug-mutants-") as tmp:
        trees = [worker_copy(ROOT, Path(tmp) / f"tree-{n}") for n in range(max(1, args.jobs))]
        plan, trouble = unmutated(trees, args.timeout, coverage=not (args.no_coverage or args.model_only))
        plan.run_suite = not args.model_only
        if trouble:
            print(trouble, file=sys.stderr)
            return 1
        started = time.monotonic()
        out.parent.mkdir(parents=True, exist_ok=True)
        finished = 0

        def done(m: Mutant) -> None:
            nonlocal finished
            finished += 1
            tests = "all" if m.suite_tests is None else str(m.suite_tests)
            by = f", by {m.killed_by}" if m.killed_by else ""
            by += "".join(f", flaky: {f}" for f in m.flaky)
            print(
                f"[{finished}/{len(chosen)}] {m.name}: model {m.model}, suite {m.suite} ({tests} tests{by}),"
                f" {m.seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            seconds = time.monotonic() - started
            out.write_text(report(chosen, len(pool), args, seconds))  # partial, kept
            finished_ones = [dataclasses.asdict(m) for m in chosen if m.model]
            saved = {"args": vars(args), "total": len(pool), "seconds": seconds, "mutants": finished_ones}
            out.with_suffix(".json").write_text(json.dumps(saved | {"when": time.strftime("%Y-%m-%d %H:%M")}))

        run_all(chosen, args.jobs, args.timeout, plan, trees, done)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
