"""The simulator keeps the promises of its own OpenAPI document (schemathesis over real HTTP)."""

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from tillplug.sim import SimServer
from tillplug.sim.openapi import document

schema = schemathesis.openapi.from_dict(document())


@pytest.fixture(scope="module")
def sim():
    with SimServer(rate=100_000, burst=100_000) as server:
        token = httpx.post(
            server.url + "/oauth/token",
            json={
                "client_id": "sim-client",
                "client_secret": "sim-client-secret",
                "audience": "wlloyalty.net",
                "grant_type": "client_credentials",
            },
        ).json()["access_token"]
        with requests.Session() as session:  # one keep-alive session, closed at the end
            yield server, {"X-Api-Key": server.state.api_key, "Authorization": f"Bearer {token}"}, session


@pytest.mark.system
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_simulator_conforms_to_its_openapi_document(case, sim):
    server, headers, session = sim
    # Like the real engine, the simulator ignores query parameters it does not know, so
    # "negative data must be rejected" does not apply; every other check does.
    case.call_and_validate(
        base_url=server.url + "/v1",
        headers=headers,
        session=session,
        excluded_checks=[schemathesis.checks.negative_data_rejection],
    )
