"""Logging for journald: one line per event; member ids, card numbers and secrets never.

The guarantee lives in ``JournalFormatter``: every line tillplug writes (message, arguments,
traceback) is scrubbed as a whole, after formatting, so no code path can forget it:

- a WLL member id (a UUID) and any run of 7 or more digits (account numbers, card numbers, also
  written in groups of four) keep only their last four characters: ``…1234``;
- a code one of the configured member rules matches (``MBR:…``) is masked the same way, wherever
  it stands in the line;
- every secret tillplug has read (``tillplug.config.Secret`` registers itself) and anything after
  ``Bearer`` is replaced by ``********``.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable

import regex

from tillplug.ids import UUID_PATTERN

_UUID = re.compile(UUID_PATTERN)  # no \b: an id glued to a word (after a repr's \n, say) is still one
# Account numbers (7 digits), card numbers (up to 19; longer runs too: a card may be glued to other
# digits), bare or in groups of four (4111 1111 1111 1111).
_DIGITS = re.compile(r"(?<!\d)(?:\d{7,}|\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,4})?)(?!\d)")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s,;\"']+")
MASKED_SECRET = "********"
KEEP_RENEWED = 16  # access tokens: the current one and those before it, long expired
MIN_SECRET = 4  # shorter values would mask ordinary words; no real secret is this short
MEMBER_RULE_TIMEOUT = 0.05  # seconds per rule and line, as for a scan


class _Masks:
    """What this process must keep out of its log lines, beyond the fixed patterns."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.secrets: set[str] = set()
        self.renewed: list[str] = []  # oldest first
        self.secret_re: re.Pattern[str] | None = None
        self.member_rules: tuple[regex.Pattern[str], ...] = ()


_masks = _Masks()


def mask(member_id: str | None) -> str:
    """'…1234': enough for a technician to match a slip, not enough to identify a member."""
    if not member_id:
        return "-"
    tail = member_id[-4:] if len(member_id) > 6 else member_id[-2:]
    return "…" + tail


def never_log(value: str, *, renewed: bool = False) -> None:
    """Keep ``value`` (a secret just read) out of every log line from now on.  ``renewed``: one of a
    series replaced for as long as the daemon runs (access tokens): only the last few are kept."""
    if len(value) < MIN_SECRET or value in _masks.secrets:
        return
    with _masks.lock:
        _masks.secrets.add(value)
        if renewed:
            _masks.renewed.append(value)
            if len(_masks.renewed) > KEEP_RENEWED:  # long expired: the engine no longer takes it
                _masks.secrets.discard(_masks.renewed.pop(0))
        longest_first = sorted(_masks.secrets, key=len, reverse=True)  # a secret inside another is masked whole
        _masks.secret_re = re.compile("|".join(re.escape(s) for s in longest_first))


def mask_member_codes(rules: Iterable[str]) -> None:
    """Also mask whatever these member rules (config barcodes.member) would read as a member code.

    Each rule is searched for anywhere in a line, its anchors dropped: a code glued to other text
    (``card=MBR:123``, a repr's ``\\nMBR:123``) is still found.  A rule loosened so may mask more
    than codes, never less.
    """
    _masks.member_rules = tuple(regex.compile(_unanchored(r)) for r in rules)


def _unanchored(rule: str) -> str:
    for anchor in ("^", "\\A"):
        rule = rule.removeprefix(anchor)
    for anchor in ("$", "\\Z", "\\z"):
        if rule.endswith(anchor) and not rule.endswith("\\" + anchor):
            rule = rule.removesuffix(anchor)
    return f"(?:{rule})"


def _mask_match(match: regex.Match[str]) -> str:
    return mask(match.group(0)) if match.group(0) else ""  # a rule that matches nothing leaves no mark


def scrub(text: str) -> str:
    """``text`` with every member id, card number and secret masked (the module's docstring says how)."""
    secrets = _masks.secret_re
    if secrets is not None:
        text = secrets.sub(MASKED_SECRET, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASKED_SECRET}", text)
    text = _UUID.sub(lambda m: mask(m.group(0)), text)
    text = _DIGITS.sub(lambda m: mask(re.sub(r"[ -]", "", m.group(0))), text)
    for rule in _masks.member_rules:
        try:
            text = rule.sub(_mask_match, text, timeout=MEMBER_RULE_TIMEOUT)
        except TimeoutError:  # could not tell where the codes are: nothing of the line is shown
            return "(line not shown: a member rule took too long to mask it)"
    return text


class MaskingFilter(logging.Filter):
    """Masks the message for every handler (tests' and others'); the formatter is the guarantee."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = scrub(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


# journald reads "<N>" priority prefixes from stderr (sd-daemon(3)).
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def __init__(self, prefix_priority: bool) -> None:
        super().__init__(
            "%(name)s: %(message)s" if prefix_priority else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        self.prefix_priority = prefix_priority

    def format(self, record: logging.LogRecord) -> str:
        # The whole line, traceback included: an exception's text may carry what the message did not.
        text = scrub(super().format(record)).replace("\n", " | ")  # one line per event
        if self.prefix_priority:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        return text


def setup(level: str = "info", *, journald: bool | None = None, member_rules: Iterable[str] = ()) -> None:
    import os

    if journald is None:
        journald = bool(os.environ.get("JOURNAL_STREAM"))
    mask_member_codes(member_rules)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(journald))
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access", "escpos"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
