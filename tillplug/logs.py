"""Logging for journald: one line per event, member ids masked, secrets never."""

from __future__ import annotations

import logging
import re
import sys

from tillplug.ids import UUID_PATTERN

_UUID = re.compile(rf"\b{UUID_PATTERN}\b")


def mask(member_id: str | None) -> str:
    """'…1234': enough for a technician to match a slip, not enough to identify a member."""
    if not member_id:
        return "-"
    tail = member_id[-4:] if len(member_id) > 6 else member_id[-2:]
    return "…" + tail


class MaskingFilter(logging.Filter):
    """Last line of defence: any UUID that reaches a log line is masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _UUID.sub(lambda m: mask(m.group(0)), message)
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
        text = super().format(record).replace("\n", " | ")  # one line per event
        if self.prefix_priority:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        return text


def setup(level: str = "info", *, journald: bool | None = None) -> None:
    import os

    if journald is None:
        journald = bool(os.environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(journald))
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access", "escpos"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
