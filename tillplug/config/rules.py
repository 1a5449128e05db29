"""Barcode rules are regular expressions a technician writes: refuse the ones that can stall the till.

A backtracking engine is slow on a scan that almost matches when a repeated part of the pattern can
match the same text in more than one way: ``(a+)+``, ``(a|aa)*``, ``(a|a?)+``.  Each way is tried,
and the ways multiply with every repeat, so a 60-character scan can take minutes.  Two checks refuse
such rules when the config is read: a repeat of open width inside a repeat (the common case, with a
short message), and, for everything else, the ambiguity itself: the pattern is read as an automaton
of its character positions (Glushkov's construction), and a rule is refused when one position can
reach itself by two different paths over the same text (a cycle in the automaton paired with itself
that leaves the diagonal).  Rules still run under a time limit when a scan arrives
(``tillplug.barcodes.classify``), for whatever no static check can see.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
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
    if _ambiguous_repeat(pattern):
        raise ValueError(
            "has a repeat that can match the same scan in more than one way, e.g. (a|aa)* or (a|a?)+: "
            "a scan that almost matches could take minutes; make each repeated part match one way only, "
            "e.g. a+ or (ab|c)+"
        )
    return pattern


# -- ambiguity: the pattern as an automaton of its positions -------------------------------------------

MAX_POSITIONS = 4096  # character positions once counted repeats are written out ({1,512}: 512)
MAX_PAIR_STEPS = 2_000_000  # work the pair search may do; past it the rule is refused as too complex
# Characters that stand for all others when two character sets are compared: every ASCII one, and a
# few beyond (accented letters, other scripts' letters, digits and spaces); the rule's own are added.
_SAMPLE = [chr(c) for c in range(128)] + list("éßΩ中٣\u00a0\u2028")
_core: Any = importlib.import_module("regex._regex_core")  # the parser regex itself runs: it keeps (a|a)


class _TooComplex(Exception):
    pass


@dataclass
class _Automaton:
    """Glushkov's automaton: one state per character position, ``follow`` the positions that may come next."""

    sample: list[str]
    sets: list[int] = field(default_factory=list)  # per position: the sample characters it matches, as bits
    follow: list[set[int]] = field(default_factory=list)
    lookarounds: list[Any] = field(default_factory=list)  # checked as patterns of their own
    chars: dict[int, int] = field(default_factory=dict)  # node id → its sample characters, as bits

    def position(self, chars: int) -> int:
        if len(self.sets) >= MAX_POSITIONS:
            raise _TooComplex
        self.sets.append(chars)
        self.follow.append(set())
        return len(self.sets) - 1


# (can match empty, first positions, last positions)
_Part = tuple[bool, set[int], set[int]]
_EMPTY: _Part = (True, set(), set())


def _ambiguous_repeat(pattern: str) -> bool:
    sample = _SAMPLE + sorted(set(pattern) - set(_SAMPLE))
    try:
        pending = [_parse(pattern)]
    except AttributeError:  # regex's private parser moved: the tests say so; tills keep the runtime limit
        return False
    try:
        while pending:
            automaton = _Automaton(sample)
            _node(automaton, pending.pop())
            if _two_paths_around_a_cycle(automaton):
                return True
            pending += automaton.lookarounds
    except _TooComplex:
        raise ValueError(
            "is too complex to check for slow matches (its repeats write out to more than "
            f"{MAX_POSITIONS} characters); use smaller repeat counts"
        ) from None
    return False


def _parse(pattern: str) -> Any:
    """The pattern as regex parses it, before it merges anything (as regex.compile does)."""
    flags = 0
    for _ in range(3):
        source = _core.Source(pattern)
        info = _core.Info(flags, source.char_type, {})
        source.ignore_space = bool(info.flags & _core.VERBOSE)
        try:
            return _core._parse_pattern(source, info)
        except _core._UnscopedFlagSet:
            flags = info.global_flags  # (?i) at the start: parse again with it set
    raise _TooComplex


def _sequence(a: _Automaton, parts: list[_Part]) -> _Part:
    empty, first, last = True, set[int](), set[int]()
    for e, f, lst in parts:
        for p in last:
            a.follow[p] |= f
        first = first | f if empty else first
        last = lst | last if e else lst
        empty = empty and e
    return empty, first, last


def _node(a: _Automaton, node: Any) -> _Part:  # noqa: PLR0911 -- one answer per kind of node
    kind = type(node).__name__
    if kind == "Sequence":
        return _sequence(a, [_node(a, item) for item in node.items])
    if kind == "Branch":
        parts = [_node(a, branch) for branch in node.branches]
        return (
            any(e for e, _, _ in parts),
            set().union(*(f for _, f, _ in parts)),
            set().union(*(x for *_, x in parts)),
        )
    if kind in ("GreedyRepeat", "LazyRepeat", "PossessiveRepeat"):
        return _repeat(a, node)
    if kind in ("Group", "Atomic", "Fuzzy"):  # atomic and possessive: treated as backtracking (refusing more)
        return _node(a, node.subpattern)
    if kind == "LookAround":
        a.lookarounds.append(node.subpattern)
        return _EMPTY
    if kind in ("Conditional", "LookAroundConditional"):
        if kind == "LookAroundConditional":
            a.lookarounds.append(node.subpattern)
        yes, no = _node(a, node.yes_item), _node(a, node.no_item)
        return yes[0] or no[0], yes[1] | no[1], yes[2] | no[2]
    if kind == "String":
        return _sequence(a, [_single(a, _core.Character(c, case_flags=node.case_flags)) for c in node.characters])
    if isinstance(node, _core.ZeroWidthBase) or kind in ("Keep", "Skip", "Prune", "Failure"):
        return _EMPTY  # anchors (^ $ \b) and verbs match no character
    if hasattr(node, "matches") or kind.startswith("Any"):
        return _single(a, node)
    # A back-reference, a named list, a grapheme: any text of any length (refusing more, never less).
    p = a.position((1 << len(a.sample)) - 1)
    a.follow[p].add(p)
    return False, {p}, {p}


def _single(a: _Automaton, node: Any) -> _Part:
    chars = a.chars.get(id(node))
    if chars is None:
        if hasattr(node, "matches"):
            caseless = bool(getattr(node, "case_flags", 0) & _core.IGNORECASE)
            chars = sum(1 << i for i, c in enumerate(a.sample) if _matches(node, c, caseless))
        else:  # . in any of its forms
            chars = (1 << len(a.sample)) - 1
        a.chars[id(node)] = chars  # a repeat writes the same node out many times
    p = a.position(chars)
    return False, {p}, {p}


def _matches(node: Any, char: str, caseless: bool) -> bool:
    variants = {char, char.lower(), char.upper(), char.casefold()} if caseless else {char}
    return any(len(v) == 1 and node.matches(ord(v)) for v in variants)


def _repeat(a: _Automaton, node: Any) -> _Part:
    """``x{lo,hi}`` written out as the engine counts: lo copies, then (x(x(x)?)?)? or a loop."""
    low, high = node.min_count, node.max_count
    unbounded = high is None or high >= _core.UNLIMITED
    copies = [_node(a, node.subpattern) for _ in range(max(low - 1, 0) if unbounded else low)]
    if unbounded:
        e, f, lst = _node(a, node.subpattern)
        for p in lst:
            a.follow[p] |= f
        copies.append((e or low == 0, f, lst))
    else:
        optional: _Part = _EMPTY
        for _ in range(high - low):
            e, f, lst = _node(a, node.subpattern)
            for p in lst:
                a.follow[p] |= optional[1]
            optional = (True, f, lst | optional[2])
        copies.append(optional)
    return _sequence(a, copies)


def _two_paths_around_a_cycle(a: _Automaton) -> bool:
    """True if some position reaches itself by two different paths over the same text: in the automaton
    paired with itself (steps on a character both sides can take), a strongly connected part that holds
    a pair of one position and a pair of two different ones."""
    steps = 0

    def successors(pair: tuple[int, int]) -> list[tuple[int, int]]:
        nonlocal steps
        p, q = pair
        steps += len(a.follow[p]) * len(a.follow[q])
        if steps > MAX_PAIR_STEPS:
            raise _TooComplex
        return list({(min(x, y), max(x, y)) for x in a.follow[p] for y in a.follow[q] if a.sets[x] & a.sets[y]})

    # Pairs are kept in order (smaller first): the paired automaton is symmetric, so (p, q) stands for (q, p).
    parts = _strong_parts([(p, p) for p in range(len(a.sets))], successors)
    return any(len({p == q for p, q in part}) == 2 for part in parts)


def _strong_parts(starts: list[tuple[int, int]], successors: Any) -> list[list[tuple[int, int]]]:
    """Tarjan's strongly connected components of what ``starts`` reach, without recursion."""
    index: dict[tuple[int, int], int] = {}
    low: dict[tuple[int, int], int] = {}
    on_stack: set[tuple[int, int]] = set()
    stack: list[tuple[int, int]] = []
    parts: list[list[tuple[int, int]]] = []
    for start in starts:
        if start in index:
            continue
        work = [(start, iter(successors(start)))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors(child))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                part = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    part.append(member)
                    if member == node:
                        break
                parts.append(part)
    return parts
