"""Run by the emulator's own Python (3.13): reads hex lines on stdin, answers each with how the
emulator's ESC/POS tokenizer reads those bytes, as JSON [[kind, name, length], ...] on one line.

Kept apart from the tests (which run on the project's Python) so the reading is emupos's alone.
"""

import json
import sys

from emupos.printer.escpos.tokenizer import Command, Text, Tokenizer

for line in sys.stdin:
    tokenizer = Tokenizer()
    tokens = tokenizer.feed(bytes.fromhex(line.strip()))
    if (rest := tokenizer.close()) is not None:
        tokens.append(rest)
    out = []
    for token in tokens:
        if isinstance(token, Text):
            out.append(["text", "", len(token.data)])
        elif isinstance(token, Command):
            out.append(["command", token.name, len(token.raw)])
        else:
            out.append(["unknown", "", len(token.raw)])
    print(json.dumps(out), flush=True)
