"""#21: what a look-up of an unknown deduction may conclude.  A look-up that fails, or one that cannot
tell, leaves the outcome unknown (asked again later): it never raises into the settler or the void,
and never turns into "landed" or "not landed" by itself."""

import asyncio
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillplug import errors as E
from tillplug.engine.lookup import Lookup
from tillplug.engine.outcome import Outcome
from tillplug.flows.points import event_finding

FAILURES = [
    E.EngineUnreachable(),
    E.EngineTimeout(),
    E.EngineProtocolError("an HTML error page"),
    E.EngineAuthError("credentials refused"),
    E.OutcomeUnknown(),
]


class OneLookUp:
    """The engine client's one seam event_finding uses: its answer, or the error it raises."""

    def __init__(self, answer: Lookup | Exception) -> None:
        self.answer = answer
        self.asked: list[tuple[str, float | None]] = []

    async def look_up_event(self, event_key: str, since: float | None = None) -> Lookup:
        self.asked.append((event_key, since))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@given(failure=st.sampled_from(FAILURES), since=st.none() | st.floats(0, 2e9))
def test_a_look_up_that_fails_leaves_the_outcome_unknown_and_raises_nothing(failure, since):
    client = OneLookUp(failure)
    assert asyncio.run(event_finding(client, "key-1", since)) is None
    assert client.asked == [("key-1", since)]


def test_a_failed_look_up_is_logged_by_its_code_and_tried_again_later(caplog):
    with caplog.at_level(logging.INFO, logger="tillplug.flows.points"):
        assert asyncio.run(event_finding(OneLookUp(E.EngineUnreachable()), "key-1")) is None
    assert "engine_unreachable" in caplog.text and "tried again later" in caplog.text


@pytest.mark.parametrize(
    ("lookup", "expected"),
    [
        (Lookup(Outcome.UNKNOWN, reason="the engine ignored the eventKey filter"), None),
        (Lookup(Outcome.LANDED, engine_id="e1"), (Outcome.LANDED, False)),
        (Lookup(Outcome.NOT_LANDED), (Outcome.NOT_LANDED, True)),
    ],
)
def test_only_a_look_up_that_can_tell_gives_a_finding(lookup, expected):
    finding = asyncio.run(event_finding(OneLookUp(lookup), "key-1"))
    assert (finding if finding is None else (finding.outcome, finding.absent)) == expected


def test_an_error_outside_the_error_tree_is_not_swallowed():
    """A bug (not the engine's trouble) must show, not pass as "cannot tell"."""
    with pytest.raises(ZeroDivisionError):
        asyncio.run(event_finding(OneLookUp(ZeroDivisionError()), "key-1"))
