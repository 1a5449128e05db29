"""What a slip says, laid out for a paper width."""

from tillplug.receipts.layout import (
    QR,
    Barcode,
    Columns,
    Cut,
    Feed,
    Receipt,
    Rule,
    Text,
    text_lines,
    wrap,
)

__all__ = ["QR", "Barcode", "Columns", "Cut", "Feed", "Receipt", "Rule", "Text", "text_lines", "wrap"]
