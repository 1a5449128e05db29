"""Reading the config file, and turning every mistake in it into a message a technician can act on."""

from __future__ import annotations

import difflib
import os
import re
import stat
import tomllib
import types
import typing
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from tillplug.config.layers import LayerError, Merged, dotted, drop_ins, merge
from tillplug.config.model import INLINE_SECRET, Config, DisplayConfig, PrinterConfig, ScannerConfig
from tillplug.errors import ConfigError
from tillplug.logs import never_log

LoadedT = TypeVar("LoadedT")  # the till's Config or the relay's RelayConfig


@dataclass(frozen=True)
class Problem:
    path: str  # "scanners[1].baudrate", or "" for the whole file
    message: str
    severity: str = "error"  # or "warning"
    # False: an error check-config reports, but the daemon starts anyway, with a safe default (and logs it)
    stops_start: bool = True
    source: str | None = None  # the file (of several layers) that set the value at fault

    def __str__(self) -> str:
        where = self.path or "(file)"
        if self.source:
            return f"{self.severity}: {self.source}: {where}: {self.message}"
        return f"{self.severity}: {where}: {self.message}"


@dataclass
class Report(Generic[LoadedT]):
    """A config file's verdict, the till's or the relay's: the config (None if it cannot be built), every problem."""

    config: LoadedT | None = None
    problems: list[Problem] = field(default_factory=list)
    # The files read, and where each value came from: the till's tillplug.toml and conf.d/ (the
    # relay reads one file, so None there).
    layers: Merged | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return self.config is not None and not self.errors


class Secret:
    """A secret value that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str, *, renewed: bool = False) -> None:
        self._value = value
        never_log(value, renewed=renewed)  # from now on, masked in every log line (tillplug.logs)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def secret_path(ref: str) -> Path:
    """Where a secret reference points: a file, or a systemd credential."""
    if ref.startswith("credential:"):
        name = ref.removeprefix("credential:")
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                f"{ref} names a systemd credential, but CREDENTIALS_DIRECTORY is not set "
                "(run under systemd with LoadCredential=, or give a file path)"
            )
        return Path(directory) / name
    return Path(ref)


MAX_SECRET_BYTES = 4096


def _credentials_dir() -> Path | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(directory).resolve() if directory else None


def _open_secret(path: Path) -> int:
    """A descriptor on the secret file: a regular file, reached by no symlink from outside the credentials folder."""
    creds = _credentials_dir()
    if path.is_symlink():
        target = path.resolve()
        inside = creds is not None and path.parent.resolve() == creds and target.is_relative_to(creds)
        if not inside:
            raise ConfigError(
                f"secret file {path} is a symbolic link; give the file itself "
                "(links are allowed only inside the systemd credentials folder)"
            )
        flags = os.O_RDONLY
    else:
        flags = os.O_RDONLY | os.O_NOFOLLOW  # no swap for a link between the check and the open
    try:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not hang the start
    except FileNotFoundError:
        raise ConfigError(f"secret file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"secret file {path} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"secret file {path} is not a regular file")
    if _kernel_file(path):
        os.close(fd)
        raise ConfigError(
            f"secret file {path} is a kernel file under /proc or /sys, not a file holding a secret "
            "(/proc/self/environ would hand the daemon's environment to the engine)"
        )
    return fd


KERNEL_FILESYSTEMS = (Path("/proc"), Path("/sys"))


def _kernel_file(path: Path) -> bool:
    """Files the kernel makes up as they are read: they look regular (size 0) but hold no secret."""
    real = path.resolve()
    return any(real.is_relative_to(root) for root in KERNEL_FILESYSTEMS)


def _secret_text(path: Path) -> str:
    fd = _open_secret(path)
    try:
        raw = os.read(fd, MAX_SECRET_BYTES + 1)
        made_up = bool(raw) and os.fstat(fd).st_size == 0  # a pseudo-file (procfs mounted elsewhere, configfs...)
    finally:
        os.close(fd)
    if made_up:
        raise ConfigError(
            f"secret file {path} is a kernel file (it has no size, yet reads), not a file holding a secret"
        )
    if len(raw) > MAX_SECRET_BYTES:
        raise ConfigError(f"secret file {path} is larger than {MAX_SECRET_BYTES} bytes; it should hold one line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"secret file {path} is not UTF-8 text") from None
    value = text.removesuffix("\n").removesuffix("\r")
    if "\n" in value or "\r" in value:
        lines = len(value.splitlines())
        raise ConfigError(f"secret file {path} holds {lines} lines; it must hold the secret alone, on one line")
    value = value.strip()
    if not value:
        raise ConfigError(f"secret file {path} is empty")
    return value


def read_secret(ref: str) -> Secret:
    """Read one secret; errors name the reference, never the content."""
    return Secret(_secret_text(secret_path(ref)))


def check_secret(ref: str) -> list[tuple[str, str]]:
    """(severity, message) pairs for one secret reference, without reading it into a log."""
    try:
        path = secret_path(ref)
    except ConfigError as exc:
        return [("warning", exc.message)]
    try:
        _secret_text(path)
        st = path.stat()
    except ConfigError as exc:
        return [("error", exc.message)]
    except OSError as exc:
        return [("error", f"secret file {path} cannot be reached ({exc.strerror})")]
    if st.st_mode & stat.S_IROTH:
        return [("warning", f"secret file {path} is readable by every user; chmod 600 it")]
    return []


def parse_toml(text: str, source: str = "config") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already says "(at line N, column M)".
        raise ConfigError(f"{source} is not valid TOML: {exc}", problems=[("", f"not valid TOML: {exc}")]) from None


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that owns the last key of ``loc``, for did-you-mean hints."""
    current: Any = Config
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return None
            current = info.annotation
        else:
            args = [a for a in typing.get_args(current) if a is not type(None)]
            current = args[-1] if args else None
        while typing.get_origin(current) in (typing.Union, types.UnionType):
            current = next(a for a in typing.get_args(current) if a is not type(None))
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


SECRET_KEYS = frozenset({"api_key", "client_id", "client_secret", "token", "event_type_secrets", "relay_token"})


def _secret_at(loc: tuple[int | str, ...], kind: str) -> bool:
    """Whether the value at ``loc`` may be a secret written inline: then it is never echoed."""
    return kind == INLINE_SECRET or any(part in SECRET_KEYS for part in loc)


def problems_from_validation(exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = dotted(loc)
        kind = err["type"]
        msg = err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            key = str(loc[-1])
            model = _model_at(loc)
            allowed = sorted(model.model_fields) if model else []
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" — did you mean '{close[0]}'?" if close else ""
            msg = f"unknown key '{key}'{hint}" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        elif kind == "missing":
            msg = "is required but missing"
        elif "input" in err and kind not in ("model_type", "dict_type") and not _secret_at(loc, kind):
            msg = f"{msg} (got {_short(err['input'])})"
        problems.append(Problem(path, msg))
    return problems


def secret_refs(config: Config) -> list[tuple[str, str]]:
    keys = ("api_key", "client_id", "client_secret", "relay_token")
    refs = [(f"engine.{k}", getattr(config.engine, k)) for k in keys]
    refs += [(f"engine.event_type_secrets.{k}", v) for k, v in config.engine.event_type_secrets.items()]
    refs.append(("api.token", config.api.token))
    refs.append(("customer_display.key", config.customer_display.key))
    return [(p, r) for p, r in refs if r is not None]


CHECK_THEN_BURN_RISK = (
    "check_then_burn only checks a voucher when it is scanned; it is burned when the till calls "
    "POST /v1/checkouts/{tx}/tender, which the till software must do before taking payment (a sale "
    "with an unburned voucher cannot complete). Until tender, the same voucher can be checked on "
    "another sale, and a burn refused at tender removes its discount. Use 'burn' unless the till "
    "software calls tender."
)


def validate(
    data: dict[str, Any], *, known_drivers: Collection[str] | None = None, check_secrets: bool = True
) -> Report[Config]:
    """Validate parsed TOML: every problem at once, never just the first."""
    report: Report[Config] = Report()
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        report.problems = problems_from_validation(exc)
        return report
    report.config = config
    if known_drivers is not None:
        sections: list[tuple[str, Sequence[ScannerConfig | PrinterConfig | DisplayConfig]]] = [
            ("scanners", config.scanners),
            ("printers", config.printers),
            ("displays", config.displays),
        ]
        for kind, devices in sections:
            for i, device in enumerate(devices):
                if device.driver not in known_drivers:
                    close = difflib.get_close_matches(device.driver, list(known_drivers), n=1)
                    hint = f" — did you mean '{close[0]}'?" if close else ""
                    report.problems.append(
                        Problem(
                            f"{kind}[{i}].driver",
                            f"no driver named '{device.driver}' is installed{hint} "
                            f"(installed: {', '.join(sorted(known_drivers)) or 'none'})",
                        )
                    )
    report.problems += _member_rule_problems(config, data)
    report.problems += _share_port_problems(config)
    if config.engine.dialect_file:
        report.problems += _dialect_file_problems(config.engine.dialect_file)
    if config.vouchers.mode == "check_then_burn":
        report.problems.append(Problem("vouchers.mode", CHECK_THEN_BURN_RISK, "warning"))
    if config.engine.ca_file and not Path(config.engine.ca_file).is_file():
        report.problems.append(Problem("engine.ca_file", f"{config.engine.ca_file} does not exist"))
    if check_secrets:
        for path, ref in secret_refs(config):
            for severity, message in check_secret(ref):
                report.problems.append(Problem(path, message, severity))
    return report


def _share_port_problems(config: Config) -> list[Problem]:
    """Each share port its own: not the API's port, not another printer's (one of the two would never listen)."""
    taken = {config.api.port: "the API's port (api.listen)"} if config.api.port else {}
    problems = []
    for i, printer in enumerate(config.printers):
        port = printer.share_port
        if port is None:
            continue
        if port in taken:
            problems.append(Problem(f"printers[{i}].share_port", f"{port} is already {taken[port]}; give each its own"))
        taken.setdefault(port, f"printers[{i}].share_port")
    return problems


def _dialect_file_problems(path: str) -> list[Problem]:
    """Missing: a warning (engine-check writes it later).  There but unreadable: an error, since the
    daemon would run trusting nothing about the engine, which check-config must not call valid."""
    from tillplug.engine.dialect import read_dialect_file

    if not os.path.lexists(path):
        return [
            Problem(
                "engine.dialect_file",
                f"{path} does not exist yet: run tillplug engine-check "
                "(until then tillplug trusts nothing it has not seen)",
                "warning",
            )
        ]
    try:
        read_dialect_file(path)
    except ConfigError as exc:
        # At start the engine client logs the same and trusts nothing about the engine (the safe answer):
        # a till keeps selling rather than restarting for ever.
        return [Problem("engine.dialect_file", exc.message.removeprefix("engine.dialect_file "), stops_start=False)]
    return []


def _member_rule_problems(config: Config, data: Mapping[str, Any]) -> list[Problem]:
    """Member rules whose codes WLL documents no look-up for (only the WLL id and account number).

    Refused for a real engine when the file sets them; a warning for the built-in default
    rules and for the simulator (which answers the undocumented list filter).
    """
    from tillplug.identifiers import undocumented_code

    barcodes = data.get("barcodes")
    configured = isinstance(barcodes, Mapping) and "member" in barcodes
    severity = "error" if configured and config.engine.preset != "simulator" else "warning"
    problems = []
    for i, rule in enumerate(config.barcodes.member):
        code = undocumented_code(rule)
        if code is not None:
            problems.append(
                Problem(
                    f"barcodes.member[{i}]",
                    f"yields codes such as {code!r}, which are neither a WLL member id nor a 7-digit account "
                    "number; WLL documents no member look-up by any other identifier (an authIdentifier "
                    "needs the undocumented GET /users/ filter, see tillplug engine-check)",
                    severity,
                )
            )
    return problems


def undotted(path: str) -> tuple[int | str, ...]:
    """The key path back from its spelling: "scanners[1].baudrate" is ("scanners", 1, "baudrate")."""
    return tuple(int(i) if i else k for k, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path))


def read_layers(path: str | os.PathLike[str]) -> Merged | list[Problem]:
    """The config file and its drop-ins merged, or every problem reading them (each naming its file)."""
    main = Path(path)
    if not main.is_file():
        return [Problem("", f"{main} does not exist" if not main.exists() else f"{main} is not a file")]
    files = [main, *drop_ins(main)]
    layered = len(files) > 1
    layers: list[tuple[str, dict[str, Any]]] = []
    problems: list[Problem] = []
    for file in files:
        source = str(file) if layered else None
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem("", f"{file} cannot be read ({type(exc).__name__})", source=source))
            continue
        try:
            layers.append((str(file), parse_toml(text, str(file))))
        except ConfigError as exc:
            problems += [Problem("", m, source=source) for _, m in exc.problems]
    if problems:
        return problems
    try:
        return merge(layers)
    except LayerError as exc:
        return [Problem(exc.path, exc.message, source=exc.source)]


def check_config(path: str | os.PathLike[str], *, known_drivers: Collection[str] | None = None) -> Report[Config]:
    """Validate ``path`` with the drop-ins of ``conf.d/`` beside it, merged (tillplug.config.layers)."""
    layers = read_layers(path)
    if isinstance(layers, list):
        return Report(problems=layers)
    report = validate(layers.data, known_drivers=known_drivers)
    report.layers = layers
    if len(layers.sources) > 1:  # one file: the summary line names it already
        report.problems = [replace(p, source=layers.source_of(undotted(p.path))) for p in report.problems]
    return report


def load_config(path: str | os.PathLike[str], *, known_drivers: Collection[str] | None = None) -> Config:
    """Load and validate; raise ConfigError listing every problem (warnings are not fatal)."""
    report = check_config(path, known_drivers=known_drivers)
    return loaded(path, report.config, report.errors)


def loaded(path: str | os.PathLike[str], config: LoadedT | None, errors: Iterable[Problem]) -> LoadedT:
    """The validated config, or a ConfigError listing every problem that stops a start (the till's
    config and the relay's alike)."""
    fatal = [p for p in errors if p.stops_start]
    if config is None or fatal:
        lines = [str(p) for p in fatal]
        raise ConfigError(
            f"{path} has {len(lines)} problem(s):\n  " + "\n  ".join(lines),
            problems=[(p.path, p.message) for p in fatal],
        )
    return config
