"""Shared helpers: a client pointed at a running simulator."""

from tillplug.config.model import EngineConfig
from tillplug.engine import EngineClient, load_secrets


def sim_config(url: str, **overrides) -> EngineConfig:
    return EngineConfig(
        preset="simulator",
        base_url=url + "/v1",
        auth_url=url + "/oauth/token",
        receipts_url=url + "/receipts/v1",
        **overrides,
    )


def sim_client(url: str, **overrides) -> EngineClient:
    cfg = sim_config(url, **overrides)
    return EngineClient(cfg, load_secrets(cfg))
