"""Maintainers' generators: run from a checkout, never shipped in the package."""
