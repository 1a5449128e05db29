"""Barcode rules are regular expressions a technician writes: refuse the ones that can stall the till.

A pattern with a repeat inside a repeat, such as ``(a+)+`` or ``(\\d*)*``, can take exponential time
on a scan that almost matches; it would run on the event loop for every scan.  Such rules are
refused when the config is read, and every rule still runs under a time limit (``regex``'s
timeout) at scan time, for the cases no static check can see.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import regex

# The stdlib's own parser of patterns (the tree re compiles); private, so typeshed has no stub for it.
sre_parse: Any = importlib.import_module("re._parser")
MAX_RULE_LENGTH = 512
MATCH_TIMEOUT = 0.05  # seconds one rule may take on one scan


def _is_repeat(op: Any) -> bool:
    return op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT)


def _nested_repeat(items: Any, inside_repeat: bool) -> bool:
    """True if a repeat of open or wide length sits inside a repeat that can match more than once.

    ``(a{2})+`` is fine (one way to split any text); ``(a+)+`` and ``(a{1,20})*`` are not.
    """
    for op, arg in items:
        if _is_repeat(op):
            low, high, sub = arg
            many = high is sre_parse.MAXREPEAT or high > 1
            wide = high is sre_parse.MAXREPEAT or high - low >= 8
            if wide and inside_repeat and op is not sre_parse.POSSESSIVE_REPEAT:
                return True
            if _nested_repeat(sub, inside_repeat or many):
                return True
        elif op is sre_parse.SUBPATTERN:
            if _nested_repeat(arg[-1], inside_repeat):
                return True
        elif op is sre_parse.BRANCH:
            if any(_nested_repeat(branch, inside_repeat) for branch in arg[1]):
                return True
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
            if _nested_repeat(arg[1], inside_repeat):
                return True
        elif op is sre_parse.ATOMIC_GROUP:
            continue  # an atomic group never backtracks into itself
    return False


def check_rule(pattern: str) -> str:
    """The pattern, if it is a valid and safe barcode rule; ValueError saying why not otherwise."""
    if len(pattern) > MAX_RULE_LENGTH:
        raise ValueError(f"is longer than {MAX_RULE_LENGTH} characters")
    try:
        tree = sre_parse.parse(pattern)
        regex.compile(pattern)
    except (re.error, regex.error) as exc:
        raise ValueError(f"is not a valid regular expression ({exc})") from None
    if _nested_repeat(list(tree), inside_repeat=False):
        raise ValueError(
            "repeats a group that itself repeats, e.g. (a+)+: a scan that almost matches could take "
            "minutes; write the repeat once, e.g. a+"
        )
    return pattern
