"""Classification: what a scan is, by the config's rules.

Order: member → local pool → voucher → other.  "Other" scans (products, GS1
labels) go to the till on the event stream with what biip can read from them.
"""

from __future__ import annotations

import enum
import logging
import re
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
        # regex, not re: a match can be stopped after MATCH_TIMEOUT, so no rule stalls the event loop.
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
                    m = pattern.search(text, timeout=MATCH_TIMEOUT)
                except TimeoutError:
                    log.warning(
                        "barcode rule %r took over %g s on a scan; treated as no match", pattern.pattern, MATCH_TIMEOUT
                    )
                    continue
                if m:
                    return kind, m
        return ScanKind.OTHER, None


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
