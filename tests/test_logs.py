"""The masking guarantee: no member id, card number or secret leaves tillplug's log formatter."""

import logging
import string
import sys
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillplug import logs
from tillplug.config import Secret
from tillplug.logs import JournalFormatter, mask_member_codes, scrub

DEFAULT_MEMBER_RULES = [r"^(?P<code>\d{7})$", r"^MBR:(?P<code>[A-Za-z0-9._@-]{1,512})$"]

member_ids = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
account_numbers = st.from_regex(r"\A[0-9]{7}\Z")
pans = st.from_regex(r"\A[0-9]{13,19}\Z")
grouped_pans = st.lists(st.from_regex(r"\A[0-9]{4}\Z"), min_size=4, max_size=4).flatmap(
    lambda groups: st.sampled_from([" ", "-"]).map(lambda sep: sep.join(groups))
)
member_codes = st.from_regex(r"\AMBR:[A-Za-z0-9._@-]{8,40}\Z")
secrets = st.text(string.ascii_letters + string.digits + "-_./+=", min_size=12, max_size=64)
# Around the sensitive value: words, punctuation and newlines, but no letters a secret could be made of.
filler = st.text(" :;,()[]{}'\"=\n\t#!?*", max_size=12)
glue = st.sampled_from(["", "n", "x", "a", "_", "\\"])  # a letter or escape stuck to an id or a number


@pytest.fixture(autouse=True)
def no_secrets_from_other_tests():
    """The secrets other tests read are masked process-wide; these tests start from none."""
    saved = (set(logs._masks.secrets), logs._masks.secret_re)
    logs._masks.secrets.clear()
    logs._masks.secret_re = None
    yield
    logs._masks.secrets.clear()
    logs._masks.secrets.update(saved[0])
    logs._masks.secret_re = saved[1]


def formatted(message: str, *args: object, exc: BaseException | None = None, journald: bool = True) -> str:
    record = logging.LogRecord("tillplug.test", logging.WARNING, __file__, 1, message, args or None, None)
    if exc is not None:
        try:
            raise exc
        except BaseException:
            record.exc_info = sys.exc_info()
    return JournalFormatter(prefix_priority=journald).format(record)


@given(
    st.one_of(member_ids, account_numbers, pans, grouped_pans, member_codes),
    filler,
    filler,
    glue,
    st.sampled_from(["message", "argument", "traceback", "repr"]),
    st.booleans(),
)
def test_no_member_id_or_card_number_reaches_the_journal(value, before, after, stuck, where, journald):
    mask_member_codes(DEFAULT_MEMBER_RULES)
    try:
        text = f"{before}{stuck}{value}{stuck}{after}"
        if where == "message":
            line = formatted(f"member {text} looked up", journald=journald)
        elif where == "argument":
            line = formatted("member %s looked up", text, journald=journald)
        elif where == "repr":
            line = formatted("answer %r", {"user": {"id": text}}, journald=journald)
        else:
            line = formatted("look-up failed", exc=ValueError(f"no member {text}"), journald=journald)
    finally:
        mask_member_codes([])
    assert value not in line
    assert value.replace(" ", "").replace("-", "") not in line.replace(" ", "").replace("-", "")
    assert "\n" not in line


@given(secrets, filler, filler, st.sampled_from(["message", "argument", "traceback"]))
def test_no_secret_read_by_tillplug_reaches_the_journal(value, before, after, where):
    Secret(value)  # read from its file: from now on it is never logged
    text = f"{before}{value}{after}"
    if where == "message":
        line = formatted(f"engine said {text}")
    elif where == "argument":
        line = formatted("engine said %s", text)
    else:
        line = formatted("engine call failed", exc=RuntimeError(f"headers {text}"))
    assert value not in line


@given(st.text(string.ascii_letters + string.digits + "-._~+/", min_size=1, max_size=80))
def test_a_bearer_token_never_reaches_the_journal(token):
    line = formatted("request had Authorization: Bearer %s", token)
    assert token not in line.split("Bearer", 1)[1]


def test_masks_keep_the_tail_and_the_line_readable():
    member = str(uuid.UUID("5a1b2c3d-0000-4000-8000-000000000001"))
    assert scrub(f"member {member} card 4111 1111 1111 1111 account 1000001 at 2026-12-07 12:16:42") == (
        "member …0001 card …1111 account …0001 at 2026-12-07 12:16:42"
    )
    assert scrub("outbox row 42 of 100 after 1.5 s") == "outbox row 42 of 100 after 1.5 s"


def test_configured_secrets_stay_masked_however_often_the_access_token_renews():
    Secret("configured-api-key-0123")
    tokens = [f"access-token-number-{i:04d}" for i in range(100)]
    for token in tokens:
        Secret(token, renewed=True)
    line = formatted("key %s, tokens %s and %s", "configured-api-key-0123", tokens[-1], tokens[0])
    assert "configured-api-key-0123" not in line and tokens[-1] not in line
    assert len(logs._masks.secrets) <= 1 + logs.KEEP_RENEWED  # bounded: the oldest tokens went
