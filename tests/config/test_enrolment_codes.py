"""Enrolment codes: signed by the chain's key, read only with it; anything else refused, and why."""

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from tillplug.config.enrolment import PREFIX, make_code, read_code
from tillplug.errors import ConfigError, EnrolmentRefused

CHAIN = Ed25519PrivateKey.generate()
OTHER_CHAIN = Ed25519PrivateKey.generate()
NOW = 1_800_000_000.0

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,30}\Z")
urls = st.sampled_from(["https://config.chain.example/tills/layer.toml", "file:///srv/chain/10-chain.toml"])
tokens = st.none() | st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=16, max_size=64)


@given(ids, ids, urls, tokens)
def test_a_code_reads_back_exactly_with_the_chains_key(till, branch, url, token):
    code = make_code(CHAIN, till_id=till, branch_id=branch, config_url=url, relay_token=token, now=NOW)
    assert code.startswith(PREFIX) and len(code) < 2000
    got = read_code(code, [OTHER_CHAIN.public_key(), CHAIN.public_key()], now=NOW + 60)
    assert (got.till_id, got.branch_id, got.config_url) == (till, branch, url)
    assert (got.relay_token.reveal() if got.relay_token else None) == token
    if token:
        assert token not in repr(got)  # the relay token is a Secret


@given(ids, ids, urls)
def test_another_chains_code_is_refused_as_foreign(till, branch, url):
    code = make_code(OTHER_CHAIN, till_id=till, branch_id=branch, config_url=url, now=NOW)
    with pytest.raises(EnrolmentRefused, match="not signed by this chain's enrolment key"):
        read_code(code, [CHAIN.public_key()], now=NOW)


@given(st.data())
def test_any_change_to_a_signed_code_is_refused(data):
    code = make_code(CHAIN, till_id="till-07", branch_id="b-12", config_url="https://c.example/l.toml", now=NOW)
    payload, signature = code.removeprefix(PREFIX).split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    field = data.draw(st.sampled_from(sorted(body)))
    body[field] = data.draw(st.sampled_from(["till-08", "b-13", "https://evil.example/l.toml", 1_900_000_000]))
    forged = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).rstrip(b"=").decode()
    if forged == payload:
        return
    with pytest.raises(EnrolmentRefused, match=r"not signed by this chain's enrolment key|not valid"):
        read_code(f"{PREFIX}{forged}.{signature}", [CHAIN.public_key()], now=NOW)


def test_unsigned_damaged_expired_and_future_codes_say_so():
    code = make_code(CHAIN, till_id="t", branch_id="b", config_url="https://c.example/l.toml", valid_days=1, now=NOW)
    keys = [CHAIN.public_key()]
    with pytest.raises(EnrolmentRefused, match="unsigned"):
        read_code(code.split(".")[0], keys, now=NOW)
    with pytest.raises(EnrolmentRefused, match="damaged"):
        read_code(code[:-3] + "!!!", keys, now=NOW)
    with pytest.raises(EnrolmentRefused, match="expired on"):
        read_code(code, keys, now=NOW + 2 * 86400)
    with pytest.raises(EnrolmentRefused, match="dated in the future"):
        read_code(code, keys, now=NOW - 3 * 86400)
    with pytest.raises(EnrolmentRefused, match="not an enrolment code"):
        read_code("1000001", keys, now=NOW)
    with pytest.raises(EnrolmentRefused, match="no enrolment key"):
        read_code(code, [], now=NOW)


def test_refusals_never_quote_the_code():
    code = make_code(OTHER_CHAIN, till_id="t", branch_id="b", config_url="https://c.example/l.toml", now=NOW)
    with pytest.raises(EnrolmentRefused) as refused:
        read_code(code, [CHAIN.public_key()], now=NOW)
    assert code.removeprefix(PREFIX)[:20] not in refused.value.message


def test_make_code_refuses_what_a_till_would_refuse():
    with pytest.raises(ConfigError, match="till id"):
        make_code(CHAIN, till_id="till 7", branch_id="b", config_url="https://c.example/l.toml")
    with pytest.raises(ConfigError, match="config URL"):
        make_code(CHAIN, till_id="t", branch_id="b", config_url="http://c.example/l.toml")  # plain http off loopback
