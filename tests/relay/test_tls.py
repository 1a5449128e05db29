"""Beyond loopback the relay speaks TLS; a till verifies it against the CA named in its config."""

import asyncio

import httpx
import pytest

from tests.certs import self_signed
from tests.relay.pg import free_port
from tests.relay.test_processes import RelayProcess, cli
from tillplug.config.loader import Secret
from tillplug.config.model import EngineConfig
from tillplug.engine import EngineClient, EngineSecrets
from tillplug.errors import EngineUnreachable

pytestmark = pytest.mark.system


def test_a_till_reaches_the_relay_over_verified_tls_only(sim, database, tmp_path):
    cert, key = self_signed(tmp_path, "relay")
    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[engine]\npreset = "simulator"\nbase_url = "{sim.url}/v1"\n[database]\nurl = "{database}"\n'
        f'[api]\nlisten = "0.0.0.0:{port}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    assert cli("migrate", "--config", str(config)).returncode == 0
    token = cli("enrol", "--config", str(config), "--till", "T01", "--branch", "B01").stdout.strip()
    relay = RelayProcess(config, port, tmp_path / "relay.log", ca_file=cert)
    try:
        url = relay.url
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/relay/health", timeout=5)  # no plain HTTP

        async def go():
            engine = EngineConfig.model_validate({"relay_url": url, "relay_token": "/dev/null", "ca_file": cert})
            async with EngineClient(engine, EngineSecrets(api_key=None, relay_token=Secret(token))) as client:
                assert (await client.get_user("1000001")).account_number == "1000001"
            unverified = EngineConfig.model_validate({"relay_url": url, "relay_token": "/dev/null"})
            async with EngineClient(unverified, EngineSecrets(api_key=None, relay_token=Secret(token))) as client:
                with pytest.raises(EngineUnreachable):  # an unknown CA: never trusted
                    await client.get_user("1000001")

        asyncio.run(go())
    finally:
        relay.stop()
