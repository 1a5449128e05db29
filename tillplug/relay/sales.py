"""A sale as the chain reported it, so that any of its tills can take a return of it (docs/relay.md).

The relay's ``events`` table holds each sale's earn, its spends and the points moves of its
returns, whichever till sent them.  From them it answers what a return needs (the member's id and
amounts, never personal data), registers each return under a lock on the sale so the chain's
returns never add up to more than the sale (``returns``), and caps each return's points move when
it arrives: given back at most what was spent, taken back at most what the sale earned, counted
across every till of the chain.
"""

from __future__ import annotations

import logging
from typing import Any

from tillplug.engine import EngineClient
from tillplug.engine.models import points_of
from tillplug.engine.reactors import LISTED_REACTIONS
from tillplug.errors import EngineAuthError, RelayRefusal, RetryableError, SaleNotReported, TillplugError
from tillplug.flows.returned import ChainEarn, ChainLine, ChainReturn, ChainSale, ReturnedLine, ReturnRequest
from tillplug.money import Money
from tillplug.relay.store import Store

log = logging.getLogger(__name__)

# A delivered earn whose reactions show no points is believed to earn nothing after this long
# (the till's own rule: tillplug.flows.returns.EARN_REACTIONS_WITHIN).
EARN_REACTIONS_WITHIN = 60.0
MAX_LINES = 500


def _lines(raw: Any) -> list[ChainLine]:
    out = []
    for line in raw if isinstance(raw, list) else []:
        if isinstance(line, dict) and isinstance(line.get("sku"), str):
            try:
                out.append(ChainLine(sku=line["sku"], quantity=float(line["quantity"]), amount=int(line["amount"])))
            except (KeyError, TypeError, ValueError):
                continue
    return out


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


class Sales:
    def __init__(self, store: Store, client: EngineClient, transaction_type: str) -> None:
        self.store = store
        self.client = client
        self.transaction_type = transaction_type

    def _earn_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r["kind"] == "order" or (r["kind"] == "earn" and r["type"] == self.transaction_type)]

    async def facts(self, tx_id: str, till_id: str | None = None, return_id: str | None = None) -> ChainSale:
        """What the chain reported for sale ``tx_id``; ``SaleNotReported`` if no till reported its earn.

        With ``till_id`` and ``return_id``: ``registered`` is that return's place among the sale's returns.
        """
        rows = await self.store.sale_events(tx_id)
        earns = self._earn_rows(rows)
        if not earns:
            raise SaleNotReported(
                f"No till of the chain has reported a completed sale {tx_id!r} to the relay (yet): a return is "
                "taken once the sale's till has sent it."
            )
        if len({r["till_id"] for r in earns}) > 1:
            raise SaleNotReported(
                f"More than one till reported a sale {tx_id!r}: the transaction id does not name one sale, so a "
                "return of it is taken only at the till that made it."
            )
        earn = earns[0]
        body = earn["body"]
        payload = body.get("payload") or {} if earn["kind"] != "order" else body
        spends = [
            r
            for r in rows
            if r["kind"] == "spend" and r["till_id"] == earn["till_id"] and r["state"] in ("landed", "applied")
        ]
        spent, spent_money = 0, 0
        for s in spends:
            points, left = int(s["points"] or 0), int(s["points"] or 0) - int(s["refunded"] or 0)
            value = _int((s["body"].get("payload") or {}).get("value"))
            spent += max(0, left)
            spent_money += value * max(0, left) // points if points else 0
        paid = _int(body.get("totalSpend") if earn["kind"] == "order" else payload.get("total"))
        member = earn["subject"] or next((s["subject"] for s in spends if s["subject"]), None)
        returns = await self.store.sale_returns(tx_id)
        registered = None
        for n, r in enumerate(returns):
            if r["till_id"] == till_id and r["return_id"] == return_id:
                registered = n
        moved = {
            kind: sum(int(r["points"] or 0) for r in rows if r["kind"] == kind) for kind in ("give_back", "take_back")
        }
        currency = body.get("currency") if earn["kind"] == "order" else payload.get("currency")
        return ChainSale(
            transactionId=tx_id,
            member=member,
            currency=currency if isinstance(currency, str) else None,
            paid=paid,
            spent=spent,
            gross=paid + spent_money,
            basket=_lines(body.get("lines") if earn["kind"] == "order" else payload.get("basket")),
            earn=await self._earned(earn),
            returns=[
                ChainReturn(
                    returnId=r["return_id"],
                    amount=int(r["amount"]),
                    lines=_lines(r["lines"]),
                    mine=r["till_id"] == till_id,
                )
                for r in returns
            ],
            registered=registered,
            givenBack=moved["give_back"],
            takenBack=moved["take_back"],
        )

    async def _earned(self, row: dict[str, Any]) -> ChainEarn:  # noqa: PLR0911 -- one answer per case
        """The points WLL's reactions show the sale earned (read once, then kept on the row)."""
        key = str(row["event_key"])
        if row["earned"] is not None:
            return ChainEarn(eventKey=key, state="known", points=int(row["earned"]))
        if row["kind"] == "order":
            why = "the sale earned through Receipts orders: the engine's reactions to it cannot be read"
            return ChainEarn(eventKey=key, state="unverifiable", reason=why)
        if row["state"] in ("dead",):
            return ChainEarn(eventKey=key, state="known", points=0, reason="the sale's earn never reached the engine")
        if row["state"] != "delivered" or not row["engine_id"]:
            return ChainEarn(eventKey=key, state="waiting", reason="the sale's own points are still being delivered")
        try:
            reactions = await self.client.event_reactions(str(row["engine_id"]))
        except (RetryableError, EngineAuthError) as exc:
            return ChainEarn(eventKey=key, state="waiting", reason=f"the engine could not be asked ({exc.code})")
        except TillplugError as exc:
            return ChainEarn(eventKey=key, state="unverifiable", reason=f"the engine refused ({exc.code})")
        if any(r.type == "POINTS" for r in reactions):
            points = max(0, int(points_of(reactions)))
        elif float(row["age"]) < EARN_REACTIONS_WITHIN:
            return ChainEarn(eventKey=key, state="waiting", reason="the engine has not shown the sale's points yet")
        elif self.client.dialect.reactions not in LISTED_REACTIONS:
            why = f"this engine is not known to list reactions (engine-check: {self.client.dialect.reactions})"
            return ChainEarn(eventKey=key, state="unverifiable", reason=why)
        else:
            points = 0
        await self.store.execute("UPDATE events SET earned = %s WHERE event_key = %s", (points, key))
        return ChainEarn(eventKey=key, state="known", points=points)

    async def register(self, till_id: str, request: ReturnRequest) -> ChainSale:
        """Record a return of a chain's sale, refused (``ReturnExceedsSale``) past what was sold, counted
        across every till; the same returnId again is answered as the first time."""
        if len(request.lines) > MAX_LINES:
            raise RelayRefusal(f"A return has at most {MAX_LINES} lines.")
        sale = await self.facts(request.transaction_id)

        def money(minor: int) -> str:
            try:
                return Money(minor, sale.currency or "").format()
            except ValueError:
                return f"{minor} (minor units)"

        await self.store.register_return(till_id, request, sale.gross, sale.basket_sums(), money)
        return await self.facts(request.transaction_id, till_id, request.return_id)


def request_of(tx_id: str, body: dict[str, Any]) -> ReturnRequest:
    """A registration's body (``returnId``, ``amount``, ``lines``), checked; ``RelayRefusal`` if not."""
    return_id, amount, raw = body.get("returnId"), body.get("amount"), body.get("lines", [])
    if not isinstance(return_id, str) or not 1 <= len(return_id) <= 64:
        raise RelayRefusal("returnId is required (1 to 64 characters).")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= 10**12:
        raise RelayRefusal("amount must be a whole number of minor units above zero.")
    if not isinstance(raw, list) or len(raw) > MAX_LINES:
        raise RelayRefusal(f"lines must be a list of at most {MAX_LINES}.")
    lines = []
    for line in raw:
        sku, quantity, value = (
            (line.get(k) for k in ("sku", "quantity", "amount")) if isinstance(line, dict) else ((None,) * 3)
        )
        if not isinstance(sku, str) or not 1 <= len(sku) <= 64:
            raise RelayRefusal("Each line has a sku (1 to 64 characters).")
        if isinstance(quantity, bool) or not isinstance(quantity, (int, float)) or not 0 < quantity < 1e9:
            raise RelayRefusal("Each line's quantity is a number above zero (and below a billion).")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RelayRefusal("Each line's amount is a whole number of minor units.")
        lines.append(ReturnedLine(sku, float(quantity), value))
    return ReturnRequest(return_id=return_id, transaction_id=tx_id, lane=0, amount=amount, lines=tuple(lines))
