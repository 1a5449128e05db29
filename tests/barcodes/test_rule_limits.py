"""Barcode rules a technician writes can backtrack for ever: refused when the config is read, and
bounded in wall-clock time when a scan runs them."""

import threading

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from tillplug.barcodes import Classifier, ScanKind
from tillplug.barcodes import classify as classify_module
from tillplug.config.model import BarcodeRules
from tillplug.config.rules import check_rule

AMBIGUOUS = [
    "(a|aa)*",  # seen: passed check-config
    "(a|a?)+",  # seen: passed check-config
    "(a|aa)+",
    "(a|a)*",
    "(\\d|\\w)+!",
    "([0-9]|[5-9])+",
    "(?:a|b|ab)+$",
    "(?i:A|a)+",
    "(.|x)+y",
    "(a{1,3})+",
]


@pytest.mark.parametrize("rule", AMBIGUOUS)
def test_a_repeat_that_can_split_a_scan_two_ways_is_refused(rule):
    """(a|aa)* and (a|a?)+ passed the ReDoS check and backtrack for ever on a near miss."""
    with pytest.raises(ValueError, match="more than one way"):
        check_rule(f"^(?P<code>{rule})$")


@pytest.mark.parametrize(
    "rule",
    [
        *BarcodeRules().member,
        *BarcodeRules().voucher,
        r"^(?P<code>LOCAL-[A-Z0-9]{4,12})$",
        r"^(?P<code>(?:ab)+)$",
        r"^(?P<code>(a{2})+)$",
        r"^(?P<code>(?:[A-Z]{4}-){3}[A-Z]{4})$",
        r"^(?P<code>(?:\d{3}[ -]?)+)$",
        r"^(?P<code>(a|b)*c)$",
        r"^99(?P<code>\d{10,12})$",
        r"^(?P<code>[A-Z]{2}\d{6}|\d{8})$",
        r"^(?:MBR|CARD):(?P<code>\w+)$",
        r"^(?P<code>(?:ab|a)*b)$",  # a and ab split any text one way only
        r"(?i)^(?P<code>[a-f0-9]{32})$",
    ],
)
def test_rules_that_match_one_way_only_are_accepted(rule):
    assert check_rule(rule) == rule


@given(st.sampled_from(["a", "b", "ab", "\\d", "[a-c]", "x?", "."]), st.sampled_from(["a", "aa", "ba", "[a-z]", "a?"]))
def test_a_refused_rule_really_is_ambiguous_and_an_accepted_one_is_not(left, right):
    """Differential: the check's verdict on (L|R)+ against a count of the ways each short text splits."""
    rule = f"^(?:{left}|{right})+$"
    try:
        check_rule(rule)
        refused = False
    except ValueError:
        refused = True
    alternatives = [regex.compile(f"(?:{part})") for part in (left, right)]
    two_ways = any(_ways(text, alternatives) > 1 for text in _texts(4))
    assert refused == two_ways, rule


def _texts(length):
    texts = [""]
    for _ in range(length):
        texts = [t + c for t in texts for c in "ab1x"] + texts
    return sorted(set(texts) - {""})


def _ways(text, alternatives, memo=None):
    """How many ways ``text`` splits into non-empty pieces, each matched by an alternative (a piece two
    alternatives match counts twice): more than one, and a backtracking engine tries each of them."""
    memo = {} if memo is None else memo
    if not text:
        return 1
    if text not in memo:
        memo[text] = sum(
            _ways(text[end:], alternatives, memo)
            for end in range(1, len(text) + 1)
            for alt in alternatives
            if alt.fullmatch(text[:end])
        )
    return memo[text]


def test_a_slow_rule_is_given_up_on_by_the_clock_not_by_its_cpu_time(monkeypatch):
    """The 50 ms limit fired after 230-330 ms on a loaded machine: regex's timeout counts the CPU time
    the match got, not the time the scan waited.  Here a rule's match gets no CPU at all (it is stalled):
    a limit on CPU time never fires, a limit on the clock does."""
    stalled = threading.Event()
    release = threading.Event()
    real_search = classify_module._search_in_worker

    def stalls(pattern, text):
        if pattern.pattern.startswith("^(?P<code>SLOW"):
            stalled.set()
            release.wait(30)
        return real_search(pattern, text)

    monkeypatch.setattr(classify_module, "_search_in_worker", stalls)
    monkeypatch.setattr(classify_module, "FIRST_TRY", 0)  # every rule goes to the worker
    rules = BarcodeRules(member=[r"^(?P<code>SLOW.*)$", r"^(?P<code>\d{7})$"], local_pool=[], voucher=[])
    classifier = Classifier(rules)
    answers = []
    scanning = threading.Thread(target=lambda: answers.append(classifier.classify("1000001")), daemon=True)
    scanning.start()
    scanning.join(20)  # a bound on the test, not a claim about time: without the clock it never returns
    release.set()
    assert stalled.is_set()
    assert answers and answers[0].kind is ScanKind.MEMBER and answers[0].code == "1000001"
