"""Mutation testing of the money core: does the model check (and the money suite) kill deliberate bugs?

    python -m bench mutation [--sample N] [--seed S] [--timeout SECONDS] [--only PATH[:DEF]]...
                             [--no-coverage] [--out bench-results/mutation.md]

cosmic-ray (the ``mutation`` extra) finds every mutation of its decision operators in the money core
(``SCOPE``: the intent machine and its settle, the look-up verdicts, the outbox's decide-after-look-up,
void and refund, the burn verdicts, the in-flight rule) and applies each **in place**, so the
subprocess daemons of the suite load the mutant too.  Each mutant is run against:

1. the model check alone (``tests/flows/test_money_machine.py`` under ``TILLPLUG_MONEY_PROFILE=mutation``:
   fixed examples, no shrinking), then, if it survives,
2. the money suite (``MONEY_SUITE``), so "killed by the suite" counts both.

A run that outlasts ``--timeout`` counts as killed (the mutant hangs the money path) and is listed
as such.  ``--sample`` draws a fixed-seed sample of the mutants when the whole set would take too
long (a mutant costs about a minute); the report says which.  ``--only`` keeps the mutants of one
module (``tillplug/flows/points.py``) or one definition in it (``tillplug/flows/points.py:look_up``).

Before any mutant, the model check and then the money suite run once, unmutated, under coverage
(subprocesses too): a mutant on a line the model never executes is "not reached" by it, without
running it, and likewise for the suite; such a mutant survives (nothing could kill it) and the
report lists it as not reached.  ``EQUIVALENT`` names the mutants that cannot change what any
caller sees, each with why; they are shown and left out of the shares.  Not run by CI.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
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
MONEY_SUITE = [
    "-m",
    "pytest",
    "-x",
    "-q",
    "-p",
    "no:cacheprovider",
    "-m",
    "not system",
    "tests/flows",
    "tests/outbox/test_in_flight.py",
    "tests/outbox/test_recovery.py",
    "tests/outbox/test_outbox.py",
    "tests/outbox/test_upgrade_rows.py",
    "tests/outbox/test_look_up_since.py",
    "tests/engine/test_settle_every_dialect.py",
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
    diff: str = ""
    model: str = ""  # killed | survived | timeout | not reached
    suite: str = ""

    @property
    def name(self) -> str:
        return f"{self.module}:{self.line} {self.definition} {self.operator}#{self.occurrence}"

    @property
    def key(self) -> str:
        """The mutant's name in ``EQUIVALENT``: stable while the mutated line and its definition stay."""
        return f"{self.module}:{self.definition} {self.operator} `{self.source}`"

    @property
    def equivalent(self) -> str | None:
        return EQUIVALENT.get(self.key)


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
    return sorted(found, key=lambda m: (m.module, m.line, m.operator, m.occurrence))


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


def reached(argv: list[str], timeout: float) -> tuple[str, dict[str, set[int]]]:
    """Run ``argv`` unmutated under coverage (its subprocesses too): its outcome, and the lines it
    executed in each module of ``SCOPE``."""
    coverage: Any = importlib.import_module("coverage")
    with tempfile.TemporaryDirectory(prefix="tillplug-mutation-") as tmp:
        rc = Path(tmp) / "coveragerc"
        rc.write_text(
            f"[run]\nsource = {ROOT / 'tillplug'}\nparallel = true\npatch = subprocess\n"
            f"data_file = {Path(tmp) / 'coverage'}\n"
        )
        outcome = run(["-m", "coverage", "run", f"--rcfile={rc}", *argv], timeout)
        cov = coverage.Coverage(config_file=str(rc))
        cov.combine(data_paths=[tmp], keep=True)
        data = cov.get_data()
        executed = {m: set(data.lines(str(ROOT / m)) or ()) for m in SCOPE}
    return outcome, executed


def run(argv: list[str], timeout: float) -> str:
    # This tree first on the path: run from a copy of the work tree, the copy's (mutated) code is loaded.
    env = os.environ | {"TILLPLUG_MONEY_PROFILE": "mutation", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(
            [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    return "survived" if done.returncode == 0 else "killed"


def test_mutant(m: Mutant, timeout: float, model_lines: set[int] | None, suite_lines: set[int] | None) -> None:
    """Apply ``m`` in place, run the model check (then, if it survives, the suite), restore.  A line
    the unmutated run never executed (``*_lines``, None: not measured) is not run: not reached."""
    if model_lines is not None and m.line not in model_lines:
        m.model = NOT_REACHED
        if suite_lines is not None and m.line not in suite_lines:
            m.suite = NOT_REACHED
            m.diff = f"-{m.source}"
            return
    plugins: Any = importlib.import_module("cosmic_ray.plugins")
    mutating: Any = importlib.import_module("cosmic_ray.mutating")
    operator = plugins.get_operator(f"core/{m.operator}")()
    path = ROOT / m.module
    with mutating.use_mutation(path, operator, m.occurrence) as (before, after):
        if after is None:
            m.model = m.suite = "not applied"
            return
        m.diff = "\n".join(
            line
            for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and line[:3] not in ("+++", "---")
        )
        if m.model != NOT_REACHED:
            m.model = run(MODEL, timeout)
        m.suite = m.model if m.model not in ("survived", NOT_REACHED) else run(MONEY_SUITE, timeout * 4)


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


def report(chosen: list[Mutant], total: int, args: argparse.Namespace, seconds: float) -> str:
    done = [m for m in chosen if m.model in ("killed", "survived", "timeout", NOT_REACHED)]
    equivalent = [m for m in done if m.equivalent is not None]
    tested = [m for m in done if m.equivalent is None]
    by_model = sum(m.model in ("killed", "timeout") for m in tested)
    by_suite = sum(m.suite in ("killed", "timeout") for m in tested)
    n = len(tested)
    only = f" --only {' --only '.join(args.only)}" if args.only else ""
    unreached_model = sum(m.model == NOT_REACHED for m in tested)
    unreached_suite = sum(m.suite == NOT_REACHED for m in tested)
    lines = [
        "# Mutation testing of the money core",
        "",
        f"`python -m bench mutation --sample {args.sample} --seed {args.seed} --timeout {args.timeout:g}{only}`,"
        f" {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {seconds / 60:.0f} min, cosmic-ray, in place.",
        "",
        f"Mutants in scope: {total}; tested: {len(done)}"
        + (f" (a fixed-seed sample of {args.sample})" if args.sample and len(done) < total else "")
        + (" (those `--only` names)" if args.only else "")
        + (" (all)" if len(done) == total else "")
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
            how = f"{'not reached by' if m.model == NOT_REACHED else 'survived'} the model, killed by the suite"
        else:
            how = "not reached by either" if m.suite == NOT_REACHED else f"survived both (model: {m.model})"
        lines += [f"- `{m.name}` — {how}", "", "  ```diff", *(f"  {d}" for d in m.diff.splitlines()), "  ```", ""]
    lines += ["## Equivalent", ""]
    lines += [f"- `{m.name}`: {m.equivalent}" for m in equivalent] or ["None in this run."]
    lines += ["", "## Every mutant tested", "", "| mutant | model | suite |", "|---|---|---|"]
    lines += [f"| `{m.name}` | {m.model} | {m.suite} |" for m in done]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench mutation")
    ap.add_argument("--sample", type=int, default=0, help="test a fixed-seed sample of this many mutants (0: all)")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds for the model check of one mutant")
    ap.add_argument("--out", default="bench-results/mutation.md")
    ap.add_argument("--list", action="store_true", help="list the mutants in scope and stop")
    ap.add_argument(
        "--only", action="append", default=[], metavar="PATH[:DEF]", help="only this module's (definition's) mutants"
    )
    ap.add_argument("--no-coverage", action="store_true", help="run every mutant, reached or not")
    args = ap.parse_args(argv)
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
    model_lines: dict[str, set[int]] | None = None
    suite_lines: dict[str, set[int]] | None = None
    if args.no_coverage:
        baseline = run(MODEL, args.timeout)
    else:
        baseline, model_lines = reached(MODEL, args.timeout * 2)
    if baseline != "survived":
        print(f"the model check does not pass unmutated ({baseline}): nothing to measure", file=sys.stderr)
        return 1
    chosen = pool if not args.sample or args.sample >= len(pool) else random.Random(args.seed).sample(pool, args.sample)
    if model_lines is not None and any(m.line not in model_lines[m.module] for m in chosen):
        suite_baseline, suite_lines = reached(MONEY_SUITE, args.timeout * 8)
        if suite_baseline != "survived":
            print(f"the money suite does not pass unmutated ({suite_baseline})", file=sys.stderr)
            return 1
    started = time.monotonic()
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    for number, m in enumerate(chosen, 1):
        test_mutant(
            m,
            args.timeout,
            None if model_lines is None else model_lines[m.module],
            None if suite_lines is None else suite_lines[m.module],
        )
        print(f"[{number}/{len(chosen)}] {m.name}: model {m.model}, suite {m.suite}", file=sys.stderr, flush=True)
        out.write_text(report(chosen[:number], len(pool), args, time.monotonic() - started))  # partial, kept
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
