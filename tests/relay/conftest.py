import asyncio
import contextlib
from collections.abc import Iterator

import httpx
import pytest

from tests.relay.pg import Cluster
from tillplug.relay.config import RelayConfig
from tillplug.sim import SimServer


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    pg = Cluster()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def database(cluster: Cluster) -> str:
    """A new, empty database on the session's cluster, and its URL."""
    return cluster.create_database()


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer() as server:
        yield server


def relay_config(sim_url: str, database_url: str, **sections: dict) -> RelayConfig:
    data: dict = {
        "engine": {"preset": "simulator", "base_url": sim_url + "/v1", "read_timeout": 2.0, "connect_timeout": 1.0},
        "database": {"url": database_url},
        "api": {"listen": "127.0.0.1:8766"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return RelayConfig.model_validate(data)


@contextlib.asynccontextmanager
async def running(config: RelayConfig, *, deliver: bool = True):
    """The relay in this process (migrated), its outbox running, and an httpx client on its app."""
    from tillplug.relay import service

    await service.migrate(config)
    async with service.relay(config) as parts:
        stop = asyncio.Event()
        task = asyncio.create_task(parts.deliverer.run(stop)) if deliver else None
        transport = httpx.ASGITransport(app=parts.web.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as http:
            try:
                yield parts, http
            finally:
                stop.set()
                if task is not None:
                    await asyncio.wait_for(task, timeout=10)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
