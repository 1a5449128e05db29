"""The commands wing: the ``tillplug`` CLI and what it runs (doctor, demo, engine-check, install).

May use ``tillplug.daemon`` and every room below it; nothing below imports from here.
"""
