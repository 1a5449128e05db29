"""Reconciliation that cannot be fooled: what a look-up by eventKey may conclude.

The outbox asks the engine whether a write carrying ``eventKey`` arrived.  WLL documents
no filter syntax, so an answer proves only what it shows:

* **found**: a returned event (or order) carries the key in its payload (or metadata);
* **not found**: nothing carries it *and* the engine is known to filter — either the
  dialect file says engine-check saw the filter work, or a look-up in this process
  returned results that all carried the requested key (so the engine filtered);
* **unverifiable**: anything else — the filter ignored (other keys came back),
  rejected (a 4xx), or never yet seen to work.  Such a row is never resent and never
  marked "not needed"; it is held and reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["found", "not_found", "unverifiable"]


@dataclass(frozen=True)
class Lookup:
    verdict: Verdict
    engine_id: str | None = None
    reason: str = ""
    # Unverifiable only because the filter was never seen to work (nothing contradicted it):
    # a look-up of a key the engine surely has can settle that (``Deliverer`` does).
    unproven: bool = False

    @property
    def found(self) -> bool:
        return self.verdict == "found"


@dataclass
class PageVerdict:
    """What one page of look-up results shows."""

    match: Any | None  # the first item carrying the key
    foreign: bool  # an item carrying another key (or none): the filter was not applied
    count: int


def read_page(items: Iterable[Any], key: str, key_of: Callable[[Any], object]) -> PageVerdict:
    match = None
    foreign = False
    count = 0
    for item in items:
        count += 1
        if key_of(item) == key:
            match = item if match is None else match
        else:
            foreign = True
    return PageVerdict(match, foreign, count)


class FilterEvidence:
    """Per look-up kind (event, order): has this engine been seen to filter by eventKey?

    ``True`` from the dialect file or from a look-up whose results all carried the
    requested key; ``False`` once a look-up returned another key (the filter was ignored).
    The latest observation wins: an engine may change under a running daemon.
    """

    def __init__(self, calibrated: dict[str, bool] | None = None) -> None:
        self._seen: dict[str, bool] = dict(calibrated or {})

    def works(self, kind: str) -> bool:
        return self._seen.get(kind, False)

    def observe(self, kind: str, page: PageVerdict) -> None:
        if page.foreign:
            self._seen[kind] = False
        elif page.count and page.match is not None:
            self._seen[kind] = True
