"""A till's own engine client in relay mode, against the relay: no WLL secret, the same calls."""

import asyncio
import uuid

import httpx
import pytest

from tests.relay.conftest import relay_config, running
from tillplug.config.loader import Secret
from tillplug.config.model import EngineConfig
from tillplug.engine import EngineClient, EngineSecrets
from tillplug.engine.models import EventDefinition
from tillplug.engine.outcome import Outcome
from tillplug.errors import EngineRejected, InsufficientPoints

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"


class Recording(httpx.ASGITransport):
    """The relay's app, with every request the till's client sent kept for the test."""

    def __init__(self, app) -> None:
        super().__init__(app=app)
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return await super().handle_async_request(request)


def till_client(token: str, transport: Recording) -> EngineClient:
    config = EngineConfig.model_validate({"relay_url": "http://127.0.0.1:9", "relay_token": "/dev/null"})
    secrets = EngineSecrets(api_key=None, relay_token=Secret(token))
    return EngineClient(config, secrets, transport=transport)


def spend(points: int) -> EventDefinition:
    payload = {"eventKey": str(uuid.uuid4()), "points": points, "transactionId": "tx-1"}
    return EventDefinition(type="REDEEMED_POINTS", subject=ALICE, payload=payload)


def test_the_tills_client_works_through_the_relay_and_never_lists_the_tenant(sim, database):
    async def go():
        async with running(relay_config(sim.url, database)) as (parts, _):
            token = await parts.tokens.enrol("T01", "B01")
            transport = Recording(parts.web.app)
            client = till_client(token, transport)
            try:
                user = await client.get_user("1000001")
                assert user.id == ALICE
                assert (await client.get_wallet(ALICE)).points_balance == 1250
                benefits = await client.list_benefits(ALICE)
                assert benefits
                assert all(ALICE in b.owner_ids() or "auth-alice" in b.owner_ids() for b in benefits)
                taken = spend(100)
                reported = await client.report_event(taken)
                assert reported.id
                found = await client.look_up_event(taken.payload["eventKey"])
                assert found.outcome is Outcome.LANDED
                missing = await client.look_up_event(str(uuid.uuid4()))
                assert missing.outcome is Outcome.NOT_LANDED  # exact: the relay's table, no tenant-wide list
                with pytest.raises(InsufficientPoints):
                    await client.report_event(spend(5000))
                with pytest.raises(EngineRejected):
                    await client.get_wallet("5a1b2c3d-0000-4000-8000-000000000002")  # never looked up here
            finally:
                await client.aclose()
            # The till minted no token and sent no WLL key: only its own relay token.
            assert transport.sent
            assert all("x-api-key" not in r.headers for r in transport.sent)
            assert all(r.headers["authorization"] == f"Bearer {token}" for r in transport.sent)
            assert not any("oauth" in r.url.path for r in transport.sent)
            # The look-ups were answered from the relay's table: WLL's event list was never read.
            assert sum(line.startswith("GET /v1/events/?") for line in sim.sim.seen) == 0

    asyncio.run(go())
