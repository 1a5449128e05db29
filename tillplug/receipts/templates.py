"""What each slip says.  Layout (widths, wrapping) is the layout model's job."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tillplug.money import Money
from tillplug.receipts.layout import (
    QR,
    Barcode,
    Block,
    Columns,
    Cut,
    Feed,
    Receipt,
    Rule,
    Text,
)


@dataclass(frozen=True)
class SlipContext:
    till_id: str
    branch_id: str
    currency: str
    header: tuple[str, ...] = ()
    footer: tuple[str, ...] = ()

    def top(self, title: str) -> list[Block]:
        blocks: list[Block] = [Text(line, bold=True, align="center") for line in self.header]
        return [*blocks, Text(title, double=True, align="center"), Rule()]

    def bottom(self, when: datetime | None = None) -> list[Block]:
        when = when or datetime.now()
        blocks: list[Block] = [
            Rule(),
            Columns(f"Till {self.till_id}", when.strftime("%Y-%m-%d %H:%M")),
            Text(f"Branch {self.branch_id}"),
        ]
        blocks += [Text(line, align="center") for line in self.footer]
        return [*blocks, Feed(1), Cut()]


def points(n: float) -> str:
    return f"{int(n):,} pts"


def discount_words(discount: Any, currency: str) -> str:
    """'£5.00 off', '10% off', 'COFFEE at a fixed price of £0.00'."""
    kind, value = discount.type, discount.value
    target = f" on {discount.sku}" if getattr(discount, "sku", None) else ""
    if kind == "ABSOLUTE":
        return f"{Money(int(value), currency).format()} off{target}"
    if kind == "PERCENTAGE":
        return f"{value:g}% off{target}"
    return f"{discount.sku or 'item'} for {Money(int(value), currency).format()}"


def balance_slip(ctx: SlipContext, masked_member: str, wallet: Any, when: datetime | None = None) -> Receipt:
    blocks: list[Block] = [
        *ctx.top("Your points"),
        Columns("Member", masked_member),
        Columns("Balance", points(wallet.points_balance), bold=True),
        Columns("Lifetime points", points(wallet.lifetime_earn)),
    ]
    if wallet.tier is not None and wallet.tier.name:
        blocks.append(Columns("Tier", wallet.tier.name))
    available = [v for v in wallet.vouchers if v.state() in ("created", "redeemed", "validated")]
    if available:
        blocks += [Feed(1), Text("Your vouchers", bold=True)]
        for v in available:
            name = v.reward.name if v.reward else "Voucher"
            expiry = f"until {v.expires_at[:10]}" if v.expires_at else "no expiry"
            blocks += [Text(f"- {name}"), Text(f"  {expiry}")]
    return Receipt("balance", [*blocks, *ctx.bottom(when)])


def voucher_receipt(ctx: SlipContext, benefit: Any, *, burned: bool, when: datetime | None = None) -> Receipt:
    reward = benefit.reward
    code = benefit.code.value if benefit.code else ""
    blocks: list[Block] = [*ctx.top("Voucher"), Text(reward.name if reward else "Voucher", bold=True)]
    for d in reward.discounts if reward else []:
        blocks.append(Text(discount_words(d, ctx.currency)))
    blocks += [
        Feed(1),
        Barcode(code),
        QR(code),
        Columns("Code", code),
        Text("USED - applied to this sale" if burned else "CHECKED - will be used when you pay", bold=True),
    ]
    return Receipt("voucher", [*blocks, *ctx.bottom(when)])


def points_slip(
    ctx: SlipContext, spent: int, value: Money, balance_after: float, when: datetime | None = None
) -> Receipt:
    blocks: list[Block] = [
        *ctx.top("Points spent"),
        Columns("Points used", points(spent)),
        Columns("Worth", value.format(), bold=True),
        Columns("Balance after", points(balance_after)),
    ]
    return Receipt("points", [*blocks, *ctx.bottom(when)])


def refund_slip(ctx: SlipContext, transaction_id: str, refunded: int, when: datetime | None = None) -> Receipt:
    blocks: list[Block] = [
        *ctx.top("Points returned"),
        Text(f"Sale {transaction_id} was cancelled."),
        Columns("Points returned", points(refunded), bold=True),
        Text("They will show in your balance shortly."),
    ]
    return Receipt("refund", [*blocks, *ctx.bottom(when)])


def sale_summary(
    ctx: SlipContext, transaction_id: str, total: Money, expected_points: int, when: datetime | None = None
) -> Receipt:
    blocks: list[Block] = [
        *ctx.top("Loyalty"),
        Columns("Sale", transaction_id),
        Columns("Total", total.format()),
        Columns("Points for this sale", points(expected_points), bold=True),
        Text("Points are added to your balance shortly."),
    ]
    return Receipt("sale", [*blocks, *ctx.bottom(when)])


def test_page(
    ctx: SlipContext, printer_name: str, profile: str, columns: int, code_page: str, when: datetime | None = None
) -> Receipt:
    ruler = "".join(str(i % 10) for i in range(1, columns + 1))
    blocks: list[Block] = [
        *ctx.top("Test page"),
        Columns("Printer", printer_name),
        Columns("Profile", profile),
        Columns("Code page", code_page),
        Columns("Columns", str(columns)),
        Text(ruler),
        Text("£ € é è à ç ü ö ä ß ñ"),
        Text("Bold text", bold=True),
        Text("Double", double=True),
        Text("centre", align="center"),
        Text("right", align="right"),
        Barcode("TILLPLUG-TEST"),
        QR("https://example.invalid/tillplug-test"),
    ]
    return Receipt("test", [*blocks, *ctx.bottom(when)])
