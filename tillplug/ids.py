"""Identifier patterns shared by the barcode rules, the classifier and the log masking."""

# A WLL id (a UUID, any case), without anchors so that callers can anchor or search with it.
UUID_PATTERN = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
