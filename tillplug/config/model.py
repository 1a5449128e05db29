"""The config file, as pydantic models.

One file describes one till.  Every section forbids unknown keys, so a
technician's typo is an error rather than a silently ignored setting.  Defaults
are given only where a default is safe on any till.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from tillplug.config.rules import check_rule
from tillplug.ids import UUID_PATTERN
from tillplug.money import CURRENCY_EXPONENTS

# Named engine locations (engine-api.md §1).  "simulator" is the embedded one.
ENGINE_PRESETS: dict[str, dict[str, str]] = {
    "simulator": {
        "base_url": "http://127.0.0.1:8620/v1",
        "auth_url": "http://127.0.0.1:8620/oauth/token",
        "receipts_url": "http://127.0.0.1:8620/receipts/v1",
    },
    "eu": {
        "base_url": "https://api.rewards.wlloyalty.net/v1",
        "auth_url": "https://auth.wlloyalty.net/oauth/token",
        "receipts_url": "https://api.receipts.wlloyalty.net/v1",
    },
    "eu-staging": {
        "base_url": "https://api.staging.rewards.wlloyalty.net/v1",
        "auth_url": "https://auth.wlloyalty.net/oauth/token",
        "receipts_url": "https://api.staging.receipts.wlloyalty.net/v1",
    },
    "us": {
        "base_url": "https://api.rewards.us.wlloyalty.net/v1",
        "auth_url": "https://auth.us.wlloyalty.net/oauth/token",
        "receipts_url": "https://api.receipts.us.wlloyalty.net/v1",
    },
    "us-staging": {
        "base_url": "https://api.staging.rewards.us.wlloyalty.net/v1",
        "auth_url": "https://auth.us.wlloyalty.net/oauth/token",
        "receipts_url": "https://api.staging.receipts.us.wlloyalty.net/v1",
    },
    "gcc": {
        "base_url": "https://api.rewards.me.wlloyalty.net/v1",
        "auth_url": "https://auth.me.wlloyalty.net/oauth/token",
        "receipts_url": "https://api.receipts.me.wlloyalty.net/v1",
    },
    "gcc-staging": {
        "base_url": "https://api.staging.rewards.me.wlloyalty.net/v1",
        "auth_url": "https://auth.me.wlloyalty.net/oauth/token",
        "receipts_url": "https://api.staging.receipts.me.wlloyalty.net/v1",
    },
}

# The simulator's well-known demo credentials: public on purpose, never valid on WLL.
SIMULATOR_API_KEY = "sim-api-key-0000"
SIMULATOR_CLIENT_ID = "sim-client"
SIMULATOR_CLIENT_SECRET = "sim-client-secret"

BAUDRATES = Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200]
EVENT_TYPE_RE = re.compile(r"^[A-Z]+(_[A-Z]+)*$")
IDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CREDENTIAL_RE = re.compile(r"^credential:[A-Za-z0-9._-]{1,255}$")
INLINE_SECRET = "inline_secret"  # the error type whose input is never shown (tillplug.config.loader)
MAX_DEVICES = 32  # per kind: a till has a handful; thousands once kept the daemon from ever becoming ready
MAX_RULES = 32
# One write per 100 s: a chain of 10,000 tills sharing WLL's 100 requests/s.  Below it a backlog
# would never drain (1e-320 was accepted and the outbox stopped).
MIN_OUTBOX_RATE = 0.01
MIN_FLEET_RATE = 0.0001  # the dashboard's per-till averages: below one request in ~3 hours is no figure
# The daemon holds no capabilities (CAP_NET_BIND_SERVICE): it can listen only at or above this port.
MIN_SHARE_PORT = 1024


def _identifier(value: str) -> str:
    if not IDENT_RE.match(value):
        raise ValueError("must be 1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def _secret_ref(value: str) -> str:
    if CREDENTIAL_RE.match(value) or (value.startswith("/") and len(value) <= 4096):
        return value
    # Not ValueError: its message would travel with the value, and the value may be the secret itself.
    raise PydanticCustomError(
        INLINE_SECRET,
        "must be an absolute path to a file holding the secret, or 'credential:NAME' for a systemd "
        "credential (LoadCredential=); what is written here is not shown, as it may be the secret itself: "
        "put the secret in a file (chmod 600) and give the file's path",
    )


def _event_type(value: str) -> str:
    if not EVENT_TYPE_RE.match(value) or not 2 <= len(value) <= 64:
        raise ValueError("must be 2-64 upper-case letters in words joined by '_', e.g. TRANSACTION")
    return value


def _currency(value: str) -> str:
    if value not in CURRENCY_EXPONENTS:
        raise ValueError("must be an ISO 4217 code in upper case, e.g. GBP, EUR, USD")
    return value


def _http_url(value: str) -> str:
    m = re.match(r"^(https?)://([^/:?#]+|\[[0-9a-fA-F:]+\])(:\d{1,5})?(/[^\s?#]*)?$", value)
    if not m:
        raise ValueError("must be an http(s) URL such as https://api.rewards.wlloyalty.net/v1")
    if m.group(1) == "http" and not _is_loopback(m.group(2).strip("[]")):
        raise ValueError("must use https (plain http is allowed only to 127.0.0.1 / localhost)")
    return value.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _proxy_url(value: str) -> str:
    if not re.match(r"^(http|https|socks5)://[^/\s:]+(:\d{1,5})?/?$", value):
        raise ValueError("must be a proxy URL such as http://proxy.shop.lan:3128")
    return value


GROUP_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _group_name(value: str) -> str:
    if not GROUP_NAME_RE.match(value):
        raise ValueError("must be a group name: up to 32 lower-case letters, digits, '_' or '-', e.g. tillplug-till")
    if value == "tillplug":
        raise ValueError(
            "must not be tillplug, the service's own group: it reaches /dev/uinput, so any program of the "
            "till's user could type into any window; use tillplug-till"
        )
    return value


def _hex_bytes(value: str) -> str:
    try:
        bytes.fromhex(value)
    except ValueError:
        raise ValueError("must be bytes in hex, e.g. '16 4d 0d' (spaces allowed)") from None
    if not value.strip():
        raise ValueError("must be at least one byte in hex, e.g. '16 4d 0d'")
    return value


def abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return value


def _abs_dir(value: Path) -> Path:
    if not value.is_absolute():
        # The daemon and the CLI start in different folders: a relative path would be two different outboxes.
        raise ValueError("must be an absolute path, e.g. /var/lib/tillplug")
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]
SecretRef = Annotated[str, AfterValidator(_secret_ref)]
Regex = Annotated[str, AfterValidator(check_rule)]
AbsoluteDir = Annotated[Path, AfterValidator(_abs_dir)]
EventType = Annotated[str, AfterValidator(_event_type)]
Currency = Annotated[str, AfterValidator(_currency)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Seconds = Annotated[float, Field(ge=0.1, le=120)]


class Section(BaseModel):
    # TOML can write nan and inf: no setting means either.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class EventTypes(Section):
    """Event type names as the tenant configured them in the Loyalty Console."""

    transaction: EventType = "TRANSACTION"
    redeemed_points: EventType = "REDEEMED_POINTS"
    points_refund: EventType = "POINTS_REFUND"
    # Returns after the sale (docs/technician.md: Returns): the earned points taken back (the reactor
    # negates ``points``), and the spent points given back (a positive ``points``, as a void's refund).
    points_taken_back: EventType = "POINTS_TAKEN_BACK"
    points_given_back: EventType = "POINTS_REFUND"


# Keys a till in relay mode may not carry: where WLL is, and its secrets, are the relay's.
RELAY_FORBIDS = (
    "preset",
    "base_url",
    "auth_url",
    "receipts_url",
    "api_key",
    "client_id",
    "client_secret",
    "event_type_secrets",
    "venue_identifier",
    "dialect_file",
)


class EngineConfig(Section):
    preset: Literal["simulator", "eu", "eu-staging", "us", "us-staging", "gcc", "gcc-staging"] | None = None
    base_url: HttpUrl | None = None
    auth_url: HttpUrl | None = None
    receipts_url: HttpUrl | None = None
    api_key: SecretRef | None = None
    client_id: SecretRef | None = None
    client_secret: SecretRef | None = None
    audience: str = Field(default="wlloyalty.net", min_length=1, max_length=200)
    # Per event type, a secret used instead of the admin token (least privilege).
    event_type_secrets: dict[EventType, SecretRef] = Field(default_factory=dict, max_length=32)
    event_types: EventTypes = Field(default_factory=EventTypes)
    earn_mode: Literal["events", "orders"] = "events"
    venue_identifier: str | None = Field(default=None, min_length=1, max_length=128)
    send_user_identifier: bool = True
    # Where the shop's network needs them: an outbound proxy, and the CA of a TLS-inspecting
    # proxy.  Set here, not by environment variables (a systemd service does not see a shell's).
    # TLS certificates are always verified.
    proxy: Annotated[str, AfterValidator(_proxy_url)] | None = None
    ca_file: Annotated[str, AfterValidator(abs_path)] | None = None
    connect_timeout: Seconds = 3.0
    read_timeout: Seconds = 5.0
    # How long after a write's last attempt a look-up that does not find it is still not believed
    # (the write may be in flight).  Unset: 2 x (connect_timeout + read_timeout).
    in_flight_window: Annotated[float, Field(ge=1, le=600)] | None = None
    # Online calls while the cashier waits: a couple of quick tries, then give up or queue.
    max_attempts: int = Field(default=2, ge=1, le=5)
    confirm_rate_with_test_reaction: bool = False
    # What `tillplug engine-check` found this engine to do where WLL publishes nothing
    # (docs/technician.md: Engine dialects).  Unset: tillplug trusts nothing it has not seen.
    dialect_file: Annotated[str, AfterValidator(abs_path)] | None = None
    # Relay mode (docs/relay.md): the chain's relay holds the WLL secrets; the till holds only its
    # own token, and no preset, engine URL or WLL secret.
    relay_url: HttpUrl | None = None
    relay_token: SecretRef | None = None

    @model_validator(mode="after")
    def _where_and_who(self) -> EngineConfig:
        if self.relay_url is not None or self.relay_token is not None:
            return self._relay_mode()
        if self.preset is None and self.base_url is None:
            raise ValueError("set either 'preset' (simulator, eu, us, gcc, or *-staging) or 'base_url'")
        if self.preset != "simulator":
            missing = [k for k in ("api_key", "client_id", "client_secret") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"the real engine needs {', '.join(missing)} (each a file path or credential:NAME)")
        return self

    def _relay_mode(self) -> EngineConfig:
        if self.relay_url is None or self.relay_token is None:
            raise ValueError("relay mode needs both relay_url and relay_token (a file path or credential:NAME)")
        wll = [k for k in RELAY_FORBIDS if getattr(self, k)]
        if wll:
            raise ValueError(
                f"with relay_url the relay holds the engine's settings and secrets; remove {', '.join(wll)}"
            )
        return self

    @property
    def relay_mode(self) -> bool:
        return self.relay_url is not None

    def urls(self) -> dict[str, str]:
        """base_url, auth_url and receipts_url, explicit values winning over the preset."""
        if self.relay_url is not None:  # the relay serves both APIs; a till in relay mode mints no token
            root = self.relay_url.rstrip("/")
            return {"base_url": f"{root}/v1", "auth_url": f"{root}/oauth/token", "receipts_url": f"{root}/receipts/v1"}
        preset = ENGINE_PRESETS[self.preset] if self.preset else {}
        base = self.base_url or preset["base_url"]
        root = base.rsplit("/v1", 1)[0] if base.endswith("/v1") else base
        if self.preset == "simulator" and self.base_url:  # one simulator serves all three, wherever it runs
            preset = {"auth_url": f"{root}/oauth/token", "receipts_url": f"{root}/receipts/v1"}
        return {
            "base_url": base,
            "auth_url": self.auth_url or preset.get("auth_url") or f"{root}/oauth/token",
            "receipts_url": self.receipts_url or preset.get("receipts_url") or base,
        }


class PointsConfig(Section):
    """The points-to-cash rate: ``rate_points`` points are worth ``rate_money`` minor units."""

    rate_points: int = Field(default=100, ge=1, le=1_000_000)
    rate_money: int = Field(default=100, ge=1, le=1_000_000)
    # For the sale summary slip when test_reaction is not used: points per major unit spent.
    earn_per_major_unit: float = Field(default=1.0, ge=0, le=10_000)
    max_points_per_redemption: int = Field(default=1_000_000, ge=1, le=10**12)
    # Reads spent confirming a deduction the engine accepted (the balance; with reactions known to be
    # listed promptly, the reactions beside it), with backoff; past the budget the till gets success
    # with the balance marked estimated.  Two: the cashier waits at most two round trips more (one
    # with reactions listed promptly); each further read widens what is seen by a longer wait.
    confirm_reads: int = Field(default=2, ge=0, le=10)


ReturnPolicy = Literal["proportion", "none", "all"]


class ReturnsConfig(Section):
    """Points on a return after the sale (``POST /v1/returns``)."""

    # The original's earned points, taken back in proportion to the amount returned over the amount
    # paid ("proportion"), not at all, or all of them on the first return.
    take_back: ReturnPolicy = "proportion"
    # The points spent on the original, given back in proportion to the amount returned over the
    # sale's total before the points discount, not at all, or all of them on the first return.
    give_back: ReturnPolicy = "proportion"
    # A take-back never drives the balance below zero (what could not be taken back is reported)
    # unless this is true.
    allow_negative_balance: bool = False
    # Seconds a return waits for the engine to show its points moved, for the slip; 0: never waits.
    confirm_wait: float = Field(default=5.0, ge=0, le=30)


class VoucherConfig(Section):
    # burn: validate and burn at scan.  check_then_burn: check at scan, burn at tender (before payment).
    mode: Literal["burn", "check_then_burn"] = "burn"


class BarcodeRules(Section):
    """Regular expressions, tried in order member → local pool → voucher; else 'other'.

    A named group ``code`` picks the part of the scan that is the code.
    """

    member: list[Regex] = Field(
        max_length=MAX_RULES,
        default_factory=lambda: [
            f"^(?P<code>{UUID_PATTERN})$",
            r"^(?P<code>\d{7})$",
            r"^MBR:(?P<code>[A-Za-z0-9._@-]{1,512})$",
        ],
    )
    local_pool: list[Regex] = Field(default_factory=list, max_length=MAX_RULES)
    voucher: list[Regex] = Field(
        default_factory=lambda: [r"^(?P<code>(?=[A-Z0-9-]*[A-Z])[A-Z0-9-]{5,40})$"], max_length=MAX_RULES
    )


class ScannerConfig(Section):
    name: Identifier
    driver: str = Field(default="serial-scanner", min_length=1)
    port: str = Field(min_length=1, description="device path (/dev/tillplug/scanner0) or pyserial URL")
    lane: int = Field(default=1, ge=1, le=999)
    baudrate: BAUDRATES = 9600
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    rtscts: bool = False
    xonxoff: bool = False
    terminator: Literal["auto", "CR", "LF", "CRLF", "TAB", "none"] = "auto"
    idle_gap_ms: int = Field(default=80, ge=10, le=2000)
    max_length: int = Field(default=512, ge=8, le=8192)
    strip_prefix: str = ""
    strip_suffix: str = ""
    # Drop-in at an existing till.  Serial scanners: a pty whose other end appears at this path,
    # for the till to open as if it were the scanner; scans tillplug does not consume are passed
    # there byte for byte.  Keyboard (HID) scanners: such scans are re-typed unless retype = false.
    till_port: Annotated[str, AfterValidator(abs_path)] | None = None
    # The group the till's user opens till_port through (tillplug install creates it); never the
    # service's own group "tillplug", which reaches /dev/uinput and every raw device.
    till_group: Annotated[str, AfterValidator(_group_name)] = "tillplug-till"
    retype: bool = True
    pass_loyalty: bool = False  # member cards and vouchers go to the till too (as well as to loyalty)
    layout: Literal["us", "gb", "de", "fr", "be", "es", "it", "nl"] = "us"  # keyboard scanners only
    # Feedback at the scanner: bytes (hex) that make it beep or light, for a refused and an accepted
    # loyalty scan.  Off unless set; written only to this scanner's own port.
    feedback_good: Annotated[str, AfterValidator(_hex_bytes)] | None = None
    feedback_bad: Annotated[str, AfterValidator(_hex_bytes)] | None = None

    @model_validator(mode="after")
    def _port_shape(self) -> ScannerConfig:
        if not (self.port.startswith("/") or re.match(r"^[a-z0-9+]+://", self.port)):
            raise ValueError("port must be a device path like /dev/tillplug/scanner0 or a URL like socket://host:port")
        if self.till_port is not None and self.till_port == self.port:
            raise ValueError("till_port must be a new path for the till to open, not the scanner's own port")
        return self


PRINTER_SCHEMES = ("serial", "tcp", "usb", "file", "capture")


class PrinterConfig(Section):
    name: Identifier
    driver: str = Field(default="escpos", min_length=1)
    connection: str = Field(
        min_length=1,
        description="serial:///dev/..., tcp://host:9100, usb://VID:PID, file:///dev/usb/lp0 or capture:///path",
    )
    lane: int = Field(default=1, ge=1, le=999)
    profile: str = Field(default="default", min_length=1, max_length=64)
    paper_width_mm: Literal[58, 80] = 80
    columns: Literal[32, 42, 48] | None = None
    code_page: str | None = None
    baudrate: BAUDRATES = 9600
    flow_control: Literal["dsrdtr", "rtscts", "xonxoff", "none"] = "dsrdtr"
    status_timeout: Annotated[float, Field(gt=0, le=10)] = 0.5
    # A network printer that does not accept the connection in this time is away: the job is held.
    connect_timeout: Annotated[float, Field(gt=0, le=30)] = 1.0
    # A loopback TCP port (9100-style) the till's own ESC/POS driver can print to, sharing this printer.
    share_port: int | None = Field(default=None, ge=MIN_SHARE_PORT, le=65535)
    # The same as a Unix socket at this absolute path: mode 0660, owned by its directory's group (put it
    # in a directory of the till's group), so no other user's program and no web page can print.
    share_socket: str | None = Field(default=None, pattern=r"^/[^\x00]*$", max_length=100)
    # The cash drawer's sensor, read from the printer's real-time status (DLE EOT 1, connector pin 3):
    # whether one is wired, and the pin's level while the drawer is open (the drawer's data sheet says).
    drawer_sensor: bool = False
    drawer_open_level: Literal["high", "low"] | None = None

    @model_validator(mode="after")
    def _connection_shape(self) -> PrinterConfig:
        scheme = self.connection.split("://", 1)[0] if "://" in self.connection else ""
        if scheme not in PRINTER_SCHEMES:
            raise ValueError("connection must start with one of " + ", ".join(f"{s}://" for s in PRINTER_SCHEMES))
        return self

    @model_validator(mode="after")
    def _drawer_sensor_level(self) -> PrinterConfig:
        if self.drawer_sensor and self.drawer_open_level is None:
            raise ValueError(
                'drawer_sensor = true needs drawer_open_level = "high" or "low" (the level of connector pin 3 '
                "while the drawer is open: the drawer's data sheet says; a guess would read every state backwards)"
            )
        if self.drawer_open_level is not None and not self.drawer_sensor:
            raise ValueError("drawer_open_level is set but drawer_sensor is not: set drawer_sensor = true")
        return self


class DisplayConfig(Section):
    """A customer display on a serial port (a pole display: 2 lines of 20 characters)."""

    name: Identifier
    driver: str = Field(default="pole-display", min_length=1)
    port: str = Field(min_length=1, description="device path (/dev/tillplug/display0) or pyserial URL")
    lane: int = Field(default=1, ge=1, le=999)
    # epson: the Epson customer-display (DM-D) command set, which most pole displays accept; cd5220: the
    # other common one (ESC Q A / ESC Q B).
    command_set: Literal["epson", "cd5220"] = "epson"
    columns: int = Field(default=20, ge=8, le=40)
    baudrate: BAUDRATES = 9600
    # The display's character table: characters outside it are transliterated (Ł → L, € → EUR).
    code_page: Literal["cp437", "cp850", "cp858", "cp1252"] = "cp437"

    @model_validator(mode="after")
    def _port_shape(self) -> DisplayConfig:
        if not (self.port.startswith("/") or re.match(r"^[a-z0-9+]+://", self.port)):
            raise ValueError("port must be a device path like /dev/tillplug/display0 or a URL like socket://host:port")
        return self


class CustomerDisplayConfig(Section):
    """What the customer's displays show: the pole displays and the page at /display/{lane}."""

    # masked: the member's masked card number; first_name: their first name only (read from the engine).
    member: Literal["masked", "first_name"] = "masked"
    idle_text: list[Annotated[str, Field(max_length=40)]] = Field(default_factory=lambda: ["Welcome"], max_length=2)
    # After a sale is completed or voided (or a card looked up with no sale), the idle text comes back.
    idle_after_seconds: float = Field(default=20.0, ge=1, le=3600)
    # The secret each lane's page key is derived from (a file or credential:NAME); default: api.token.
    key: SecretRef | None = None


def _slip_language(value: str) -> str:
    from babel import Locale, UnknownLocaleError

    from tillplug.receipts.messages import LANGUAGES, language_of
    from tillplug.receipts.templates import babel_locale

    if language_of(value) not in LANGUAGES:
        raise ValueError(f"slips are written in {', '.join(LANGUAGES)} (a locale such as fr_BE is fine too)")
    try:
        Locale.parse(babel_locale(value))
    except (ValueError, UnknownLocaleError):
        raise ValueError(f"{value!r} is not a locale Babel knows") from None
    return value


FooterLines = list[Annotated[str, Field(max_length=64)]]


class ReceiptsConfig(Section):
    header: FooterLines = Field(default_factory=list, max_length=16)
    footer: FooterLines = Field(default_factory=list, max_length=16)
    # Per slip kind, instead of ``footer``: e.g. voucher = ["Valid in every store"].
    footers: dict[Literal["balance", "voucher", "points", "refund", "sale", "test", "return"], FooterLines] = Field(
        default_factory=dict
    )
    language: Annotated[str, AfterValidator(_slip_language)] = "en"
    logo: Annotated[str, AfterValidator(abs_path)] | None = None  # an image file, printed at the top of each slip
    # Add the loyalty block (member, points spent and earned, balance) to the till's own receipt, printed
    # through this printer's spool (POST /v1/print/raw or share_port), before its cut.
    append_to_till_receipt: bool = False
    balance_slip: bool = True
    voucher_receipt: bool = True
    points_slip: bool = True
    sale_summary: bool = True


class PrintingConfig(Section):
    # A slip held (paper out, cover open, printer away) longer than this is never printed by itself,
    # so it cannot come out for the next customer; it can still be reprinted.
    hold_minutes: float = Field(default=2, gt=0, le=24 * 60)
    # Bounds, so a printer away never fills the disk: past one a print call is refused (print_queue_full)
    # and health says so.  Waiting = queued, held or printing, per printer.
    max_waiting_jobs: int = Field(default=200, ge=1, le=100_000)
    max_waiting_mib: float = Field(default=32, ge=4, le=4096)  # at least one whole share-port job (4 MiB)
    max_database_mib: float = Field(default=256, ge=8, le=65536)  # the print database, finished jobs included
    keep_finished_hours: float = Field(default=24, gt=0, le=24 * 90)  # printed/sent/failed/expired kept for reprints

    @model_validator(mode="after")
    def _bounds_fit(self) -> PrintingConfig:
        if self.max_database_mib < 2 * self.max_waiting_mib:
            raise ValueError("max_database_mib must be at least twice max_waiting_mib (a printer's whole queue)")
        return self


def _host_name(value: str) -> str:
    name, _, port = value.rpartition(":") if re.search(r":\d{1,5}$", value) else (value, "", "")
    if not (HOST_NAME_RE.match(name) or _is_ip(name.strip("[]"))) or (port and not 0 < int(port) < 65536):
        raise ValueError("must be a host name or address as the till's browser writes it, e.g. till-07.shop.lan")
    return value.lower()


def _origin(value: str) -> str:
    if not re.match(r"^https?://([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(:\d{1,5})?$", value):
        raise ValueError("must be an origin: scheme://host[:port] with no path, e.g. http://localhost:3000")
    return value.lower()


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


HOST_NAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")


class ApiConfig(Section):
    listen: str = "127.0.0.1:8765"
    token: SecretRef | None = None
    # Names besides 127.0.0.1, localhost and [::1] by which the till's own software reaches the API.
    allowed_hosts: list[Annotated[str, AfterValidator(_host_name)]] = Field(default_factory=list, max_length=32)
    # Web POS pages that may call the API from a browser (CORS); every other page is refused.
    allowed_origins: list[Annotated[str, AfterValidator(_origin)]] = Field(default_factory=list, max_length=32)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    # Connections at once (the till software, a web POS, event-stream listeners); more are closed.
    max_connections: int = Field(default=64, ge=4, le=1024)
    # Seconds a client has to send a request's head, and then its body.
    request_timeout: float = Field(default=10.0, ge=0.5, le=60)

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ApiConfig:
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port (tests)
            raise ValueError("listen must be HOST:PORT, e.g. 127.0.0.1:8765")
        if not _is_loopback(host) and self.token is None:
            raise ValueError("the API listens beyond loopback, so 'token' (a file or credential:NAME) is required")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class OutboxConfig(Section):
    max_rows: int = Field(default=100_000, ge=100, le=10_000_000)
    max_age_hours: float = Field(default=72, gt=0, le=24 * 365)
    # Share of the tenant's 100 requests/s that this till may use when draining a backlog.
    rate_per_second: float = Field(default=10, ge=MIN_OUTBOX_RATE, le=100)
    burst: int = Field(default=20, ge=1, le=400)
    # The most the outbox may send, as a multiple of rate_per_second, when the engine has room (what other
    # tills' cashiers leave): 1 (the default) never exceeds rate_per_second; a chain sets more on purpose.
    above_share: float = Field(default=1.0, ge=1.0, le=10.0)
    # The chain's average interactive engine requests/s per till (the fleet dashboard shows it:
    # sum(rate(tillplug_engine_requests_total{use_case!="outbox"}[1h])) / count(up{job="tillplug"})).  When set,
    # the share left after interactive calls is split in proportion to how busy each till is.
    fleet_interactive_per_second: float | None = Field(default=None, ge=MIN_FLEET_RATE, le=100)
    # The chain's average outbox writes/s per till (the dashboard:
    # sum(rate(tillplug_engine_requests_total{use_case="outbox"}[1h])) / count(up{job="tillplug"})).  With the
    # figure above, a backlog after an outage is paced towards one deadline the whole chain shares.
    fleet_writes_per_second: float | None = Field(default=None, ge=MIN_FLEET_RATE, le=100)

    @model_validator(mode="after")
    def _fleet_figures_leave_room(self) -> OutboxConfig:
        interactive, writes = self.fleet_interactive_per_second, self.fleet_writes_per_second
        if writes is not None and interactive is None:
            raise ValueError(
                "fleet_writes_per_second needs fleet_interactive_per_second too (both off the fleet dashboard)"
            )
        if writes is not None and interactive is not None and interactive + writes >= self.rate_per_second:
            raise ValueError(
                f"fleet_interactive_per_second + fleet_writes_per_second ({interactive + writes:g}) must be below "
                f"rate_per_second ({self.rate_per_second:g}): with them the chain's tills would use all of the "
                "tenant's limit in normal trading and no backlog could drain (check the figures, or the share)"
            )
        return self

    def exceeded(self, depth: int, oldest_age_s: float) -> bool:
        """Over the bounds: the till must be told loudly (nothing is ever dropped)."""
        return depth >= self.max_rows or oldest_age_s >= self.max_age_hours * 3600


class EnrolmentConfig(Section):
    """Enrolment at the till (docs/technician.md: Enrolment)."""

    # The chain's enrolment public key(s), PEM.  Unset: enrolment.pub beside the config file.
    public_key: Annotated[str, AfterValidator(abs_path)] | None = None
    # Written by enrolment: where the chain's config layer (conf.d/10-chain.toml) came from.
    config_url: str | None = Field(default=None, max_length=2048)


class Config(Section):
    till_id: Identifier
    branch_id: Identifier
    currency: Currency = "GBP"
    state_dir: AbsoluteDir = Path("/var/lib/tillplug")
    cache_dir: AbsoluteDir = Path("/var/cache/tillplug")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    engine: EngineConfig
    points: PointsConfig = Field(default_factory=PointsConfig)
    vouchers: VoucherConfig = Field(default_factory=VoucherConfig)
    returns: ReturnsConfig = Field(default_factory=ReturnsConfig)
    barcodes: BarcodeRules = Field(default_factory=BarcodeRules)
    scanners: list[ScannerConfig] = Field(default_factory=list, max_length=MAX_DEVICES)
    printers: list[PrinterConfig] = Field(default_factory=list, max_length=MAX_DEVICES)
    displays: list[DisplayConfig] = Field(default_factory=list, max_length=MAX_DEVICES)
    customer_display: CustomerDisplayConfig = Field(default_factory=CustomerDisplayConfig)
    receipts: ReceiptsConfig = Field(default_factory=ReceiptsConfig)
    printing: PrintingConfig = Field(default_factory=PrintingConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    enrolment: EnrolmentConfig = Field(default_factory=EnrolmentConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        devices: list[ScannerConfig | PrinterConfig | DisplayConfig] = [*self.scanners, *self.printers, *self.displays]
        for device in devices:
            if device.name in seen:
                raise ValueError(f"device name {device.name!r} is used twice; devices need unique names")
            seen.add(device.name)
        return self
