"""``relay.toml``: the engine (a till's keys), the database, the listening address, the pacer."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from tillplug.config.loader import Problem, Report, check_secret, loaded, parse_toml, problems_from_validation
from tillplug.config.model import INLINE_SECRET, EngineConfig, SecretRef, Section, abs_path
from tillplug.errors import ConfigError

EXAMPLE = Path(__file__).with_name("example.toml")


def _database_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:  # not a URL at all; nothing of it is shown, it may hold a password
        raise PydanticCustomError(
            INLINE_SECRET, "must be a postgresql:// URL (what is written here is not shown)"
        ) from None
    if password is not None or re.search(r"(^|[?&;])password=", value):
        # Not ValueError: its message would travel with the value, and the value holds the password.
        raise PydanticCustomError(
            INLINE_SECRET,
            "must not carry a password (what is written here is not shown): put the password in a file "
            "(chmod 600) named by database.password_file, or use peer authentication",
        )
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError('must be a postgresql:// URL such as "postgresql://relay@db.chain.lan/tillplug_relay"')
    return value


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError('must be HOST:PORT, e.g. "127.0.0.1:8766" or "0.0.0.0:8443"')
    return value


def _address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("must be an IP address (the proxy's, as the relay sees it)") from None
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DatabaseConfig(Section):
    url: Annotated[str, AfterValidator(_database_url)]
    password_file: SecretRef | None = None  # unset: peer (or certificate) authentication
    pool_size: int = Field(default=8, ge=2, le=200)


class ApiConfig(Section):
    listen: Annotated[str, AfterValidator(_listen)] = "127.0.0.1:8766"
    tls_cert: Annotated[str, AfterValidator(abs_path)] | None = None
    tls_key: Annotated[str, AfterValidator(abs_path)] | None = None
    # A TLS-terminating proxy in front: only this address may connect.
    trusted_proxy: Annotated[str, AfterValidator(_address)] | None = None
    max_body_bytes: int = Field(default=65536, ge=1024, le=1 << 20)
    # GET /metrics beyond loopback (or behind trusted_proxy) needs this token (a file or credential:NAME).
    metrics_token: SecretRef | None = None

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @model_validator(mode="after")
    def _tls_beyond_loopback(self) -> ApiConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if not is_loopback(self.host) and self.tls_cert is None and self.trusted_proxy is None:
            raise ValueError(
                "listening beyond loopback needs TLS (tls_cert and tls_key) or a trusted_proxy that terminates it"
            )
        return self


class PacingConfig(Section):
    """The tenant's limit (engine-api.md: 100 requests/s, burst 400, per API key)."""

    rate: float = Field(default=100, gt=0, le=10_000)
    burst: int = Field(default=400, ge=1, le=100_000)
    # Outbox deliveries only while more tokens than this are left: cashiers' calls first.
    outbox_reserve: int | None = Field(default=None, ge=0)
    # How long a cashier's call may wait for a token before the till gets 429 + Retry-After.
    max_wait: float = Field(default=0.5, ge=0, le=10)

    @property
    def reserve(self) -> int:
        return self.outbox_reserve if self.outbox_reserve is not None else self.burst // 2


class GuardConfig(Section):
    # A second spend on one member waits this long for the first, then fails (spend_in_progress).
    spend_wait: float = Field(default=5, gt=0, le=60)


class OutboxConfig(Section):
    # A delivery or a look-up claimed by one relay process is its own this long; a process killed
    # mid-delivery leaves its rows to the others after it (then they look the write up first).
    lease: float = Field(default=30, ge=3, le=600)


class RelayConfig(Section):
    chain_id: str = Field(default="chain", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    engine: EngineConfig
    database: DatabaseConfig
    api: ApiConfig = Field(default_factory=ApiConfig)
    pacing: PacingConfig = Field(default_factory=PacingConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")

    @model_validator(mode="after")
    def _not_a_relay_behind_a_relay(self) -> RelayConfig:
        if self.engine.relay_url is not None:
            raise ValueError("engine.relay_url is a till's setting; the relay talks to the engine itself")
        # A delivery (its wait for a token, a third of the lease, and its attempts) must end inside
        # its lease, or another process could look it up and resend it while it is still going.
        longest = 1.5 * self.engine.max_attempts * (self.engine.connect_timeout + self.engine.read_timeout)
        if self.outbox.lease < longest:
            raise ValueError(
                f"outbox.lease must be at least {longest:g} s: 1.5 x engine.max_attempts x"
                " (connect_timeout + read_timeout)"
            )
        return self


def validate(data: dict[str, Any], *, check_secrets: bool = True) -> Report[RelayConfig]:
    report: Report[RelayConfig] = Report()
    try:
        config = RelayConfig.model_validate(data)
    except ValidationError as exc:
        report.problems = problems_from_validation(exc)
        return report
    report.config = config
    if check_secrets:
        refs = [(f"engine.{k}", getattr(config.engine, k)) for k in ("api_key", "client_id", "client_secret")]
        refs += [(f"engine.event_type_secrets.{k}", v) for k, v in config.engine.event_type_secrets.items()]
        refs.append(("database.password_file", config.database.password_file))
        refs.append(("api.metrics_token", config.api.metrics_token))
        for path, ref in refs:
            if ref is not None:
                report.problems += [Problem(path, m, sev) for sev, m in check_secret(ref)]
    for key in ("tls_cert", "tls_key"):
        value = getattr(config.api, key)
        if value is not None and not os.path.isfile(value):
            report.problems.append(Problem(f"api.{key}", f"{value} does not exist"))
    return report


def check_config(path: str | os.PathLike[str]) -> Report[RelayConfig]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Report(problems=[Problem("", f"{file} does not exist")])
    except (OSError, UnicodeDecodeError) as exc:
        return Report(problems=[Problem("", f"{file} cannot be read ({type(exc).__name__})")])
    try:
        data = parse_toml(text, str(file))
    except ConfigError as exc:
        return Report(problems=[Problem("", m) for _, m in exc.problems])
    return validate(data)


def load_config(path: str | os.PathLike[str]) -> RelayConfig:
    report = check_config(path)
    return loaded(path, report.config, report.errors)


def example() -> str:
    return EXAMPLE.read_text(encoding="utf-8")
