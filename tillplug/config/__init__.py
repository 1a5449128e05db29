"""The technician's config file: one TOML file per till."""

from tillplug.config.loader import (
    Problem,
    Report,
    Secret,
    check_config,
    load_config,
    parse_toml,
    read_secret,
    validate,
)
from tillplug.config.model import Config, EngineConfig, PrinterConfig, ScannerConfig

__all__ = [
    "Config",
    "EngineConfig",
    "PrinterConfig",
    "Problem",
    "Report",
    "ScannerConfig",
    "Secret",
    "check_config",
    "example_text",
    "load_config",
    "parse_toml",
    "read_secret",
    "validate",
]


def example_text() -> str:
    """The commented example config shipped with the package."""
    from importlib.resources import files

    return files("tillplug.config").joinpath("example.toml").read_text(encoding="utf-8")
