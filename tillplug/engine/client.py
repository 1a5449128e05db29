"""The Loyalty Engine client: one httpx connection pool, typed calls, errors from our tree.

Every httpx exception and every unexpected body is translated here; nothing
above this module sees httpx.  Secrets live in ``Secret`` objects and are put
into headers at the last moment, so they never reach a repr or a message.

Retry policy, while a cashier waits: at most ``max_attempts`` tries, and only
when the request certainly did not take effect (connection refused, 429, 503,
or a read that can be repeated).  A write whose outcome is unknown is never
resent here: ``OutcomeUnknown`` goes to the caller (the outbox reconciles it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from tillplug.config.loader import Secret
from tillplug.config.model import EngineConfig
from tillplug.engine.clock import EngineClock, InFlight, in_flight_window
from tillplug.engine.dialect import RELAY_DIALECT, EngineDialect, read_dialect_file
from tillplug.engine.http1 import Http1Transport
from tillplug.engine.lookup import LIST_LIMIT, SCAN_MAX_PAGES, FilterEvidence, Lookup, read_page, scan_recent
from tillplug.engine.models import (
    Benefit,
    Event,
    EventDefinition,
    Order,
    Reaction,
    ReactorResult,
    Token,
    User,
    Wallet,
    parse_time,
    points_of,
)
from tillplug.engine.outcome import Outcome
from tillplug.engine.refusals import VOUCHER_REASONS, classify_voucher_refusal
from tillplug.engine.traffic import OUTBOX, Traffic, current_use_case, parse_retry_after
from tillplug.errors import (
    BenefitNotFound,
    ConfigError,
    EngineAuthError,
    EngineProtocolError,
    EngineRejected,
    EngineServerError,
    EngineTimeout,
    EngineUnreachable,
    InsufficientPoints,
    MemberNotFound,
    OutcomeUnknown,
    RateLimited,
    RetryableError,
    ReturnExceedsSale,
    ReturnIdReused,
    SaleNotReported,
    TillplugError,
)
from tillplug.identifiers import is_documented_member_id

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

MAX_BACKOFF = 4.0  # seconds: the cashier is waiting
TOKEN_MARGIN = 300.0  # refresh the admin token this long before it expires
MAX_TOKEN_LIFETIME = 86400.0  # seconds: a cached token said to last longer than WLL's 24 h is not trusted
PAGE = 100  # items per page of a list call
DEFAULT_HEADERS = {"Accept": "application/json", "User-Agent": "tillplug"}
BENEFIT_MAX_PAGES = 10
RECENT_MAX_PAGES = 10  # a read of the latest events stops here (1,000 events) even if it did not reach back


def benefit_owned_by(benefit: Benefit, member_id: str) -> bool:
    """True only if the benefit itself names ``member_id`` as its owner (whatever a filter did)."""
    return member_id in benefit.owner_ids()


@dataclass(repr=False)
class EngineSecrets:
    api_key: Secret | None  # None only in relay mode
    relay_token: Secret | None = None  # relay mode: the till's token, sent instead of WLL's credentials
    client_id: Secret | None = None
    client_secret: Secret | None = None
    event_type_secrets: dict[str, Secret] = field(default_factory=dict)

    def __repr__(self) -> str:
        return "EngineSecrets(********)"


def event_key_filter(event_key: str) -> dict[str, str]:
    """The query that finds our event by its payload eventKey.

    WLL's filter syntax is unconfirmed (engine-api.md §6); it lives here alone.  What a
    look-up may conclude from the answer is ``tillplug.engine.lookup``'s business.
    """
    return {"filter[payload.eventKey]": event_key, "limit": str(PAGE), "order": "DESC"}


def order_key_filter(event_key: str) -> dict[str, str]:
    return {"filter[metadata.eventKey]": event_key, "limit": str(PAGE), "order": "DESC"}


class TokenCache:
    """The admin token, fetched by client credentials and reused until shortly before it expires.

    With ``path`` (in ``state_dir``) the token outlives a restart: WLL asks clients to cache
    its 24-hour tokens and throttles minting, and a crash loop must not mint one per start.
    The file is mode 0600, written atomically, and holds only the token, its expiry (wall
    clock) and a fingerprint of where it is valid (auth URL, client id, audience — no
    secret), so a changed config never reuses another tenant's token.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        path: str | os.PathLike[str] | None = None,
        scope: str = "",
    ) -> None:
        self._token: Secret | None = None
        self._expires = 0.0
        self._clock = clock
        self._lock = asyncio.Lock()
        self._path = Path(path) if path is not None else None
        self._scope = hashlib.sha256(scope.encode()).hexdigest()[:32]
        self._load()

    def valid(self) -> Secret | None:
        return self._token if self._token and self._clock() < self._expires else None

    def invalidate(self) -> None:
        self._token = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()

    async def get(self, fetch: Callable[[], Any]) -> Secret:
        if (token := self.valid()) is not None:
            return token
        async with self._lock:  # many callers, one fetch
            if (token := self.valid()) is not None:
                return token
            issued = self._clock()
            fetched: Token = await fetch()
            margin = min(TOKEN_MARGIN, fetched.expires_in / 10)
            self._token = Secret(fetched.access_token, renewed=True)
            self._expires = issued + fetched.expires_in - margin
            self._save(fetched.access_token)
            return self._token

    def _load(self) -> None:
        if self._path is None:
            return
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            token, expires, scope = data["access_token"], float(data["refresh_after"]), data["scope"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # no cache, or an unreadable one: mint a new token
        # An expiry more than a token's lifetime ahead comes from a clock that was wrong (or a damaged
        # file): such a token is not trusted, a new one is minted.
        now = self._clock()
        if scope == self._scope and isinstance(token, str) and token and now < expires <= now + MAX_TOKEN_LIFETIME:
            self._token, self._expires = Secret(token, renewed=True), expires

    def _save(self, token: str) -> None:
        if self._path is None:
            return
        body = json.dumps({"access_token": token, "refresh_after": self._expires, "scope": self._scope})
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)  # also when the file existed with looser bits
                f.write(body)
            os.replace(tmp, self._path)
        except OSError as exc:  # a cache that cannot be written costs a mint at the next start, no more
            log.warning("the engine token cannot be cached in %s (%s)", self._path.parent, exc.strerror or exc)


@dataclass(frozen=True)
class Probe:
    """An answer as engine-check saw it: status, the envelope's data (if readable), the raw body."""

    status: int
    data: Any
    readable: bool  # a JSON {status, data} envelope
    size: int
    body: dict[str, Any]
    message: str | None


class EngineClient:
    def __init__(
        self,
        config: EngineConfig,
        secrets: EngineSecrets,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        on_call: Callable[[str, float, str | None], None] | None = None,
        token_path: str | os.PathLike[str] | None = None,
        dialect: EngineDialect | None = None,
        traffic: Traffic | None = None,
    ) -> None:
        self.config = config
        self.traffic = traffic  # requests by use case; interactive 429s make the outbox yield
        self._secrets = secrets
        self.urls = config.urls()
        if config.relay_url is not None:  # the relay's own routes (docs/relay.md): a sale of the chain
            self.urls["relay"] = config.relay_url.rstrip("/") + "/relay/v1"
        self._sleep = sleep
        self._on_call = on_call  # (endpoint, seconds, error code or None): for metrics
        client_id = secrets.client_id.reveal() if secrets.client_id else ""
        self.tokens = TokenCache(path=token_path, scope=f"{self.urls['auth_url']} {client_id} {config.audience}")
        # A 401 after a refresh means the refresh did not help: no new token is minted (WLL throttles
        # minting) until some call is answered without a 401 again.
        self._refused_after_refresh = False
        # What engine-check found this engine to do; look-ups learn more as they go.
        self.dialect = dialect if dialect is not None else _dialect_or_unknown(config.dialect_file)
        if config.relay_mode:  # the relay answers look-ups exactly, from its own table (docs/relay.md)
            self.dialect = RELAY_DIALECT
        self.filter_evidence = FilterEvidence(
            {kind: True for kind in ("event", "order") if self.dialect.filter_works(kind)}
        )
        self.server_date: str | None = None  # the engine's Date header, last seen: doctor's clock check
        self.server_date_seen: float | None = None  # our clock (epoch s) when that Date header arrived
        # The engine's time from its Date headers (for verdicts comparing times) and the one rule
        # for when "not found" may be believed (tillplug.engine.clock).
        self.engine_clock = EngineClock()
        self.in_flight = InFlight(
            in_flight_window(config.connect_timeout, config.read_timeout, config.in_flight_window)
        )
        # Reading the unfiltered list (``scan_recent``): pages at the documented maximum, a cap on
        # pages per look-up.  The model check pages a short list in small pages to exercise paging.
        self.scan_limit, self.scan_pages = LIST_LIMIT, SCAN_MAX_PAGES
        # (endpoint, status) for every answer that is a failure (429, 5xx, 401/403, other 4xx): for health and metrics
        self.on_failure: Callable[[str, int], None] | None = None
        self._timeout = httpx.Timeout(
            config.read_timeout, connect=config.connect_timeout, pool=config.connect_timeout
        ).as_dict()
        verify: ssl.SSLContext | bool = True  # always verified: no option turns this off
        if config.ca_file:
            verify = ssl.create_default_context(cafile=config.ca_file)
        # Requests go straight to a transport: every call's URL is whole and its headers are set here, so
        # httpx's client would add only cookies, auth and redirect handling nobody uses (~85 us a request).
        # Direct, the engine/http1.py transport; through the shop's proxy, httpx's own.  Proxy and CA come
        # from the config, never from environment variables.
        if transport is None and config.proxy is None:
            transport = Http1Transport(verify=verify, max_keepalive=8, keepalive_expiry=60)
        elif transport is None:
            transport = httpx.AsyncHTTPTransport(
                verify=verify,
                proxy=config.proxy,
                trust_env=False,
                limits=httpx.Limits(max_keepalive_connections=8, keepalive_expiry=60),
            )
        self._transport: httpx.AsyncBaseTransport = transport

    def __repr__(self) -> str:
        return f"EngineClient({self.urls['base_url']})"

    def warm_up(self) -> None:
        """What the first request would build otherwise: an https engine's TLS context (its CA bundle
        read).  For the daemon to call once ready, in a worker thread, not on the first scan's path."""
        if isinstance(self._transport, Http1Transport) and any(u.startswith("https:") for u in self.urls.values()):
            self._transport.tls_context()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- calls -----------------------------------------------------------------

    async def get_user(self, member_id: str) -> User:
        """The member, looked up only by identifiers WLL documents a look-up for.

        A WLL id or account number → ``GET /users/{id}``.  Anything else (an authIdentifier)
        is never put in that path: it goes to ``find_user_by_auth_identifier``.
        """
        if not is_documented_member_id(member_id):
            return await self.find_user_by_auth_identifier(member_id)
        data = await self._call(
            "GET", f"/users/{quote(member_id, safe='')}", endpoint="users", not_found=MemberNotFound
        )
        return _parse(User, data)

    async def find_user_by_auth_identifier(self, auth_identifier: str) -> User:
        """``GET /users/?filter[authIdentifier]=…``, believed only if the answer names that member.

        WLL documents no look-up by authIdentifier; an engine that ignores or rejects the
        filter gives ``MemberNotFound`` with the reason, never somebody else.
        """
        params = {"filter[authIdentifier]": auth_identifier, "limit": "10", "skip": "0", "order": "DESC"}
        why = (
            "This card carries an identifier the loyalty service offers no look-up for; "
            "use cards with the member id or account number."
        )
        try:
            data = await self._call("GET", "/users/", params=params, endpoint="users_lookup")
        except EngineRejected as exc:
            if isinstance(exc, EngineAuthError):
                raise
            raise MemberNotFound(why, status=exc.status, engine_message=exc.engine_message) from None
        users = [u for u in _parse_list(User, data) if u.auth_identifier == auth_identifier]
        if len(users) != 1:
            raise MemberNotFound(None if not users and _is_list(data) and not data else why)
        return users[0]

    async def get_wallet(self, user_id: str) -> Wallet:
        path = f"/users/{quote(user_id, safe='')}/wallet"
        return _parse(Wallet, await self._call("GET", path, endpoint="wallet", not_found=MemberNotFound))

    async def list_benefits(self, user_id: str) -> list[Benefit]:
        """The benefits whose owner is ``user_id`` (a WLL id), checked here whatever the filter did.

        ``filter[owner]`` is undocumented.  Pages are read until one comes back short; a
        benefit naming another owner (the filter was ignored) or none at all is dropped.
        If the filter is rejected, or shown to be ignored, the member's own wallet (a
        documented, per-member route) is read instead.
        """
        owned: list[Benefit] = []
        ignored = False
        try:
            for page in range(BENEFIT_MAX_PAGES):
                params = {"filter[owner]": user_id, "limit": str(PAGE), "skip": str(page * PAGE), "order": "DESC"}
                items = _parse_list(Benefit, await self._call("GET", "/benefits/", params=params, endpoint="benefits"))
                for b in items:
                    if benefit_owned_by(b, user_id):
                        owned.append(b)
                    else:
                        ignored = True
                if ignored or len(items) < PAGE:
                    break
        except EngineRejected as exc:
            if isinstance(exc, EngineAuthError):
                raise
            ignored = True
        if not ignored:
            return owned
        log.info("benefits: the engine did not filter by owner; reading the member's wallet instead")
        wallet = await self.get_wallet(user_id)
        return [b for b in wallet.vouchers if not b.owner_ids() or benefit_owned_by(b, user_id)]

    async def get_owned_benefit(self, benefit_id: str, member_id: str) -> Benefit:
        """One of ``member_id``'s benefits; ``BenefitNotFound`` if it is someone else's or nobody's.

        Call this before anything irreversible (``redeem_benefit``, a burn) on a benefit a
        till named by id.
        """
        for b in await self.list_benefits(member_id):
            if b.id == benefit_id:
                return b
        raise BenefitNotFound("This voucher is not in the member's wallet.")

    async def find_voucher(self, code: str, member_id: str) -> Benefit | None:
        """The member's benefit carrying ``code``, to settle a burn whose outcome is unknown.

        Its ``state()`` tells whether the burn landed (``burned``) or not.  None when the
        member has no benefit with that code.
        """
        for b in await self.list_benefits(member_id):
            if b.code is not None and b.code.value == code:
                return b
        return None

    async def find_benefit_by_code(self, code: str) -> Benefit | None:
        """Whoever's benefit carries ``code``, newest first, at most ``BENEFIT_MAX_PAGES`` pages; None if not seen.

        For settling a burn of unknown outcome on a sale with no member: only the
        benefit tells when the code was burned.
        """
        for page in range(BENEFIT_MAX_PAGES):
            params = {"limit": str(PAGE), "skip": str(page * PAGE), "order": "DESC"}
            items = _parse_list(Benefit, await self._call("GET", "/benefits/", params=params, endpoint="benefits"))
            for b in items:
                if b.code is not None and b.code.value == code:
                    return b
            if len(items) < PAGE:
                break
        return None

    async def get_benefit(self, benefit_id: str) -> Benefit:
        path = f"/benefits/{quote(benefit_id, safe='')}"
        return _parse(Benefit, await self._call("GET", path, endpoint="benefits", not_found=BenefitNotFound))

    async def redeem_benefit(self, benefit_id: str) -> Benefit:
        data = await self._call(
            "POST",
            "/commands/redeem_benefit",
            json={"benefitId": benefit_id},
            endpoint="redeem_benefit",
            write=True,
            not_found=BenefitNotFound,
        )
        return _parse_written(Benefit, data)

    async def validate_voucher(
        self, code: str, *, check_only: bool = False, user_identifier: str | None = None
    ) -> Benefit:
        body: dict[str, Any] = {"code": code}
        if check_only:
            body["allowFutureValidation"] = True
        if user_identifier and self.config.send_user_identifier:
            body["userIdentifier"] = user_identifier
        if self.config.venue_identifier:
            body["venueIdentifier"] = self.config.venue_identifier
        data = await self._call(
            "POST",
            "/commands/validate_voucher",
            json=body,
            endpoint="validate_voucher",
            write=not check_only,
            voucher=True,
        )
        return _parse_written(Benefit, data) if not check_only else _parse(Benefit, data)

    async def report_event(self, event: EventDefinition) -> Event:
        with self._sending(event.payload.get("eventKey")):
            data = await self._call(
                "POST", "/events/", json=event.body(), endpoint="events", write=True, event_type=event.type
            )
        return _parse_written(Event, data)

    @contextmanager
    def _sending(self, event_key: object) -> Iterator[None]:
        """A write carrying ``event_key``: when the attempt ends, however, its in-flight window starts."""
        try:
            yield
        finally:
            if isinstance(event_key, str) and event_key:
                self.in_flight.sent(event_key)

    async def test_reaction(self, event: EventDefinition) -> list[ReactorResult]:
        data = await self._call("POST", "/events/test_reaction", json=event.body(), endpoint="test_reaction")
        return _parse_list(ReactorResult, data)

    async def find_events(self, event_key: str) -> list[Event]:
        """Events whose payload carries ``event_key`` (checked here, whatever the filter did)."""
        result = await self.look_up_event(event_key)
        return [Event(id=result.engine_id or "found", type="")] if result.found else []

    async def look_up_event(self, event_key: str, since: float | None = None) -> Lookup:
        """Did a write carrying ``event_key`` reach the engine?  landed / not_landed / unknown (an ``Outcome``).

        ``since``: the earliest the write can have been sent (epoch seconds, our clock), which
        lets a look-up that the filter cannot answer stop reading the engine's list there.
        """
        return await self._look_up("event", event_key, since)

    async def look_up_order(self, event_key: str, since: float | None = None) -> Lookup:
        """The same for a Receipts order (its ``metadata.eventKey``)."""
        return await self._look_up("order", event_key, since)

    async def _look_up(self, kind: str, key: str, since: float | None) -> Lookup:
        """By the eventKey filter; where it cannot tell (ignored, rejected, never shown to work),
        by reading the recent unfiltered list (``tillplug.engine.lookup.scan_recent``)."""
        calibrated = self.dialect.event_key_filter if kind == "event" else self.dialect.order_key_filter
        if calibrated in ("ignored", "rejected"):  # engine-check saw it cannot tell: one request saved
            found = Lookup(Outcome.UNKNOWN, reason=f"the eventKey filter is {calibrated} (engine-check)")
        else:
            found = await self._look_up_filtered(kind, key)
        if found.outcome is not Outcome.UNKNOWN:
            return found
        scanned = await scan_recent(
            self._recent_page(kind),
            key,
            self._engine_since(since),
            kind=kind,
            max_pages=self.scan_pages,
            limit=self.scan_limit,
        )
        if scanned.outcome is Outcome.UNKNOWN:
            return Lookup(Outcome.UNKNOWN, reason=f"{found.reason}; {scanned.reason}", unproven=found.unproven)
        return scanned

    def _recent_page(self, kind: str) -> Callable[[int, int], Awaitable[list[Any]]]:
        """One page of the unfiltered list, newest first: (skip, limit) -> items."""

        async def page(skip: int, limit: int) -> list[Any]:
            params = {"limit": str(limit), "skip": str(skip), "order": "DESC"}
            if kind == "order":
                data = await self._call("GET", "/orders", params=params, endpoint="orders_scan", base="receipts_url")
                return [o for o in _list(data, "order") if isinstance(o, dict)]
            data = await self._call("GET", "/events/", params=params, endpoint="events_scan")
            return [e for e in _list(data, "event") if isinstance(e, dict)]

        return page

    def _engine_since(self, since: float | None) -> float | None:
        """Our epoch seconds ``since`` on the engine's clock, at the earliest (its Date headers)."""
        if since is None:
            return None
        engine_now = self.engine_clock.now()
        return since if engine_now is None else since + (engine_now.low - time.time())

    async def _look_up_filtered(self, kind: str, key: str) -> Lookup:
        # One page answers: a filter that works lists only the key's items (the first of them is
        # enough) or none at all; any other item shows it ignored, whatever the pages after it hold.
        try:
            if kind == "order":
                data = await self._call(
                    "GET", "/orders", params=order_key_filter(key), endpoint="orders_lookup", base="receipts_url"
                )
                items = [o for o in _list(data, "order") if isinstance(o, dict)]
                verdict = read_page(items, key, lambda o: (o.get("metadata") or {}).get("eventKey"))
                engine_id = str(verdict.match.get("id", "found")) if verdict.match is not None else None
            else:
                data = await self._call("GET", "/events/", params=event_key_filter(key), endpoint="events_lookup")
                events = _parse_list(Event, data)
                verdict = read_page(events, key, lambda e: e.payload.get("eventKey"))
                engine_id = verdict.match.id if verdict.match is not None else None
        except EngineAuthError:
            raise  # credentials: the caller waits for a technician
        except (EngineRejected, EngineProtocolError) as exc:
            # The look-up itself was refused or unreadable: it proves nothing either way,
            # and it must never condemn the write it was checking.
            return Lookup(Outcome.UNKNOWN, reason=f"the look-up was refused ({exc.code})")
        self.filter_evidence.observe(kind, verdict)
        if verdict.match is not None:
            return Lookup(Outcome.LANDED, engine_id=engine_id)
        if verdict.foreign:  # an ignored filter: the unfiltered list is read instead
            return Lookup(Outcome.UNKNOWN, reason="the engine ignored the eventKey filter")
        if self.filter_evidence.works(kind):
            return Lookup(Outcome.NOT_LANDED)
        return Lookup(Outcome.UNKNOWN, reason="the eventKey filter is not known to work", unproven=True)

    async def recent_events(
        self, until: Callable[[Event], bool], *, max_pages: int = RECENT_MAX_PAGES
    ) -> tuple[list[Event], bool]:
        """The latest events, newest first, up to and including the first one ``until`` is true of.

        ``GET /events/`` unfiltered (documented; its filters are not).  The flag says whether such
        an event was reached (or the list ended) within ``max_pages``: if not, the list stops short.
        """
        found: list[Event] = []
        for page in range(max_pages):
            params = {"limit": str(PAGE), "skip": str(page * PAGE), "order": "DESC"}
            items = _parse_list(Event, await self._call("GET", "/events/", params=params, endpoint="events_recent"))
            for e in items:
                found.append(e)
                if until(e):
                    return found, True
            if len(items) < PAGE:
                return found, True
        return found, False

    async def relay_sale(self, tx_id: str, return_id: str | None = None) -> Any:
        """Relay mode: what the chain reported for sale ``tx_id`` (``GET /relay/v1/sales/{tx}``), raw;
        with ``return_id``, where this till's return of it stands among the sale's returns."""
        params = {"returnId": return_id} if return_id else None
        path = f"/sales/{quote(tx_id, safe='')}"
        return await self._call("GET", path, params=params, endpoint="relay_sale", base="relay")

    async def relay_register_return(self, tx_id: str, body: Mapping[str, Any]) -> Any:
        """Relay mode: register a return of a chain's sale (idempotent by returnId); the sale, raw."""
        path = f"/sales/{quote(tx_id, safe='')}/returns"
        return await self._call("POST", path, json=body, endpoint="relay_returns", base="relay")

    async def event_reactions(self, event_id: str) -> list[Reaction]:
        """The reactions applied to an event, read in either shape an engine may use.

        Flat ``[{type, points}]`` or nested like test_reaction ``[{reactor, reactions: [...]}]``.
        Items in neither shape are skipped and an unreadable answer reads as "none yet":
        this call only ever *confirms* a write, so it must never turn one into a failure.
        """
        path = f"/events/{quote(event_id, safe='')}/reactions"
        try:
            data = await self._call("GET", path, endpoint="reactions")
        except EngineProtocolError:
            log.info("reactions: the engine's answer could not be read; treated as not yet applied")
            return []
        return _reactions(data)

    async def reaction_points(self, event_id: str) -> float | None:
        """Points the engine applied for ``event_id`` (negative: deducted), or None if not visible.

        Never raises for what the engine answers: None means "not confirmed (yet)", which a
        caller must treat as *unconfirmed*, not as failed.  Credentials errors still raise.
        """
        try:
            reactions = await self.event_reactions(event_id)
        except EngineAuthError:
            raise
        except (RetryableError, EngineRejected):
            return None
        if not any(r.type == "POINTS" for r in reactions):
            return None
        return points_of(reactions)

    async def submit_order(self, order: Order) -> dict[str, Any]:
        with self._sending(order.metadata.get("eventKey")):
            data = await self._call(
                "POST", "/orders", json=order.body(), endpoint="orders", write=True, base="receipts_url"
            )
        if not isinstance(data, dict):
            raise OutcomeUnknown("The loyalty service's answer to an order could not be read; it may have landed.")
        return data

    async def find_orders(self, event_key: str) -> list[dict[str, Any]]:
        """Orders whose metadata carries ``event_key`` (checked here, whatever the filter did)."""
        result = await self.look_up_order(event_key)
        return [{"id": result.engine_id}] if result.found else []

    async def ping(self) -> Ping:
        """One authenticated round trip (the token endpoint excluded): its time and the engine's clock."""
        start = time.perf_counter()
        await self._call("GET", "/events/", params={"limit": "1", "skip": "0", "order": "DESC"}, endpoint="ping")
        return Ping(time.perf_counter() - start, self.server_date)

    # -- calibration (tillplug engine-check only) ---------------------------------

    async def probe(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Mapping[str, Any] | None = None,
        base: str = "base_url",
    ) -> Probe:
        """One authenticated call whose answer is returned as seen, 4xx included, for engine-check.

        Transport failures still raise from the error tree; nothing is retried.
        """
        headers = await self._headers(None)
        response = await self._send(
            method, self.urls[base] + path, params=params, json=json, headers=headers, write=False, endpoint="probe"
        )
        try:
            envelope: Any = _envelope(response)
            readable = True
        except EngineProtocolError:
            envelope, readable = None, False
        body = _body(response)
        return Probe(response.status_code, envelope, readable, len(response.content), body, _engine_message(body))

    async def audience_accepted(self, audience: str) -> bool | None:
        """Does the auth service mint a token for ``audience``?  None if its answer says neither."""
        s = self._secrets
        if s.client_id is None or s.client_secret is None:
            return None
        body = {
            "client_id": s.client_id.reveal(),
            "client_secret": s.client_secret.reveal(),
            "audience": audience,
            "grant_type": "client_credentials",
        }
        response = await self._send("POST", self.urls["auth_url"], json=body, write=False, endpoint="token")
        if response.status_code in (400, 401, 403):
            return False
        return True if response.is_success else None

    # -- machinery ---------------------------------------------------------------

    async def _fetch_token(self) -> Token:
        s = self._secrets
        if s.client_id is None or s.client_secret is None:
            raise EngineAuthError("no client credentials are configured for the admin token")
        body = {
            "client_id": s.client_id.reveal(),
            "client_secret": s.client_secret.reveal(),
            "audience": self.config.audience,
            "grant_type": "client_credentials",
        }
        response = await self._send("POST", self.urls["auth_url"], json=body, write=False, endpoint="token")
        if response.status_code >= 400 and self.on_failure is not None:
            self.on_failure("token", response.status_code)
        if response.status_code in (401, 403):
            raise EngineAuthError("the auth service refused the client credentials", status=response.status_code)
        if response.status_code >= 400:
            raise _status_error(response, write=False)
        try:
            return Token.model_validate(response.json())
        except (ValueError, ValidationError):
            raise EngineProtocolError("the auth service's token answer does not parse") from None

    async def _headers(self, event_type: str | None) -> dict[str, str]:
        if self._secrets.relay_token is not None:  # the relay adds WLL's key and token itself
            return {"Authorization": f"Bearer {self._secrets.relay_token.reveal()}"}
        if self._secrets.api_key is None:
            raise EngineAuthError("no API key is configured for the loyalty service")
        headers = {"X-Api-Key": self._secrets.api_key.reveal()}
        secret = self._secrets.event_type_secrets.get(event_type or "")
        token = secret or await self.tokens.get(self._fetch_token)
        headers["Authorization"] = f"Bearer {token.reveal()}"
        return headers

    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        json: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """One request through the transport, its answer read whole (and its stream closed)."""
        request = httpx.Request(
            method,
            url,
            params=params,
            json=json,
            headers={**DEFAULT_HEADERS, **(headers or {})},
            extensions={"timeout": self._timeout},
        )
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def _send(self, method: str, url: str, *, write: bool, endpoint: str, **kw: Any) -> httpx.Response:
        """One HTTP exchange with httpx's exceptions translated."""
        start = time.perf_counter()
        left = time.monotonic()  # for the engine's clock: the request left after this
        error: str | None = None
        if self.traffic is not None:
            self.traffic.request()
        try:
            response = await self._exchange(method, url, **kw)
            if "date" in response.headers:
                self.server_date, self.server_date_seen = response.headers["date"], time.time()
                self.engine_clock.observe(response.headers["date"], left)
            return response
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            error = "timeout"
            raise EngineTimeout() from exc
        except httpx.ConnectError as exc:
            error = "unreachable"
            raise EngineUnreachable() from exc
        except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
            error = "timeout"
            raise (OutcomeUnknown() if write else EngineTimeout()) from exc
        except httpx.TransportError as exc:  # reset, half-sent response, protocol error
            error = "transport"
            raise (OutcomeUnknown() if write else EngineUnreachable()) from exc
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            # Anything else httpx raises once the request may have left (a proxy's broken gzip is
            # a DecodingError, not a TransportError): a read's is protocol trouble, a write's an
            # unknown outcome.  Nothing from httpx goes past this line.
            error = "protocol"
            if write:
                raise OutcomeUnknown(
                    "The loyalty service's answer could not be read; the request may have been applied."
                ) from exc
            raise EngineProtocolError(
                f"The loyalty service's answer could not be read ({type(exc).__name__})."
            ) from exc
        finally:
            if error is not None and self.traffic is not None:
                self.traffic.unanswered()
            if self._on_call:
                self._on_call(endpoint, time.perf_counter() - start, error)

    async def _call(  # noqa: PLR0913 -- every engine call passes through here with its own options
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        write: bool = False,
        base: str = "base_url",
        event_type: str | None = None,
        not_found: type[EngineRejected] | None = None,
        voucher: bool = False,
    ) -> Any:
        url = self.urls[base] + path
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            headers = await self._headers(event_type)
            try:
                response = await self._send(
                    method, url, json=json, params=params, headers=headers, write=write, endpoint=endpoint
                )
            except (EngineUnreachable, EngineTimeout) as exc:
                # Not sent (or a read): safe to try again while attempts remain.
                if attempt >= self.config.max_attempts:
                    raise
                await self._sleep(_backoff(attempt))
                log.debug("engine %s: %s, retrying", endpoint, exc.code)
                continue
            status = response.status_code
            if status >= 400 and self.on_failure is not None:
                self.on_failure(endpoint, status)
            if self.traffic is not None:
                self.traffic.answered(status, parse_retry_after(response.headers.get("Retry-After")))
            if self._refresh_token_after(status, event_type, refreshed):
                refreshed = True
                continue
            # The outbox paces itself (tillplug/outbox/pacing.py): its 429s go straight back to it.
            if status in (429, 503) and attempt < self.config.max_attempts and current_use_case() != OUTBOX:
                await self._sleep(_retry_after(response) or _backoff(attempt))
                continue
            if status >= 400:
                raise _status_error(response, write=write, not_found=not_found, voucher=voucher)
            try:
                return _envelope(response)
            except EngineProtocolError as exc:
                if write:  # it said 2xx: the write may well have been applied
                    raise OutcomeUnknown(
                        "The loyalty service's answer could not be read; the request may have been applied."
                    ) from exc
                raise

    def _refresh_token_after(self, status: int, event_type: str | None, refreshed: bool) -> bool:
        """Should this answer's call be sent again with a new admin token?  Once per call, and once
        per streak of 401s: the token may have been revoked or expired early, but a 401 after a
        refresh means a new token does not help, and WLL throttles minting."""
        if event_type in self._secrets.event_type_secrets or self._secrets.relay_token is not None:
            return False  # the event type's own secret, or the relay's till token: no token to refresh
        if status != 401:
            self._refused_after_refresh = False
            return False
        if refreshed or self._refused_after_refresh:
            self._refused_after_refresh = True
            return False
        self.tokens.invalidate()
        return True


def created_at(event: Event) -> datetime | None:
    """When the engine created ``event`` (UTC), or None if it does not say in a form tillplug reads."""
    try:
        when = parse_time(event.created_at)
    except ValueError:
        return None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


def _dialect_or_unknown(path: str | None) -> EngineDialect:
    """The dialect file's answers; all unknown (the safe answer) if it is missing or unreadable."""
    try:
        return read_dialect_file(path)
    except ConfigError as exc:
        log.error("%s; trusting nothing about this engine until it is there", exc.message)
        return EngineDialect()


def _backoff(attempt: int) -> float:
    """Exponential with full jitter, capped."""
    return random.uniform(0, min(MAX_BACKOFF, 0.2 * 2**attempt))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, min(float(value), MAX_BACKOFF))
    except ValueError:
        return None


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _engine_message(body: Mapping[str, Any]) -> str | None:
    for candidate in (
        body.get("message"),
        (body.get("data") or {}).get("message") if isinstance(body.get("data"), dict) else None,
    ):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()[:300]
    return None


def _status_error(  # noqa: PLR0911 -- one return per HTTP status class, in the order they are checked
    response: httpx.Response,
    *,
    write: bool,
    not_found: type[EngineRejected] | None = None,
    voucher: bool = False,
) -> Exception:
    status = response.status_code
    body = _body(response)
    message = _engine_message(body)
    if status == 429:
        return RateLimited(retry_after=parse_retry_after(response.headers.get("Retry-After")))
    if status >= 500:
        if write and status != 503:  # a 500/502/504 may have been applied behind a gateway
            return OutcomeUnknown()
        return EngineServerError(f"The loyalty service had a problem (HTTP {status}).")
    if status == 401:  # 401 alone means credentials
        return EngineAuthError(status=status, engine_message=message)
    relay_code = _relay_code(body)
    if relay_code in RELAY_ERRORS:  # the chain relay's guard and its return caps (docs/relay.md)
        return RELAY_ERRORS[relay_code](message)
    if relay_code is not None:  # the relay's own refusal of this till: never read as our credentials
        return EngineRejected(f"The relay refused the request: {message}", status=status, engine_message=message)
    if voucher:  # a 403 here is another member's or another venue's voucher, not our credentials
        return classify_voucher_refusal(status, body, message)
    if status == 403:
        return EngineAuthError(status=status, engine_message=message)
    if status == 404 and not_found is not None:
        return not_found(status=status, engine_message=message)
    text = f"The loyalty service refused the request: {message}" if message else None
    return EngineRejected(text, status=status, engine_message=message)


RELAY_ERRORS: dict[str, type[TillplugError]] = {
    "insufficient_points": InsufficientPoints,
    "return_exceeds_sale": ReturnExceedsSale,
    "return_id_reused": ReturnIdReused,
    "sale_not_found": SaleNotReported,
}
RELAY_REFUSALS = frozenset(
    {
        "insufficient_points",
        "forbidden",
        "spend_in_progress",
        "duplicate_event",
        "refund_exceeds_deduction",
        "points_exceed_sale",
        *RELAY_ERRORS,
    }
)


def _relay_code(body: Mapping[str, Any]) -> str | None:
    """The chain relay's own refusal code, if the body carries one (docs/relay.md)."""
    data = body.get("data")
    code = data.get("code") if isinstance(data, dict) else None
    return code if code in RELAY_REFUSALS else None


def _envelope(response: httpx.Response) -> Any:
    """``data`` from ``{status: "success", data: ...}``, or a protocol error."""
    ctype = response.headers.get("content-type", "")
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        raise EngineProtocolError(
            f"The loyalty service sent a non-JSON answer (HTTP {response.status_code}, "
            f"{ctype or 'no content type'}, {len(response.content)} bytes)."
        ) from None
    if not isinstance(body, dict) or "data" not in body:
        raise EngineProtocolError("The loyalty service's answer has no 'data' envelope.")
    if body.get("status", "success") != "success":
        raise EngineProtocolError(
            f"The loyalty service answered status {str(body.get('status'))[:20]!r} with HTTP 2xx."
        )
    return body["data"]


@dataclass(frozen=True)
class Ping:
    seconds: float
    server_date: str | None  # the Date header, RFC 1123, when the engine sent one


def _parse(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(root)" for e in exc.errors()[:3])
        raise EngineProtocolError(
            f"The loyalty service's {model.__name__.lower()} answer has an unexpected shape ({fields})."
        ) from None


def _parse_written(model: type[M], data: Any) -> M:
    """A write's answer: said 2xx but unreadable means it may well have landed (look it up)."""
    try:
        return _parse(model, data)
    except EngineProtocolError as exc:
        raise OutcomeUnknown(
            "The loyalty service accepted the request but its answer could not be read; it will be looked up."
        ) from exc


def _parse_list(model: type[M], data: Any) -> list[M]:
    if not isinstance(data, list):
        raise EngineProtocolError(f"The loyalty service sent no list of {model.__name__.lower()}s.")
    return [_parse(model, item) for item in data]


def _is_list(data: Any) -> bool:
    return isinstance(data, list)


def _list(data: Any, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise EngineProtocolError(f"The loyalty service sent no list of {what}s.")
    return data


def _reactions(data: Any) -> list[Reaction]:
    """Flat and nested reaction lists, both read; anything else skipped."""
    if not isinstance(data, list):
        return []
    found: list[Reaction] = []
    for item in data:
        if not isinstance(item, dict):
            continue
        inner = item.get("reactions")
        for candidate in inner if isinstance(inner, list) else [item]:
            try:
                found.append(Reaction.model_validate(candidate))
            except ValidationError:
                continue
    return found


__all__ = [
    "VOUCHER_REASONS",
    "EngineClient",
    "EngineSecrets",
    "TokenCache",
    "benefit_owned_by",
    "event_key_filter",
    "is_documented_member_id",
]
