"""What each slip says, in the shop's language.  Layout (widths, wrapping) is the layout model's job.

Texts come from the message catalogue (``tillplug.receipts.messages``); numbers, money and dates are
formatted for the locale as Babel does (``receipts.language = "fr"`` → ``12,34 €``): for the shops'
usual locales from a table generated from Babel (``tillplug.receipts.formats``), for others by Babel.
Members appear only masked (``****0001``).  A code is printed scannable only while it can still be used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property
from typing import TYPE_CHECKING

from tillplug.money import CURRENCY_EXPONENTS, Money
from tillplug.receipts.formats import SlipFormats, formats_for
from tillplug.receipts.layout import (
    QR,
    Barcode,
    Block,
    Columns,
    Cut,
    Feed,
    Image,
    Receipt,
    Rule,
    Text,
)
from tillplug.receipts.messages import translator

if TYPE_CHECKING:  # names for the type checker only: config and engine import this room at run time
    from tillplug.config.model import Config
    from tillplug.engine.models import Benefit, Discount, Wallet

SLIP_KINDS = ("balance", "voucher", "points", "refund", "sale", "test", "return")
# A bare language means the shop's usual country: English slips in a UK shop, not 11/26/26.
DEFAULT_LOCALES = {"en": "en_GB", "de": "de_DE", "fr": "fr_FR", "es": "es_ES", "nl": "nl_NL"}


def babel_locale(language: str) -> str:
    return DEFAULT_LOCALES.get(language, language.replace("-", "_"))


@dataclass(frozen=True)
class SlipContext:
    till_id: str
    branch_id: str
    currency: str
    header: tuple[str, ...] = ()
    footer: tuple[str, ...] = ()
    language: str = "en"
    footers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # per slip kind, instead of ``footer``
    logo: str | None = None

    @classmethod
    def from_config(cls, config: Config) -> SlipContext:
        r = config.receipts
        return cls(
            config.till_id,
            config.branch_id,
            config.currency,
            tuple(r.header),
            tuple(r.footer),
            getattr(r, "language", "en"),
            {kind: tuple(lines) for kind, lines in getattr(r, "footers", {}).items()},
            str(r.logo) if getattr(r, "logo", None) else None,
        )

    # -- words, numbers, money, dates -------------------------------------------------

    @cached_property
    def _(self) -> Callable[[str], str]:
        return translator(self.language)

    @property
    def locale(self) -> str:
        return babel_locale(self.language)

    @property
    def _formats(self) -> SlipFormats | None:
        return formats_for(self.locale)  # None: a locale Babel formats (its data loaded then)

    def number(self, n: float) -> str:
        if self._formats is not None:
            return self._formats.number(int(n))
        from babel.numbers import format_decimal

        return str(format_decimal(int(n), locale=self.locale))

    def points(self, n: float) -> str:
        return self._("{points} pts").format(points=self.number(n))

    def money(self, value: Money | int) -> str:
        m = value if isinstance(value, Money) else Money(int(value), self.currency)
        if self._formats is not None:
            return self._formats.money(m.minor, m.currency)
        from babel.numbers import format_currency

        return str(format_currency(m.minor / 10 ** CURRENCY_EXPONENTS[m.currency], m.currency, locale=self.locale))

    def when(self, at: datetime) -> str:
        if self._formats is not None:
            return self._formats.when(at)
        from babel.dates import format_datetime

        return str(format_datetime(at, "short", locale=self.locale))

    def day(self, iso: str) -> str:
        if self._formats is not None:
            return self._formats.day(date.fromisoformat(iso[:10]))
        from babel.dates import format_date

        return str(format_date(date.fromisoformat(iso[:10]), "medium", locale=self.locale))

    # -- the frame of every slip ---------------------------------------------------------

    def top(self, title: str) -> list[Block]:
        blocks: list[Block] = [Image(self.logo)] if self.logo else []
        blocks += [Text(line, bold=True, align="center") for line in self.header]
        return [*blocks, Text(self._(title), double=True, align="center"), Rule()]

    def bottom(self, kind: str, when: datetime | None = None) -> list[Block]:
        when = when or datetime.now()
        blocks: list[Block] = [
            Rule(),
            Columns(self._("Till {till}").format(till=self.till_id), self.when(when)),
            Text(self._("Branch {branch}").format(branch=self.branch_id)),
        ]
        blocks += [Text(line, align="center") for line in self.footers.get(kind, self.footer)]
        return [*blocks, Feed(1), Cut()]


def printed_mask(masked: str) -> str:
    """A masked member id as a slip shows it: '…0001' (the log's form) becomes '****0001', which every
    code page has."""
    return "****" + masked[1:] if masked.startswith("…") else masked


def discount_words(ctx: SlipContext, discount: Discount) -> str:
    """'£5.00 off', '10% off on COFFEE', 'COFFEE for £0.00' — in the slip's language."""
    _ = ctx._
    kind, value = discount.type, discount.value
    sku = discount.sku
    if kind == "ABSOLUTE":
        words = _("{amount} off").format(amount=ctx.money(int(value)))
    elif kind == "PERCENTAGE":
        words = _("{percent}% off").format(percent=f"{value:g}")
    else:
        return _("{sku} for {amount}").format(sku=sku or _("item"), amount=ctx.money(int(value)))
    return _("{discount} on {sku}").format(discount=words, sku=sku) if sku else words


def _usable(benefit: Benefit, now: datetime) -> bool:
    from tillplug.engine.models import parse_time

    if benefit.state(now) not in ("created", "redeemed", "validated"):
        return False
    expires = parse_time(benefit.expires_at)
    return expires is None or expires > now


def balance_slip(ctx: SlipContext, masked_member: str, wallet: Wallet, when: datetime | None = None) -> Receipt:
    _ = ctx._
    blocks: list[Block] = [
        *ctx.top("Your points"),
        Columns(_("Member"), printed_mask(masked_member)),
        Columns(_("Balance"), ctx.points(wallet.points_balance), bold=True),
        Columns(_("Lifetime points"), ctx.points(wallet.lifetime_earn)),
    ]
    if wallet.tier is not None and wallet.tier.name:
        blocks.append(Columns(_("Tier"), wallet.tier.name, fallback=""))  # a name it cannot show: no row
    now = (when or datetime.now()).astimezone(UTC)
    available = [v for v in wallet.vouchers if _usable(v, now)]
    if available:
        blocks += [Feed(1), Text(_("Your vouchers"), bold=True)]
        for v in available:
            name = v.reward.name if v.reward else _("Voucher")
            expiry = _("until {date}").format(date=ctx.day(v.expires_at)) if v.expires_at else _("no expiry")
            blocks += [Text(f"- {name}", fallback="- " + _("Voucher")), Text(f"  {expiry}")]
    return Receipt("balance", [*blocks, *ctx.bottom("balance", when)])


def _code_row(ctx: SlipContext, code: str) -> list[Block]:
    """'Code   ALICE-5OFF-0001' when it fits any paper; a long code on a line of its own, never split."""
    if len(code) <= 20:
        return [Columns(ctx._("Code"), code)]
    return [Text(ctx._("Code")), Text(code, whole=True)]


def voucher_receipt(ctx: SlipContext, benefit: Benefit, *, burned: bool, when: datetime | None = None) -> Receipt:
    """A checked voucher shows its code (scannable), expiry and terms; a used one no scannable code."""
    _ = ctx._
    reward = benefit.reward
    code = benefit.code.value if benefit.code else ""
    name = Text(reward.name if reward else _("Voucher"), bold=True, fallback=_("Voucher"))
    blocks: list[Block] = [*ctx.top("Voucher"), name]
    for d in reward.discounts if reward else []:
        blocks.append(Text(discount_words(ctx, d)))
    blocks.append(Feed(1))
    if burned:
        blocks += [*_code_row(ctx, code), Text(_("USED - applied to this sale"), bold=True)]
    else:
        if code:
            blocks += [Barcode(code), QR(code), *_code_row(ctx, code)]
        if benefit.expires_at:
            blocks.append(Text(_("Valid until {date}").format(date=ctx.day(benefit.expires_at))))
        if reward and reward.summary:
            blocks.append(Text(reward.summary, fallback=""))  # terms it cannot show: left to the app
        blocks.append(Text(_("CHECKED - will be used when you pay"), bold=True))
    return Receipt("voucher", [*blocks, *ctx.bottom("voucher", when)])


def points_slip(
    ctx: SlipContext,
    spent: int,
    value: Money,
    balance_after: float,
    when: datetime | None = None,
    *,
    member: str | None = None,
    sale: str | None = None,
) -> Receipt:
    _ = ctx._
    blocks: list[Block] = [*ctx.top("Points spent")]
    if member:
        blocks.append(Columns(_("Member"), printed_mask(member)))
    if sale:
        blocks.append(Columns(_("Sale"), sale))
    blocks += [
        Columns(_("Points used"), ctx.points(spent)),
        Columns(_("Worth"), ctx.money(value), bold=True),
        Columns(_("Balance after"), ctx.points(balance_after)),
    ]
    return Receipt("points", [*blocks, *ctx.bottom("points", when)])


def refund_slip(
    ctx: SlipContext,
    transaction_id: str,
    refunded: int,
    when: datetime | None = None,
    *,
    not_reinstated: Sequence[str] = (),
) -> Receipt:
    """Points given back after a void, and the vouchers that were used and are not given back."""
    _ = ctx._
    blocks: list[Block] = [
        *ctx.top("Points returned"),
        Text(_("Sale {sale} was cancelled.").format(sale=transaction_id)),
        Columns(_("Points returned"), ctx.points(refunded), bold=True),
        Text(_("They will show in your balance shortly.")),
    ]
    if not_reinstated:
        blocks += [Feed(1), Text(_("Vouchers not reinstated"), bold=True), *_voucher_lines(ctx, not_reinstated)]
    return Receipt("refund", [*blocks, *ctx.bottom("refund", when)])


def return_slip(  # noqa: PLR0913 -- one slip, every figure it may show
    ctx: SlipContext,
    transaction_id: str,
    returned: Money,
    when: datetime | None = None,
    *,
    taken_back: int = 0,
    to_take_back: int = 0,
    given_back: int = 0,
    not_taken_back: int = 0,
    balance: float | None = None,
    estimated: bool = False,
    member: str | None = None,
) -> Receipt:
    """A return after the sale: the points taken back (only once the engine's reactions show it; until
    then "to be taken back"), the points given back, what could not be taken back, the new balance."""
    _ = ctx._
    blocks: list[Block] = [*ctx.top("Return")]
    if member:
        blocks.append(Columns(_("Member"), printed_mask(member)))
    blocks += [Columns(_("Sale"), transaction_id), Columns(_("Returned"), ctx.money(returned))]
    if given_back:
        blocks.append(Columns(_("Points given back"), ctx.points(given_back)))
    if taken_back:
        blocks.append(Columns(_("Points taken back"), ctx.points(taken_back)))
    if to_take_back:
        blocks.append(Columns(_("Points to be taken back"), ctx.points(to_take_back)))
    if not_taken_back:
        blocks.append(Columns(_("Not taken back"), ctx.points(not_taken_back)))
    if balance is not None:
        label = _("Estimated balance") if estimated else _("New balance")
        blocks.append(Columns(label, ctx.points(balance), bold=True))
    if estimated:
        blocks.append(Text(_("They will show in your balance shortly.")))
    return Receipt("return", [*blocks, *ctx.bottom("return", when)])


def _voucher_lines(ctx: SlipContext, names: Sequence[str]) -> list[Block]:
    """'- Free coffee' per voucher; '- Voucher' for a name in a script the printer cannot show."""
    return [Text(f"- {name}", fallback="- " + ctx._("Voucher")) for name in names]


@dataclass(frozen=True)
class Redeemed:
    """What the member used in a sale: points and the names of vouchers applied."""

    points: int = 0
    vouchers: Sequence[str] = ()


def sale_summary(
    ctx: SlipContext,
    transaction_id: str,
    total: Money,
    expected_points: int | None,
    when: datetime | None = None,
    *,
    member: str | None = None,
    redeemed: Redeemed | None = None,
    balance_after: float | None = None,
) -> Receipt:
    """The sale's loyalty in one place: points spent, vouchers applied, points earned, the new balance."""
    _ = ctx._
    points_spent, vouchers = (redeemed.points, redeemed.vouchers) if redeemed else (0, ())
    blocks: list[Block] = [*ctx.top("Loyalty")]
    if member:
        blocks.append(Columns(_("Member"), printed_mask(member)))
    blocks += [Columns(_("Sale"), transaction_id), Columns(_("Total"), ctx.money(total))]
    if points_spent:
        blocks.append(Columns(_("Points spent"), ctx.points(points_spent)))
    if vouchers:
        blocks += [Text(_("Vouchers applied")), *_voucher_lines(ctx, vouchers)]
    if expected_points is None:  # a code keyed offline, never seen: it may be someone else's
        blocks.append(Text(_("Points will be added if the card is valid.")))
    else:
        blocks.append(Columns(_("Points for this sale"), ctx.points(expected_points), bold=True))
    if balance_after is not None:
        blocks.append(Columns(_("New balance"), ctx.points(balance_after)))
    if expected_points is not None:
        blocks.append(Text(_("Points are added to your balance shortly.")))
    return Receipt("sale", [*blocks, *ctx.bottom("sale", when)])


def test_page(
    ctx: SlipContext, printer_name: str, profile: str, columns: int, code_page: str, when: datetime | None = None
) -> Receipt:
    _ = ctx._
    ruler = "".join(str(i % 10) for i in range(1, columns + 1))
    blocks: list[Block] = [
        *ctx.top("Test page"),
        Columns(_("Printer"), printer_name),
        Columns(_("Profile"), profile),
        Columns(_("Code page"), code_page),
        Columns(_("Columns"), str(columns)),
        Text(ruler),
        Text("£ € é è à ç ü ö ä ß ñ"),
        Text("Bold text", bold=True),
        Text("Double", double=True),
        Text("centre", align="center"),
        Text("right", align="right"),
        Barcode("TILLPLUG-TEST"),
        QR("https://example.invalid/tillplug-test"),
    ]
    return Receipt("test", [*blocks, *ctx.bottom("test", when)])
