"""The relay's state, all of it in PostgreSQL (psycopg 3 and its pool), and its versioned migrations.

Any number of relay processes share one database, and any of them may be killed at any moment:
nothing the relay knows lives only in a process.  psycopg's exceptions stop here and become
``RelayUnavailable`` (the database cannot be reached) for the app to answer 503.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from tillplug.config.loader import read_secret
from tillplug.errors import ConfigError, RelayRefusal, RelayUnavailable, ReturnExceedsSale, ReturnIdReused
from tillplug.flows.returned import ReturnedLine, ReturnRequest, past_the_sale, return_fingerprint
from tillplug.relay.config import DatabaseConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

# Versioned migrations: each applied once, in order, in one transaction with its version row.
MIGRATIONS: list[str] = [
    # 1: tills and their tokens, members each till looked up, every event through the relay, the pacer.
    """
    CREATE TABLE tills (
        till_id text PRIMARY KEY,
        branch_id text NOT NULL,
        token_hash text UNIQUE,
        enrolled_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        revoked_at timestamptz
    );
    CREATE TABLE members_seen (
        till_id text NOT NULL,
        alias text NOT NULL,
        member_id text NOT NULL,
        seen_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (till_id, alias)
    );
    CREATE TABLE events (
        event_key text PRIMARY KEY,
        till_id text NOT NULL,
        branch_id text NOT NULL,
        kind text NOT NULL CHECK (kind IN ('earn', 'order', 'spend', 'refund')),
        type text NOT NULL,
        subject text,
        body jsonb NOT NULL,
        body_hash text NOT NULL,
        state text NOT NULL,
        points bigint,
        reverses text REFERENCES events (event_key),
        refunded bigint NOT NULL DEFAULT 0,
        engine_id text,
        answer jsonb,
        attempts integer NOT NULL DEFAULT 0,
        due timestamptz NOT NULL DEFAULT clock_timestamp(),
        lease_until timestamptz,
        attempted_at timestamptz,
        last_error text,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE INDEX events_work ON events (due) WHERE state IN ('pending', 'sending', 'unknown', 'landed');
    CREATE INDEX events_member ON events (subject) WHERE kind = 'spend' AND state IN ('sending', 'unknown', 'landed');
    CREATE INDEX events_till ON events (till_id, created_at DESC);
    CREATE INDEX events_engine ON events (engine_id) WHERE engine_id IS NOT NULL;
    CREATE TABLE pacing (
        name text PRIMARY KEY,
        tokens double precision NOT NULL,
        stamp timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    """,
    # 2: returns at any till of the chain: each event's sale, an earn's points as read, the returns.
    """
    ALTER TABLE events ADD COLUMN transaction_id text;
    ALTER TABLE events ADD COLUMN earned bigint;
    UPDATE events SET transaction_id = CASE WHEN kind = 'order' THEN body->>'orderId'
        ELSE body->'payload'->>'transactionId' END;
    ALTER TABLE events DROP CONSTRAINT events_kind_check;
    ALTER TABLE events ADD CONSTRAINT events_kind_check
        CHECK (kind IN ('earn', 'order', 'spend', 'refund', 'give_back', 'take_back'));
    CREATE INDEX events_sale ON events (transaction_id) WHERE transaction_id IS NOT NULL;
    CREATE TABLE returns (
        till_id text NOT NULL,
        return_id text NOT NULL,
        transaction_id text NOT NULL,
        fingerprint text NOT NULL,
        amount bigint NOT NULL CHECK (amount > 0),
        lines jsonb NOT NULL,
        seq bigserial NOT NULL,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (till_id, return_id)
    );
    CREATE INDEX returns_sale ON returns (transaction_id, seq);
    """,
]

# Spend states whose points the engine may not show yet: the guard subtracts them from the balance.
UNAPPLIED = ("sending", "unknown", "landed")
# States of rows still being worked on, which a human may retry now or drop (with the dead ones).
HUMAN_MAY_MOVE = ("pending", "sending", "unknown", "landed")


def body_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """A pool of connections and the relay's queries.  ``open()`` before use, ``close()`` after."""

    def __init__(self, config: DatabaseConfig, *, min_size: int = 2) -> None:
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row, "connect_timeout": 5}
        if config.password_file is not None:
            try:
                kwargs["password"] = read_secret(config.password_file).reveal()
            except ConfigError as exc:  # named by its key; the message names the file, never its content
                raise ConfigError(f"database.password_file: {exc.message}") from None
        self.url = config.url
        self._kwargs = kwargs
        self.pool = AsyncConnectionPool(
            config.url,
            min_size=min_size,
            max_size=config.pool_size,
            kwargs=kwargs,
            open=False,
            timeout=5,
            # No check on every borrow (a round trip each): a connection found broken raises once
            # (RelayUnavailable, 503) and the pool drops it.
            reconnect_timeout=0,
        )

    def __repr__(self) -> str:
        return "Store(********)"  # the URL names the database host and user; never the password

    async def open(self, wait: float = 10) -> None:
        try:
            await self.pool.open(wait=True, timeout=wait)
        except Exception as exc:
            raise RelayUnavailable(f"The relay's database cannot be reached ({await self._why(exc)}).") from exc

    async def _why(self, exc: Exception) -> str:
        """Why the pool could not connect, in words a technician acts on: one direct attempt tells.

        libpq's messages name the host and the user, never the password; only these words are kept.
        """
        import psycopg

        try:
            conn = await psycopg.AsyncConnection.connect(self.url, **{**self._kwargs, "row_factory": None})
        except psycopg.OperationalError as direct:
            text = str(direct)
            if "password authentication failed" in text:
                return "it refused the password: check the file database.password_file names"
            if "no password supplied" in text:
                return "it asks for a password: name a file holding it in database.password_file"
            if "Peer authentication failed" in text or "Ident authentication failed" in text:
                return "peer authentication failed: run the relay as the database user, or use a password_file"
            return type(direct).__name__
        except Exception as direct:
            return type(direct).__name__
        await conn.close()
        return type(exc).__name__

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled connection (autocommit), psycopg's errors translated at this edge."""
        import psycopg
        import psycopg_pool

        try:
            async with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg.InterfaceError) as exc:
            raise RelayUnavailable() from exc
        except psycopg.DataError as exc:  # a value PostgreSQL cannot hold (a NUL, a number out of range)
            raise RelayRefusal("The request holds a value the relay cannot store.") from exc

    async def fetchone(self, sql: str, params: Any = None) -> dict[str, Any] | None:
        async with self.connection() as conn:
            cur = await conn.execute(sql, params)
            row: dict[str, Any] | None = await cur.fetchone()
            return row

    async def fetchall(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        async with self.connection() as conn:
            cur = await conn.execute(sql, params)
            rows: list[dict[str, Any]] = await cur.fetchall()
            return rows

    async def execute(self, sql: str, params: Any = None) -> int:
        async with self.connection() as conn:
            cur = await conn.execute(sql, params)
            count: int = cur.rowcount
            return count

    # -- migrations ------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply the migrations not yet applied; the versions applied now.  Safe from many processes."""
        applied: list[int] = []
        async with self.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7301)")  # one migrator at a time
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version"
                " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
            cur = await conn.execute("SELECT coalesce(max(version), 0) AS v FROM schema_version")
            row = await cur.fetchone()
            current = int(row["v"]) if row else 0
            for version, sql in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                applied.append(version)
        return applied

    async def version(self) -> int:
        row = await self.fetchone(
            "SELECT CASE WHEN to_regclass('schema_version') IS NULL THEN 0"
            " ELSE (SELECT coalesce(max(version), 0) FROM schema_version) END AS v"
        )
        return int(row["v"]) if row else 0

    # -- tills -----------------------------------------------------------------------

    async def enrol(self, till_id: str, branch_id: str, token: str) -> None:
        await self.execute(
            "INSERT INTO tills (till_id, branch_id, token_hash) VALUES (%s, %s, %s)"
            " ON CONFLICT (till_id) DO UPDATE SET branch_id = excluded.branch_id,"
            " token_hash = excluded.token_hash, enrolled_at = clock_timestamp(), revoked_at = NULL",
            (till_id, branch_id, token_hash(token)),
        )

    async def revoke(self, till_id: str) -> bool:
        count = await self.execute(
            "UPDATE tills SET revoked_at = clock_timestamp(), token_hash = NULL WHERE till_id = %s", (till_id,)
        )
        return count > 0

    async def till_by_token(self, token: str) -> dict[str, Any] | None:
        return await self.fetchone(
            "SELECT till_id, branch_id FROM tills WHERE token_hash = %s AND revoked_at IS NULL", (token_hash(token),)
        )

    # -- members a till looked up ---------------------------------------------------------

    async def saw_member(self, till_id: str, member_id: str, aliases: list[str]) -> None:
        await self.execute(
            "INSERT INTO members_seen (till_id, alias, member_id) SELECT %s, alias, %s FROM unnest(%s::text[]) AS alias"
            " ON CONFLICT (till_id, alias) DO UPDATE SET member_id = excluded.member_id, seen_at = clock_timestamp()",
            (till_id, member_id, sorted({member_id, *aliases})),
        )

    async def member_seen(self, till_id: str, alias: str, hours: float) -> str | None:
        row = await self.fetchone(
            "SELECT member_id FROM members_seen WHERE till_id = %s AND alias = %s"
            " AND seen_at > clock_timestamp() - make_interval(secs => %s)",
            (till_id, alias, hours * 3600),
        )
        return str(row["member_id"]) if row else None

    async def any_member_seen(self, till_id: str, aliases: list[str], hours: float) -> str | None:
        row = await self.fetchone(
            "SELECT member_id FROM members_seen WHERE till_id = %s AND alias = ANY(%s)"
            " AND seen_at > clock_timestamp() - make_interval(secs => %s) LIMIT 1",
            (till_id, aliases, hours * 3600),
        )
        return str(row["member_id"]) if row else None

    # -- events ----------------------------------------------------------------------

    async def event(self, event_key: str) -> dict[str, Any] | None:
        return await self.fetchone("SELECT * FROM events WHERE event_key = %s", (event_key,))

    async def insert_event(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """Store an event the relay accepted, and return it; None if its eventKey is already there (a resend)."""
        return await self.fetchone(
            "INSERT INTO events (event_key, till_id, branch_id, kind, type, subject, body, body_hash, state,"
            " points, reverses, transaction_id, attempted_at, due)"
            " VALUES (%(event_key)s, %(till_id)s, %(branch_id)s, %(kind)s, %(type)s, %(subject)s, %(body)s,"
            " %(body_hash)s, %(state)s, %(points)s, %(reverses)s, %(transaction_id)s,"
            " CASE WHEN %(state)s = 'sending' THEN clock_timestamp() END,"
            " clock_timestamp() + make_interval(secs => %(due_in)s))"
            " ON CONFLICT (event_key) DO NOTHING RETURNING *",
            {
                "points": None,
                "reverses": None,
                "transaction_id": None,
                "due_in": 0.0,
                **row,
                "body": json.dumps(row["body"]),
            },
        )

    async def insert_refund(self, row: dict[str, Any], limit: Callable[[dict[str, Any]], int]) -> int | None:
        """Store a refund and count it against the deduction it reverses, in one transaction.

        ``limit(deduction)`` is how many points may still be given back; None if the refund's
        eventKey was already stored (a resend), else the points left before this refund.
        """
        async with self.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT * FROM events WHERE event_key = %s FOR UPDATE", (row["reverses"],))
            original = await cur.fetchone()
            left = limit(original) if original is not None else -1
            if left < int(row["points"]):
                return left
            cur = await conn.execute(
                "INSERT INTO events (event_key, till_id, branch_id, kind, type, subject, body, body_hash, state,"
                " points, reverses, transaction_id) VALUES (%(event_key)s, %(till_id)s, %(branch_id)s, 'refund',"
                " %(type)s, %(subject)s, %(body)s, %(body_hash)s, 'pending', %(points)s, %(reverses)s,"
                " %(transaction_id)s) ON CONFLICT (event_key) DO NOTHING",
                {"transaction_id": None, **row, "body": json.dumps(row["body"])},
            )
            if cur.rowcount != 1:
                return None
            await conn.execute(
                "UPDATE events SET refunded = refunded + %s WHERE event_key = %s", (row["points"], row["reverses"])
            )
            return left

    # -- sales and their returns, across the chain ------------------------------------------

    async def sale_events(self, tx_id: str) -> list[dict[str, Any]]:
        return await self.fetchall(
            "SELECT *, extract(epoch FROM clock_timestamp() - updated_at) AS age FROM events"
            " WHERE transaction_id = %s ORDER BY created_at",
            (tx_id,),
        )

    async def sale_returns(self, tx_id: str) -> list[dict[str, Any]]:
        return await self.fetchall("SELECT * FROM returns WHERE transaction_id = %s ORDER BY seq", (tx_id,))

    async def register_return(
        self,
        till_id: str,
        request: ReturnRequest,
        gross: int,
        basket: dict[str, tuple[float, int]],
        money: Callable[[int], str],
    ) -> None:
        """Record ``request`` unless the sale's returns, every till's, would pass the sale; one at a
        time per sale.  ``ReturnExceedsSale`` past it, ``ReturnIdReused`` for this till's returnId
        used for another return; the same return again changes nothing."""
        tx_id = request.transaction_id
        fingerprint = return_fingerprint(tx_id, request.amount, request.lines)
        async with self.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7303))", (tx_id,))
            cur = await conn.execute(
                "SELECT fingerprint FROM returns WHERE till_id = %s AND return_id = %s", (till_id, request.return_id)
            )
            found = await cur.fetchone()
            if found is not None:
                if found["fingerprint"] != fingerprint:
                    raise ReturnIdReused(f"returnId {request.return_id} was used for another return.")
                return
            cur = await conn.execute(
                "SELECT amount, lines FROM returns WHERE transaction_id = %s ORDER BY seq", (tx_id,)
            )
            earlier = [
                (int(r["amount"]), [ReturnedLine(x["sku"], float(x["quantity"]), int(x["amount"])) for x in r["lines"]])
                for r in await cur.fetchall()
            ]
            refusal = past_the_sale(request, gross, basket, earlier, money)
            if refusal is not None:
                raise ReturnExceedsSale(refusal)
            await conn.execute(
                "INSERT INTO returns (till_id, return_id, transaction_id, fingerprint, amount, lines)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    till_id,
                    request.return_id,
                    tx_id,
                    fingerprint,
                    request.amount,
                    json.dumps([{"sku": x.sku, "quantity": x.quantity, "amount": x.amount} for x in request.lines]),
                ),
            )

    async def insert_return_move(self, row: dict[str, Any], cap: int) -> int | None:
        """Store a return's points move (``row['kind']``: give_back or take_back) if the sale's moves
        of that kind, every till's, stay within ``cap``; one at a time per sale.  None if its eventKey
        was already stored (a resend), else the points left before this move."""
        async with self.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7303))", (row["transaction_id"],))
            cur = await conn.execute(
                "SELECT coalesce(sum(points), 0) AS moved FROM events WHERE transaction_id = %s AND kind = %s",
                (row["transaction_id"], row["kind"]),
            )
            moved = await cur.fetchone()
            left = cap - int(moved["moved"] if moved else 0)
            if left < int(row["points"]):
                return left
            cur = await conn.execute(
                "INSERT INTO events (event_key, till_id, branch_id, kind, type, subject, body, body_hash, state,"
                " points, transaction_id) VALUES (%(event_key)s, %(till_id)s, %(branch_id)s, %(kind)s, %(type)s,"
                " %(subject)s, %(body)s, %(body_hash)s, 'pending', %(points)s, %(transaction_id)s)"
                " ON CONFLICT (event_key) DO NOTHING",
                {**row, "body": json.dumps(row["body"])},
            )
            return left if cur.rowcount == 1 else None

    async def settle(self, event_key: str, state: str, **values: Any) -> None:
        """Move an event to ``state`` with the columns in ``values`` (engine_id, answer, due...)."""
        sets = ["state = %(state)s", "updated_at = clock_timestamp()", "lease_until = NULL"]
        params: dict[str, Any] = {"state": state, "event_key": event_key}
        for column, value in values.items():
            if column not in ("engine_id", "answer", "last_error", "attempts"):
                raise ValueError(column)
            sets.append(f"{column} = %({column})s")
            params[column] = json.dumps(value) if column == "answer" else value
        await self.execute(f"UPDATE events SET {', '.join(sets)} WHERE event_key = %(event_key)s", params)

    async def retry_later(self, event_key: str, seconds: float, error: str, state: str = "pending") -> None:
        await self.execute(
            "UPDATE events SET state = %s, due = clock_timestamp() + make_interval(secs => %s),"
            " lease_until = NULL, last_error = %s, updated_at = clock_timestamp() WHERE event_key = %s",
            (state, seconds, error, event_key),
        )

    async def unapplied_spends(self, member_id: str) -> list[dict[str, Any]]:
        return await self.fetchall(
            "SELECT event_key, state, points, engine_id, created_at FROM events"
            " WHERE kind = 'spend' AND subject = %s AND state = ANY(%s)",
            (member_id, list(UNAPPLIED)),
        )

    async def claim(self, owner: str, lease: float, limit: int = 20) -> list[dict[str, Any]]:
        """Rows due for work (deliveries, look-ups), leased to ``owner`` so no other process takes them."""
        return await self.fetchall(
            "UPDATE events SET lease_until = clock_timestamp() + make_interval(secs => %s), last_error = %s"
            " WHERE event_key IN (SELECT event_key FROM events"
            "   WHERE state IN ('pending', 'sending', 'unknown', 'landed') AND due <= clock_timestamp()"
            "   AND (lease_until IS NULL OR lease_until < clock_timestamp())"
            "   ORDER BY due LIMIT %s FOR UPDATE SKIP LOCKED)"
            " RETURNING *, extract(epoch FROM clock_timestamp() - coalesce(attempted_at, created_at)) AS age",
            (lease, f"claimed by {owner}", limit),
        )

    async def mark_sending(self, event_key: str) -> None:
        """Written before the engine may hear of the event: a crash after this is settled by look-up."""
        await self.execute(
            "UPDATE events SET state = 'sending', attempted_at = clock_timestamp(), attempts = attempts + 1,"
            " updated_at = clock_timestamp() WHERE event_key = %s",
            (event_key,),
        )

    async def till_events(self, till_id: str, limit: int, skip: int) -> list[dict[str, Any]]:
        return await self.fetchall(
            "SELECT * FROM events WHERE till_id = %s ORDER BY created_at DESC LIMIT %s OFFSET %s",
            (till_id, limit, skip),
        )

    async def event_by_engine_id(self, till_id: str, engine_id: str) -> dict[str, Any] | None:
        return await self.fetchone(
            "SELECT * FROM events WHERE till_id = %s AND (engine_id = %s OR event_key = %s)",
            (till_id, engine_id, engine_id),
        )

    # -- rows that need a human (``tillplug relay outbox``) ------------------------------------

    async def stuck(self, attempts: int) -> list[dict[str, Any]]:
        """Dead rows, writes no look-up can settle, and deliveries tried ``attempts`` times or more."""
        return await self.fetchall(
            "SELECT event_key, kind, type, state, till_id, attempts, last_error,"
            " extract(epoch FROM clock_timestamp() - created_at) AS age FROM events"
            " WHERE state = 'dead' OR (state = ANY(%s) AND (last_error LIKE 'unverifiable%%' OR attempts >= %s))"
            " ORDER BY created_at",
            (list(HUMAN_MAY_MOVE), attempts),
        )

    async def retry_now(self, event_key: str) -> dict[str, Any] | None:
        """A dead row back to ``pending`` (the engine refused it: it never landed), any other row due
        now, its state kept (a write that may have left is looked up before any resend); None if the
        row is not one a human may retry."""
        return await self.fetchone(
            "UPDATE events SET state = CASE WHEN state = 'dead' THEN 'pending' ELSE state END,"
            " attempts = CASE WHEN state = 'dead' THEN 0 ELSE attempts END, due = clock_timestamp(),"
            " lease_until = NULL, last_error = 'retried by a human', updated_at = clock_timestamp()"
            " WHERE event_key = %s AND (state = 'dead' OR state = ANY(%s)) RETURNING kind, state",
            (event_key, list(HUMAN_MAY_MOVE)),
        )

    async def drop(self, event_key: str) -> dict[str, Any] | None:
        """The relay stops working on the row for good (kept, as ``dropped``, for the audit); None if
        the row is not one a human may drop."""
        return await self.fetchone(
            "UPDATE events SET state = 'dropped', lease_until = NULL, updated_at = clock_timestamp(),"
            " last_error = left('dropped by a human; was ' || state || ': ' || coalesce(last_error, ''), 300)"
            " WHERE event_key = %s AND (state = 'dead' OR state = ANY(%s)) RETURNING kind, points",
            (event_key, list(HUMAN_MAY_MOVE)),
        )

    async def counts(self) -> dict[str, int]:
        rows = await self.fetchall("SELECT kind || ':' || state AS k, count(*) AS n FROM events GROUP BY 1")
        return {str(r["k"]): int(r["n"]) for r in rows}
