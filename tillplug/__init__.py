"""tillplug: the loyalty plugin for shop tills.

The public surface is small on purpose: the CLI (``tillplug``), the config file,
the till-facing HTTP API and the driver interfaces.  Everything else is internal.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tillplug")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
