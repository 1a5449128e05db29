"""Shared helpers: a client pointed at a running simulator, calibrated for its dialect if asked."""

from tillplug.config.model import EngineConfig
from tillplug.engine import EngineClient, load_secrets
from tillplug.engine.dialect import EngineDialect

DIALECT_NAMES = ("default", "strict", "hostile")


def sim_config(url: str, **overrides) -> EngineConfig:
    return EngineConfig(
        preset="simulator",
        base_url=url + "/v1",
        auth_url=url + "/oauth/token",
        receipts_url=url + "/receipts/v1",
        **overrides,
    )


def sim_client(url: str, *, dialect: EngineDialect | None = None, token_path=None, **overrides) -> EngineClient:
    """A client for the simulator at ``url``; ``dialect`` as if engine-check had run against it."""
    cfg = sim_config(url, **overrides)
    return EngineClient(cfg, load_secrets(cfg), dialect=dialect, token_path=token_path)


def calibrated_client(server, **overrides) -> EngineClient:
    """A client that knows what engine-check would find against ``server`` (a SimServer)."""
    return sim_client(server.url, dialect=server.sim.dialect.answers(), **overrides)
