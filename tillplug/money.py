"""Money is integer minor units plus an ISO 4217 currency, everywhere.  Points are integers."""

from __future__ import annotations

from dataclasses import dataclass

# ISO 4217 minor-unit exponents for the currencies a till is likely to see.
CURRENCY_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        [
            "AED",
            "AUD",
            "BGN",
            "BRL",
            "CAD",
            "CHF",
            "CNY",
            "CZK",
            "DKK",
            "EGP",
            "EUR",
            "GBP",
            "HKD",
            "HUF",
            "ILS",
            "INR",
            "MAD",
            "MXN",
            "MYR",
            "NOK",
            "NZD",
            "PHP",
            "PLN",
            "QAR",
            "RON",
            "RUB",
            "SAR",
            "SEK",
            "SGD",
            "THB",
            "TRY",
            "TWD",
            "UAH",
            "USD",
            "ZAR",
        ],
        2,
    ),
    **dict.fromkeys(["CLP", "ISK", "JPY", "KRW", "VND", "XAF", "XOF"], 0),
    **dict.fromkeys(["BHD", "JOD", "KWD", "OMR", "TND"], 3),
}

CURRENCY_SYMBOLS = {"GBP": "£", "EUR": "€", "USD": "$"}


@dataclass(frozen=True, slots=True)
class Money:
    minor: int
    currency: str

    def __post_init__(self) -> None:
        if self.currency not in CURRENCY_EXPONENTS:
            raise ValueError(f"unknown currency {self.currency!r}")

    def format(self) -> str:
        """'£12.50', '€0.05', '1,200 JPY' — what a slip shows."""
        exp = CURRENCY_EXPONENTS[self.currency]
        sign = "-" if self.minor < 0 else ""
        whole, frac = divmod(abs(self.minor), 10**exp)
        number = f"{whole:,}" + (f".{frac:0{exp}d}" if exp else "")
        symbol = CURRENCY_SYMBOLS.get(self.currency)
        return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {self.currency}"

    def to_dict(self) -> dict[str, int | str]:
        return {"amount": self.minor, "currency": self.currency}


def points_to_money(points: int, rate_points: int, rate_money: int) -> int:
    """Minor units that ``points`` are worth, rounded down: a till never gives away a fraction."""
    if points < 0:
        raise ValueError("points must not be negative")
    return points * rate_money // rate_points


def money_to_points(minor: int, rate_points: int, rate_money: int) -> int:
    """The fewest points whose value covers ``minor`` units (rounded up)."""
    if minor < 0:
        raise ValueError("amount must not be negative")
    return -(-minor * rate_points // rate_money)
