"""The Loyalty Engine client."""

from __future__ import annotations

from tillplug.config.loader import Secret, read_secret
from tillplug.config.model import (
    SIMULATOR_API_KEY,
    SIMULATOR_CLIENT_ID,
    SIMULATOR_CLIENT_SECRET,
    EngineConfig,
)
from tillplug.engine.client import EngineClient, EngineSecrets, TokenCache

__all__ = ["EngineClient", "EngineSecrets", "TokenCache", "load_secrets"]


def load_secrets(config: EngineConfig) -> EngineSecrets:
    """Read the engine's secrets from their files or credentials (the simulator's are built in)."""
    if config.relay_token is not None:  # relay mode: the till's own token, no WLL secret at all
        return EngineSecrets(api_key=None, relay_token=read_secret(config.relay_token))
    sim = config.preset == "simulator"

    def get(ref: str | None, fallback: str) -> Secret | None:
        if ref is not None:
            return read_secret(ref)
        return Secret(fallback) if sim else None

    api_key = get(config.api_key, SIMULATOR_API_KEY)
    assert api_key is not None  # the config model requires it off the simulator
    return EngineSecrets(
        api_key=api_key,
        client_id=get(config.client_id, SIMULATOR_CLIENT_ID),
        client_secret=get(config.client_secret, SIMULATOR_CLIENT_SECRET),
        event_type_secrets={k: read_secret(v) for k, v in config.event_type_secrets.items()},
    )
