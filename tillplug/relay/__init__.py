"""The chain relay (docs/relay.md): a WLL-compatible gateway between a chain's tills and the engine.

A room of its own: it uses ``engine/`` and ``config/``; nothing below imports it, and only
``tillplug relay ...`` in ``commands/cli.py`` reaches it.  Its database driver (psycopg, the
``relay`` extra) is imported only here, so a till never needs it.
"""
