"""Which member identifiers WLL documents a look-up for, and which barcode rules yield others.

``GET /users/{id}`` is documented for the WLL id (a UUID) and the 7-digit account number
(engine-api.md §4, §5.1); nothing else.  ``check-config`` asks of each member rule: can
it yield a code that is neither?  The rule's regular expression is turned into a few
sample scans (each alternative, each repeat at its least and one more, each character
class by a letter, then a digit, then punctuation); a sample the rule matches whose code
is undocumented is the proof.  It can miss a rule only by its look-arounds or
back-references, which sample no characters.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from typing import Any

_parser: Any = importlib.import_module("re._parser")  # the stdlib's own parser; no public equivalent
_c: Any = importlib.import_module("re._constants")
REPEATS = tuple(getattr(_c, name) for name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") if hasattr(_c, name))

# The identifiers WLL documents GET /users/{id} for (engine-api.md §4, §5.1).
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
ACCOUNT_NUMBER_RE = re.compile(r"^\d{7}$")

MAX_SAMPLE = 600  # characters; a rule whose least match is longer is left alone
PREFERENCES = ("aZ", "0", "@.-_")  # which character a class contributes, tried in turn
MAX_BRANCHES = 4  # alternatives a|b|c are each tried, up to this many


def _pick(items: list[tuple[Any, Any]], prefer: str) -> str | None:
    """One character the class ``items`` (an IN node) accepts, preferring those in ``prefer``."""
    negate = any(op is _c.NEGATE for op, _ in items)
    candidates = prefer + "aZ0@.-_x9"
    for ch in candidates:
        if _in_class(items, ord(ch)) != negate:
            return ch
    if negate:
        return None
    for op, av in items:
        if op is _c.LITERAL:
            return chr(av)
        if op is _c.RANGE:
            return chr(av[0])
    return None


def _in_class(items: list[tuple[Any, Any]], code: int) -> bool:
    ch = chr(code)
    for op, av in items:
        if (op is _c.LITERAL and av == code) or (op is _c.RANGE and av[0] <= code <= av[1]):
            return True
        if op is _c.CATEGORY:
            digit, word, space = ch.isdigit(), ch.isalnum() or ch == "_", ch.isspace()
            table = {
                _c.CATEGORY_DIGIT: digit,
                _c.CATEGORY_NOT_DIGIT: not digit,
                _c.CATEGORY_WORD: word,
                _c.CATEGORY_NOT_WORD: not word,
                _c.CATEGORY_SPACE: space,
                _c.CATEGORY_NOT_SPACE: not space,
            }
            if table.get(av, False):
                return True
    return False


LEAVES: dict[Any, Callable[[Any, str], str | None]] = {
    _c.LITERAL: lambda av, prefer: chr(av),
    _c.NOT_LITERAL: lambda av, prefer: next(ch for ch in prefer + "aZ0x" if ord(ch) != av),
    _c.ANY: lambda av, prefer: prefer[0],
    _c.IN: _pick,
}


def _render(nodes: Any, prefer: str, extra: int, branch: int) -> str | None:
    out = ""
    for op, av in nodes:
        part = _node(op, av, prefer, extra, branch)
        if part is None or len(out) + len(part) > MAX_SAMPLE:
            return None  # no sample from this branch (or one too long to matter)
        out += part
    return out


def _node(op: Any, av: Any, prefer: str, extra: int, branch: int) -> str | None:
    """The characters one parsed node contributes; None if it cannot be sampled."""
    leaf = LEAVES.get(op)
    if leaf is not None:
        return leaf(av, prefer)
    if op is _c.SUBPATTERN:
        return _render(av[-1], prefer, extra, branch)
    if op is _c.BRANCH:
        alternatives = av[1]
        return _render(alternatives[min(branch, len(alternatives) - 1)], prefer, extra, branch)
    if op in REPEATS:
        low, high, body = av
        count = low + extra if high is _c.MAXREPEAT else min(low + extra, high)
        part = _render(body, prefer, extra, branch)
        return None if part is None else part * count
    # Anchors and look-arounds add no characters (samples are matched afterwards);
    # back-references and the like cannot be sampled.
    return "" if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT) else None


def is_documented_member_id(ident: str) -> bool:
    """A WLL user id (UUID) or a 7-digit account number: the two documented look-ups."""
    return bool(UUID_RE.match(ident) or ACCOUNT_NUMBER_RE.match(ident))


def samples(rule: str) -> Iterator[str]:
    """A few scans the rule should match: least repeats and one more, letters then digits."""
    tree = _parser.parse(rule)
    for branch in range(MAX_BRANCHES):
        for extra in (0, 1):
            for prefer in PREFERENCES:
                text = _render(tree, prefer, extra, branch)
                if text is not None:
                    yield text


def undocumented_code(rule: str) -> str | None:
    """A code this member rule yields that WLL documents no look-up for, or None."""
    pattern = re.compile(rule)
    for text in samples(rule):
        m = pattern.search(text)
        if m is None:
            continue
        code = m.groupdict().get("code") or m.group(0)
        if not is_documented_member_id(code):
            return code
    return None
