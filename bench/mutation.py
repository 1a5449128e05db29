"""Mutation testing of the money core: does the model check (and the money suite) kill deliberate bugs?

    python -m bench mutation [--sample N] [--seed S] [--timeout SECONDS] [--out bench-results/mutation.md]

cosmic-ray (the ``mutation`` extra) finds every mutation of its decision operators in the money core
(``SCOPE``: the intent machine and its settle, the look-up verdicts, the outbox's decide-after-look-up,
void and refund, the burn verdicts, the in-flight rule) and applies each **in place**, so the
subprocess daemons of the suite load the mutant too.  Each mutant is run against:

1. the model check alone (``tests/flows/test_money_machine.py`` under ``TILLPLUG_MONEY_PROFILE=mutation``:
   fixed examples, no shrinking), then, if it survives,
2. the money suite (``MONEY_SUITE``), so "killed by the suite" counts both.

A run that outlasts ``--timeout`` counts as killed (the mutant hangs the money path) and is listed
as such.  ``--sample`` draws a fixed-seed sample of the mutants when the whole set would take too
long (a mutant costs about a minute); the report says which.  Not run by CI.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import subprocess
import sys
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
    },
    "tillplug/flows/points.py": {
        "event_finding",
        "look_up",
        "not_landed",
        "landed_open",
        "landed_closed",
        "interrupted",
        "shown_applied",
        "applied_within",
        "_refund",
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
    "tests/engine/test_settle_every_dialect.py",
]


@dataclass
class Mutant:
    module: str
    definition: str
    operator: str
    occurrence: int
    line: int
    diff: str = ""
    model: str = ""  # killed | survived | timeout
    suite: str = ""

    @property
    def name(self) -> str:
        return f"{self.module}:{self.line} {self.definition} {self.operator}#{self.occurrence}"


def mutants() -> list[Mutant]:
    """Every mutation of ``OPERATORS`` inside ``SCOPE``, in a stable order."""
    init: Any = importlib.import_module("cosmic_ray.commands.init")
    found: list[Mutant] = []
    for item in init._all_work_items([Path(m) for m in SCOPE], {}):
        for spec in item.mutations:
            operator = spec.operator_name.split("/", 1)[1]
            module = str(spec.module_path)
            if operator in OPERATORS and str(spec.definition_name) in SCOPE[module]:
                found.append(Mutant(module, str(spec.definition_name), operator, spec.occurrence, spec.start_pos[0]))
    return sorted(found, key=lambda m: (m.module, m.line, m.operator, m.occurrence))


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


def test_mutant(m: Mutant, timeout: float) -> None:
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
            for line in __import__("difflib").unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and line[:3] not in ("+++", "---")
        )
        m.model = run(MODEL, timeout)
        m.suite = m.model if m.model != "survived" else run(MONEY_SUITE, timeout * 4)


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


def report(chosen: list[Mutant], total: int, args: argparse.Namespace, seconds: float) -> str:
    tested = [m for m in chosen if m.model in ("killed", "survived", "timeout")]
    by_model = sum(m.model != "survived" for m in tested)
    by_suite = sum(m.suite != "survived" for m in tested)
    n = len(tested)
    lines = [
        "# Mutation testing of the money core",
        "",
        f"`python -m bench mutation --sample {args.sample} --seed {args.seed} --timeout {args.timeout:g}`,"
        f" {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {seconds / 60:.0f} min, cosmic-ray, in place.",
        "",
        f"Mutants in scope: {total}; tested: {len(tested)}"
        + (f" (a fixed-seed sample of {args.sample})" if len(tested) < total else " (all)")
        + ".",
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
    survivors = [m for m in tested if m.suite == "survived" or m.model == "survived"]
    if not survivors:
        lines.append("None.")
    for m in survivors:
        killed = "survived the model, killed by the suite" if m.suite != "survived" else "survived both"
        lines += [f"- `{m.name}` — {killed}", "", "  ```diff", *(f"  {d}" for d in m.diff.splitlines()), "  ```", ""]
    lines += ["## Every mutant tested", "", "| mutant | model | suite |", "|---|---|---|"]
    lines += [f"| `{m.name}` | {m.model} | {m.suite} |" for m in tested]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench mutation")
    ap.add_argument("--sample", type=int, default=0, help="test a fixed-seed sample of this many mutants (0: all)")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds for the model check of one mutant")
    ap.add_argument("--out", default="bench-results/mutation.md")
    ap.add_argument("--list", action="store_true", help="list the mutants in scope and stop")
    args = ap.parse_args(argv)
    every = mutants()
    if args.list:
        for m in every:
            print(m.name)
        print(f"{len(every)} mutants", file=sys.stderr)
        return 0
    if (baseline := run(MODEL, args.timeout)) != "survived":
        print(f"the model check does not pass unmutated ({baseline}): nothing to measure", file=sys.stderr)
        return 1
    chosen = (
        every if not args.sample or args.sample >= len(every) else random.Random(args.seed).sample(every, args.sample)
    )
    started = time.monotonic()
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    for number, m in enumerate(chosen, 1):
        test_mutant(m, args.timeout)
        print(f"[{number}/{len(chosen)}] {m.name}: model {m.model}, suite {m.suite}", file=sys.stderr, flush=True)
        out.write_text(report(chosen[:number], len(every), args, time.monotonic() - started))  # partial, kept
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
