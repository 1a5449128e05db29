"""Classification: what a scan is, by the config's rules.

Order: member → local pool → voucher → other.  "Other" scans (products, GS1
labels) go to the till on the event stream with what biip can read from them.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import regex

from tillplug.config.model import BarcodeRules
from tillplug.config.rules import MATCH_TIMEOUT
from tillplug.ids import UUID_PATTERN

log = logging.getLogger(__name__)

UUID_RE = re.compile(f"^{UUID_PATTERN}$")
ACCOUNT_RE = re.compile(r"^\d{7}$")
# AIM identifiers that say "this is GS1 data": never a loyalty code, whatever it looks like.
GS1_SYMBOLOGIES = {"]C1", "]d2", "]Q3", "]e0", "]e1", "]e2", "]J1"}


class ScanKind(enum.Enum):
    MEMBER = "member"
    LOCAL_POOL = "local_pool"
    VOUCHER = "voucher"
    OTHER = "other"


@dataclass(frozen=True)
class Classified:
    kind: ScanKind
    code: str  # the part of the scan that matters (the named group "code", else all of it)
    text: str
    symbology: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # for "other": GTIN / GS1 fields, if read

    @property
    def member_id_kind(self) -> str | None:
        """uuid, account_number or auth_identifier, for member codes."""
        if self.kind is not ScanKind.MEMBER:
            return None
        if UUID_RE.match(self.code):
            return "uuid"
        return "account_number" if ACCOUNT_RE.match(self.code) else "auth_identifier"


class Classifier:
    def __init__(self, rules: BarcodeRules) -> None:
        # regex, not re: a match can be stopped (see _search), so no rule stalls the event loop.
        self._rules = [
            (ScanKind.MEMBER, [regex.compile(r) for r in rules.member]),
            (ScanKind.LOCAL_POOL, [regex.compile(r) for r in rules.local_pool]),
            (ScanKind.VOUCHER, [regex.compile(r) for r in rules.voucher]),
        ]

    def classify(self, text: str, symbology: str | None = None, *, read_product: bool = True) -> Classified:
        """``read_product=False``: without ``details`` (biip reading a product code), which routing, on the
        scanner's own thread, must not wait for; ``gs1_details`` reads them later."""
        kind, m = self._match(text, symbology)
        if m is None:
            details = gs1_details(text, symbology) if read_product else {}
            return Classified(ScanKind.OTHER, text, text, symbology, details)
        code = m.groupdict().get("code") or m.group(0)
        return Classified(kind, code, text, symbology)

    def _match(self, text: str, symbology: str | None) -> tuple[ScanKind, regex.Match[str] | None]:
        if symbology in GS1_SYMBOLOGIES or "\x1d" in text:
            return ScanKind.OTHER, None
        for kind, patterns in self._rules:
            for pattern in patterns:
                try:
                    m = _search(pattern, text)
                except TimeoutError:
                    log.warning(
                        "barcode rule %r took over %g s on a scan; treated as no match", pattern.pattern, MATCH_TIMEOUT
                    )
                    continue
                if m:
                    return kind, m
        return ScanKind.OTHER, None


# regex's own timeout counts the CPU time the match was given, not the time the scan waits: on a
# loaded till 50 ms of CPU took 230-330 ms.  So a rule gets FIRST_TRY of CPU where it is called (every
# sane rule answers in microseconds); one that needs longer runs in a worker, without the GIL, and
# the scan waits for it by the clock: MATCH_TIMEOUT less WAKE_UP_MARGIN, the time a loaded machine
# takes to hand the waiting thread the CPU again (measured: 15-35 ms with a load of 10 on 2 cores).
# A match given up on ends by itself after as much CPU (it cannot use more CPU than clock time);
# two workers bound what such leftovers can take from the event loop.
FIRST_TRY = 0.0005
WAKE_UP_MARGIN = 0.02
_slow_rules = ThreadPoolExecutor(max_workers=2, thread_name_prefix="barcode-rule")


def _search(pattern: regex.Pattern[str], text: str) -> regex.Match[str] | None:
    """``pattern.search(text)``; TimeoutError once its share of MATCH_TIMEOUT has passed on the clock."""
    started = time.monotonic()
    if FIRST_TRY > 0:
        with contextlib.suppress(TimeoutError):
            return pattern.search(text, timeout=FIRST_TRY)
    future = _slow_rules.submit(_search_in_worker, pattern, text)
    try:
        return future.result(timeout=max(0.0, MATCH_TIMEOUT - WAKE_UP_MARGIN - (time.monotonic() - started)))
    except TimeoutError:
        future.cancel()  # not started yet (both workers busy with earlier slow scans): never will be
        raise


def _search_in_worker(pattern: regex.Pattern[str], text: str) -> regex.Match[str] | None:
    # concurrent: without the GIL, so the event loop runs while it does
    return pattern.search(text, timeout=MATCH_TIMEOUT - WAKE_UP_MARGIN, concurrent=True)


def preload() -> None:
    """Import biip now (in a worker thread), not at the first product scan: its ~0.1 s import in the
    event loop would hold up the scans behind it, which pass-through promises the till within ms.
    A first parse loads its tables too."""
    gs1_details("0109506000134352", "]C1")


def gs1_details(text: str, symbology: str | None) -> dict[str, Any]:
    """What biip reads from a product or GS1 code; {} when it reads nothing."""
    try:
        import biip

        result = biip.parse((symbology or "") + text, config=biip.ParseConfig(separator_chars=["\x1d"]))
    except Exception:  # biip raises on input it cannot read; a scan is never fatal
        return {}
    details: dict[str, Any] = {}
    if result.gtin is not None:
        details["gtin"] = result.gtin.value
    if result.gs1_message is not None:
        details["gs1"] = {es.ai.ai: es.value for es in result.gs1_message.element_strings}
    if result.sscc is not None:
        details["sscc"] = result.sscc.value
    return details
