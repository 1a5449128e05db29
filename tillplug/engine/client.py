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
import json
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from tillplug.config.loader import Secret
from tillplug.config.model import EngineConfig
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
)
from tillplug.errors import (
    BenefitNotFound,
    EngineAuthError,
    EngineProtocolError,
    EngineRejected,
    EngineServerError,
    EngineTimeout,
    EngineUnreachable,
    MemberNotFound,
    OutcomeUnknown,
    RateLimited,
    VoucherAlreadyUsed,
    VoucherError,
    VoucherExpired,
    VoucherNotRedeemed,
    VoucherUnknown,
    VoucherWrongMember,
    VoucherWrongVenue,
)
from tillplug.traffic import OUTBOX, Traffic, current_use_case, parse_retry_after

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

MAX_BACKOFF = 4.0  # seconds: the cashier is waiting
TOKEN_MARGIN = 300.0  # refresh the admin token this long before it expires


@dataclass(repr=False)
class EngineSecrets:
    api_key: Secret
    client_id: Secret | None = None
    client_secret: Secret | None = None
    event_type_secrets: dict[str, Secret] = field(default_factory=dict)

    def __repr__(self) -> str:
        return "EngineSecrets(********)"


# How the engine says which voucher outcome it is (engine-api.md part 1 §10).  The
# real codes are unconfirmed; this table is the one place to correct them.
VOUCHER_REASONS: dict[str, type[VoucherError]] = {
    "VOUCHER_NOT_FOUND": VoucherUnknown,
    "VOUCHER_ALREADY_BURNED": VoucherAlreadyUsed,
    "VOUCHER_EXPIRED": VoucherExpired,
    "VOUCHER_NOT_REDEEMED": VoucherNotRedeemed,
    "VOUCHER_WRONG_USER": VoucherWrongMember,
    "VOUCHER_WRONG_VENUE": VoucherWrongVenue,
}


def event_key_filter(event_key: str) -> dict[str, str]:
    """The query that finds our event by its payload eventKey.

    WLL's filter syntax is unconfirmed (engine-api.md §6); it lives here alone.
    """
    return {"filter[payload.eventKey]": event_key, "limit": "10", "skip": "0", "order": "DESC"}


class TokenCache:
    """The admin token, fetched by client credentials and reused until shortly before it expires."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._token: Secret | None = None
        self._expires = 0.0
        self._clock = clock
        self._lock = asyncio.Lock()
        self.fetches = 0

    def valid(self) -> Secret | None:
        return self._token if self._token and self._clock() < self._expires else None

    def invalidate(self) -> None:
        self._token = None

    async def get(self, fetch: Callable[[], Any]) -> Secret:
        if (token := self.valid()) is not None:
            return token
        async with self._lock:  # many callers, one fetch
            if (token := self.valid()) is not None:
                return token
            issued = self._clock()
            fetched: Token = await fetch()
            self.fetches += 1
            margin = min(TOKEN_MARGIN, fetched.expires_in / 10)
            self._token = Secret(fetched.access_token)
            self._expires = issued + fetched.expires_in - margin
            return self._token


class EngineClient:
    def __init__(
        self,
        config: EngineConfig,
        secrets: EngineSecrets,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        on_call: Callable[[str, float, str | None], None] | None = None,
        traffic: Traffic | None = None,
    ) -> None:
        self.config = config
        self.traffic = traffic  # requests by use case; interactive 429s make the outbox yield
        self._secrets = secrets
        self.urls = config.urls()
        self._sleep = sleep
        self._on_call = on_call  # (endpoint, seconds, error code or None): for metrics
        self.tokens = TokenCache()
        timeout = httpx.Timeout(config.read_timeout, connect=config.connect_timeout, pool=config.connect_timeout)
        verify: ssl.SSLContext | bool = True  # always verified: no option turns this off
        if config.ca_file:
            verify = ssl.create_default_context(cafile=config.ca_file)
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            limits=httpx.Limits(max_keepalive_connections=8, keepalive_expiry=60),
            verify=verify,
            proxy=config.proxy,
            # Proxy and CA come from the config, never from environment variables; this also
            # spares httpx looking at the environment on every request.
            trust_env=False,
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "tillplug"},
        )

    def __repr__(self) -> str:
        return f"EngineClient({self.urls['base_url']})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- calls -----------------------------------------------------------------

    async def get_user(self, member_id: str) -> User:
        data = await self._call(
            "GET", f"/users/{quote(member_id, safe='')}", endpoint="users", not_found=MemberNotFound
        )
        return _parse(User, data)

    async def get_wallet(self, user_id: str) -> Wallet:
        path = f"/users/{quote(user_id, safe='')}/wallet"
        return _parse(Wallet, await self._call("GET", path, endpoint="wallet", not_found=MemberNotFound))

    async def list_benefits(self, user_id: str) -> list[Benefit]:
        params = {"filter[owner]": user_id, "limit": "100", "skip": "0", "order": "DESC"}
        data = await self._call("GET", "/benefits/", params=params, endpoint="benefits")
        return _parse_list(Benefit, data)

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
        return _parse(Benefit, data)

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
        return _parse(Benefit, data)

    async def report_event(self, event: EventDefinition) -> Event:
        data = await self._call(
            "POST", "/events/", json=event.body(), endpoint="events", write=True, event_type=event.type
        )
        return _parse(Event, data)

    async def test_reaction(self, event: EventDefinition) -> list[ReactorResult]:
        data = await self._call("POST", "/events/test_reaction", json=event.body(), endpoint="test_reaction")
        return _parse_list(ReactorResult, data)

    async def find_events(self, event_key: str) -> list[Event]:
        """Events whose payload carries ``event_key``: how an unknown outcome is resolved."""
        data = await self._call("GET", "/events/", params=event_key_filter(event_key), endpoint="events_lookup")
        return [e for e in _parse_list(Event, data) if e.payload.get("eventKey") == event_key]

    async def event_reactions(self, event_id: str) -> list[Reaction]:
        path = f"/events/{quote(event_id, safe='')}/reactions"
        return _parse_list(Reaction, await self._call("GET", path, endpoint="reactions"))

    async def submit_order(self, order: Order) -> dict[str, Any]:
        data = await self._call(
            "POST", "/orders", json=order.body(), endpoint="orders", write=True, base="receipts_url"
        )
        if not isinstance(data, dict):
            raise EngineProtocolError("the order answer is not an object")
        return data

    async def find_orders(self, event_key: str) -> list[dict[str, Any]]:
        params = {"filter[metadata.eventKey]": event_key, "limit": "10", "skip": "0", "order": "DESC"}
        data = await self._call("GET", "/orders", params=params, endpoint="orders_lookup", base="receipts_url")
        if not isinstance(data, list):
            raise EngineProtocolError("the order list is not a list")
        return [o for o in data if isinstance(o, dict) and (o.get("metadata") or {}).get("eventKey") == event_key]

    async def ping(self) -> float:
        """Seconds for one authenticated round trip (the token endpoint excluded)."""
        start = time.perf_counter()
        await self._call("GET", "/events/", params={"limit": "1", "skip": "0", "order": "DESC"}, endpoint="ping")
        return time.perf_counter() - start

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
        if response.status_code in (401, 403):
            raise EngineAuthError("the auth service refused the client credentials", status=response.status_code)
        if response.status_code >= 400:
            raise _status_error(response, write=False)
        try:
            return Token.model_validate(response.json())
        except (ValueError, ValidationError):
            raise EngineProtocolError("the auth service's token answer does not parse") from None

    async def _headers(self, event_type: str | None) -> dict[str, str]:
        headers = {"X-Api-Key": self._secrets.api_key.reveal()}
        secret = self._secrets.event_type_secrets.get(event_type or "")
        token = secret or await self.tokens.get(self._fetch_token)
        headers["Authorization"] = f"Bearer {token.reveal()}"
        return headers

    async def _send(self, method: str, url: str, *, write: bool, endpoint: str, **kw: Any) -> httpx.Response:
        """One HTTP exchange with httpx's exceptions translated."""
        start = time.perf_counter()
        error: str | None = None
        if self.traffic is not None:
            self.traffic.request()
        try:
            return await self._http.request(method, url, **kw)
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
        finally:
            if self._on_call:
                self._on_call(endpoint, time.perf_counter() - start, error)

    async def _call(
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
            if self.traffic is not None:
                self.traffic.answered(status, parse_retry_after(response.headers.get("Retry-After")))
            if status == 401 and not refreshed and event_type not in self._secrets.event_type_secrets:
                refreshed = True  # the token may have been revoked or expired early: once
                self.tokens.invalidate()
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


def _status_error(
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
    data = body.get("data")
    reason = data.get("code") if isinstance(data, dict) else None
    if voucher and str(reason) in VOUCHER_REASONS:  # wrong member / venue may come as 403
        return VOUCHER_REASONS[str(reason)](status=status, engine_message=message)
    if status in (401, 403):
        return EngineAuthError(status=status, engine_message=message)
    if voucher:
        cls = VoucherUnknown if status == 404 else VoucherError
        return cls(status=status, engine_message=message)
    if status == 404 and not_found is not None:
        return not_found(status=status, engine_message=message)
    text = f"The loyalty service refused the request: {message}" if message else None
    return EngineRejected(text, status=status, engine_message=message)


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


def _parse(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(root)" for e in exc.errors()[:3])
        raise EngineProtocolError(
            f"The loyalty service's {model.__name__.lower()} answer has an unexpected shape ({fields})."
        ) from None


def _parse_list(model: type[M], data: Any) -> list[M]:
    if not isinstance(data, list):
        raise EngineProtocolError(f"The loyalty service sent no list of {model.__name__.lower()}s.")
    return [_parse(model, item) for item in data]


__all__ = ["EngineClient", "EngineSecrets", "TokenCache", "event_key_filter"]
