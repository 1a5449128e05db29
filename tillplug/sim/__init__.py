"""The embedded Loyalty Engine simulator: a real HTTP server on loopback (never imported by the daemon path)."""

from tillplug.sim.server import SimServer, serve
from tillplug.sim.state import EngineState, default_seed, load_seed

__all__ = ["EngineState", "SimServer", "default_seed", "load_seed", "serve"]
