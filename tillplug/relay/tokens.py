"""Till tokens: enrolled, checked on every call, revoked everywhere within 5 seconds.

A token is 32 random bytes, printed once at enrolment; the database keeps only its SHA-256.
Each process remembers a token's till for ``CACHE_SECONDS`` (a revocation is seen by every
process within that time, well inside the 5 s promised) and never remembers a refusal.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from tillplug.errors import RelayUnauthorized
from tillplug.relay.store import Store, token_hash

CACHE_SECONDS = 2.0
TOKEN_PREFIX = "tpr1."  # tells a relay token apart from WLL's, in a file or an enrolment code


@dataclass(frozen=True)
class Till:
    till_id: str
    branch_id: str

    def __repr__(self) -> str:
        return f"Till({self.till_id}@{self.branch_id})"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class Tokens:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, tuple[Till, float]] = {}

    async def enrol(self, till_id: str, branch_id: str) -> str:
        token = new_token()
        await self.store.enrol(till_id, branch_id, token)
        return token

    async def revoke(self, till_id: str) -> bool:
        return await self.store.revoke(till_id)

    async def till(self, authorization: str | None) -> Till:
        """The till a ``Bearer`` header names; ``RelayUnauthorized`` for none, an unknown or a revoked one."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise RelayUnauthorized("This call needs the till's relay token (Authorization: Bearer …).")
        token = authorization[7:].strip()
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            raise RelayUnauthorized()
        key = token_hash(token)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        row = await self.store.till_by_token(token)
        if row is None:
            self._cache.pop(key, None)
            raise RelayUnauthorized()
        till = Till(str(row["till_id"]), str(row["branch_id"]))
        if len(self._cache) > 100_000:  # bounded: a fleet is far smaller
            self._cache.clear()
        self._cache[key] = (till, now + CACHE_SECONDS)
        return till
