"""Enrolment mode: a till with no till_id or branch_id yet reads only its scanners, for a code.

The base layers (the image's ``tillplug.toml``, perhaps a chain layer) name the scanners and
printers but not who the till is.  ``tillplug run`` then starts here instead of the daemon: no API,
no engine, no events.  A scanned enrolment code signed by the chain's key (``tillplug.config.
enrolment``) gives the till and branch ids and the URL of the chain's config layer; the till
fetches that layer, writes ``conf.d/00-enrolment.toml`` and ``conf.d/10-chain.toml`` (and the
relay token, if any, to ``conf.d/relay-token``, mode 600, named by ``engine.relay_token`` in relay
mode), checks the merged config
and prints its enrolment slip; then the daemon starts as on any till.  A code refused (unsigned,
another chain's, expired, a layer that does not make a valid config) changes nothing: the till
says why on a slip and in the journal (never the code), and waits for the next scan.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from tillplug.config.enrolment import Enrolment, fingerprint, is_enrolment_code, load_public_keys, read_code
from tillplug.config.layers import DROP_IN_DIR
from tillplug.config.loader import Problem, check_config, parse_toml, read_layers
from tillplug.config.model import Config, EngineConfig, PrinterConfig, ScannerConfig
from tillplug.daemon import systemd
from tillplug.devices.registry import Registry, driver_names, load_drivers
from tillplug.devices.supervisor import SCANNERS_TRIED_WITHIN, Scan, ScannerSupervisor, all_tried
from tillplug.errors import ConfigError, EnrolmentRefused, TillplugError
from tillplug.receipts.layout import Block, Columns, Cut, Feed, Receipt, Rule, Text

log = logging.getLogger(__name__)

ENROLMENT_LAYER = "00-enrolment.toml"
CHAIN_LAYER = "10-chain.toml"
RELAY_TOKEN_FILE = "relay-token"
DEFAULT_KEY_FILE = "enrolment.pub"
MAX_LAYER_BYTES = 256 * 1024
FETCH_TIMEOUT = 15.0


@dataclass
class Unconfigured:
    """What a till waiting for enrolment has: its config file, the chain's keys, its devices."""

    config_path: Path
    key_file: Path
    keys: list[Ed25519PublicKey]
    scanners: list[ScannerConfig]
    printers: list[PrinterConfig]
    cache_dir: str


def unconfigured(config_path: str | os.PathLike[str]) -> Unconfigured | None:
    """The till's enrolment set-up if no layer says who it is; None for a configured till (or a
    config the loader should report)."""
    main = Path(config_path)
    layers = read_layers(main)
    if isinstance(layers, list):
        return None
    data = layers.data
    if "till_id" in data or "branch_id" in data:
        return None
    section = data.get("enrolment")
    configured_key = section.get("public_key") if isinstance(section, dict) else None
    key_file = Path(configured_key or main.parent / DEFAULT_KEY_FILE)
    keys = load_public_keys(key_file)
    if not keys:
        return None  # no way to enrol: the loader says till_id and branch_id are missing
    try:
        scanners = [ScannerConfig.model_validate(s) for s in data.get("scanners", [])]
        printers = [PrinterConfig.model_validate(p) for p in data.get("printers", [])]
    except ValidationError as exc:
        raise ConfigError(f"{main}: a scanner or printer is not valid, so enrolment cannot start: {exc}") from None
    if not scanners:
        raise ConfigError(f"{main} names no till_id and no scanner: an enrolment code could never be scanned")
    cache_dir = str(data.get("cache_dir", "/var/cache/tillplug"))
    return Unconfigured(main, key_file, keys, scanners, printers, cache_dir)


def fetch_layer(url: str) -> str:
    """The chain's config layer: a file the image carries, or https with the certificate verified."""
    if url.startswith("file://"):
        path = Path(urlsplit(url).path)
        try:
            raw = path.read_bytes()[: MAX_LAYER_BYTES + 1]
        except OSError as exc:
            raise EnrolmentRefused(f"the chain's config layer {path} cannot be read ({exc.strerror})") from None
    else:
        import httpx

        host = urlsplit(url).hostname
        try:
            answer = httpx.get(url, timeout=FETCH_TIMEOUT, follow_redirects=False)  # TLS verified (httpx default)
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            raise EnrolmentRefused(
                f"the chain's config layer could not be fetched from {host} ({type(exc).__name__})"
            ) from None
        raw = answer.content[: MAX_LAYER_BYTES + 1]
    if len(raw) > MAX_LAYER_BYTES:
        raise EnrolmentRefused(f"the chain's config layer is larger than {MAX_LAYER_BYTES // 1024} KiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EnrolmentRefused("the chain's config layer is not UTF-8 text") from None


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    partial = path.with_name(f".{path.name}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        partial.replace(path)
    except OSError:
        partial.unlink(missing_ok=True)
        raise


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def apply(setup: Unconfigured, enrolment: Enrolment) -> Config:
    """Write the till's layers from ``enrolment``; the merged config, or EnrolmentRefused with
    every file as it was."""
    layer = fetch_layer(enrolment.config_url)
    try:
        chain = parse_toml(layer, "the chain's config layer")
    except ConfigError as exc:
        raise EnrolmentRefused(exc.message) from None
    for key in ("till_id", "branch_id"):
        if key in chain:
            raise EnrolmentRefused(f"the chain's config layer sets {key}: only the enrolment code says who a till is")
    folder = setup.config_path.parent / DROP_IN_DIR
    try:
        folder.mkdir(mode=0o755, exist_ok=True)
    except OSError as exc:
        raise EnrolmentRefused(f"cannot make {folder} ({exc.strerror}): the service needs it for enrolment") from None
    ours = {
        folder / ENROLMENT_LAYER: (
            "# Written by enrolment at the till (tillplug run); the code said who this till is.\n"
            f"till_id = {_toml_string(enrolment.till_id)}\nbranch_id = {_toml_string(enrolment.branch_id)}\n\n"
            f"[enrolment]\nconfig_url = {_toml_string(enrolment.config_url)}\n",
            0o644,
        ),
        folder / CHAIN_LAYER: (layer, 0o644),
    }
    if enrolment.relay_token is not None:
        token_file = folder / RELAY_TOKEN_FILE  # not *.toml: never read as a layer
        ours[token_file] = (enrolment.relay_token.reveal() + "\n", 0o600)
        if "relay_token" in EngineConfig.model_fields:  # relay mode (docs/relay.md): the till's engine names it
            text, mode = ours[folder / ENROLMENT_LAYER]
            ours[folder / ENROLMENT_LAYER] = (
                f"{text}\n[engine]\nrelay_token = {_toml_string(str(token_file))}\n",
                mode,
            )
    before: dict[Path, bytes | None] = {}  # each file as it was, to put back
    try:
        for path, (text, mode) in ours.items():
            before[path] = path.read_bytes() if path.exists() else None
            _write(path, text, mode)
    except OSError as exc:
        _restore(before)
        raise EnrolmentRefused(
            f"cannot write {folder} ({exc.strerror}): the service needs it writable for enrolment "
            "(ops/enrolment/tillplug.service.d/20-enrolment.conf)"
        ) from None
    report = check_config(setup.config_path, known_drivers=driver_names())
    fatal = [p for p in report.errors if p.stops_start]
    if report.config is None or fatal:
        _restore(before)  # as it was: the till waits for a code that works
        raise EnrolmentRefused("with the chain's layer the config is not valid: " + _first(fatal or report.problems))
    return report.config


def _restore(before: dict[Path, bytes | None]) -> None:
    for path, old in before.items():
        with contextlib.suppress(OSError):  # best effort: what could not be written was not written
            if old is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(old)


def _first(problems: list[Problem]) -> str:
    return "; ".join(str(p) for p in problems[:3]) or "no config"


# -- the slip -------------------------------------------------------------------------------------


def enrolled_slip(config: Config, enrolment: Enrolment, key: str) -> Receipt:
    source = urlsplit(enrolment.config_url)
    blocks: list[Block] = [
        Text("Enrolled", double=True, align="center"),
        Rule(),
        Columns("Till", config.till_id),
        Columns("Branch", config.branch_id),
        Columns("Config from", source.hostname or source.path),
        Columns("Chain key", key),
        Columns("Relay token", "stored" if enrolment.relay_token else "none"),
        Columns("Code valid until", time.strftime("%Y-%m-%d", time.gmtime(enrolment.expires))),
        Columns("Scanners", str(len(config.scanners))),
        Columns("Printers", str(len(config.printers))),
        Rule(),
        Text(time.strftime("%Y-%m-%d %H:%M:%S")),
        Feed(1),
        Cut(),
    ]
    return Receipt("enrolment", blocks)


def refused_slip(reason: str) -> Receipt:
    blocks: list[Block] = [
        Text("Enrolment refused", double=True, align="center"),
        Rule(),
        Text(reason),
        Rule(),
        Text("This till is not enrolled yet; scan a code signed by your chain."),
        Text(time.strftime("%Y-%m-%d %H:%M:%S")),
        Feed(1),
        Cut(),
    ]
    return Receipt("enrolment", blocks)


def print_slip(printers: list[PrinterConfig], lane: int, receipt: Receipt, cache_dir: str, registry: Registry) -> bool:
    """Print on the scanning lane's printer (else the first); False when there is none or it failed."""
    from tillplug.spool import JobState, PrinterLink

    printer = next((p for p in printers if p.lane == lane), printers[0] if printers else None)
    if printer is None:
        return False
    try:
        driver = registry.get(printer.driver)(printer, cache_dir)
        link = PrinterLink(driver)
        try:
            _, outcome = link.print_job(driver.render(receipt))
        finally:
            link.close()
    except TillplugError as exc:
        log.warning("enrolment slip not printed on %s: %s", printer.name, exc.message)
        return False
    return outcome.state in (JobState.PRINTED, JobState.SENT)


# -- the mode ---------------------------------------------------------------------------------------


def wait_for_enrolment(
    setup: Unconfigured,
    *,
    stop: threading.Event | None = None,
    registry: Registry | None = None,
    on_refused: Callable[[str], None] = lambda reason: None,
) -> Config | None:
    """Read the scanners until a code enrols this till; its config (None: stopped first)."""
    registry = registry or load_drivers()
    stop = stop or threading.Event()
    scans: queue.Queue[Scan] = queue.Queue(maxsize=64)
    supervisors: dict[str, ScannerSupervisor] = {}
    for cfg in setup.scanners:
        try:
            supervisor = ScannerSupervisor(cfg, registry.get(cfg.driver), _offer(scans))
        except TillplugError as exc:
            log.error("enrolment: scanner %s: %s", cfg.name, exc.message)
            continue
        supervisor.start()
        supervisors[cfg.name] = supervisor
    deadline = time.monotonic() + SCANNERS_TRIED_WITHIN
    while not all_tried(supervisors.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    keys = ", ".join(fingerprint(k) for k in setup.keys)
    log.warning("not enrolled: waiting for an enrolment code at the scanners (chain key %s)", keys)
    # Ready as far as systemd is concerned (so it neither times the start out nor restarts it), and alive.
    systemd.notify("READY=1\nSTATUS=waiting for an enrolment code at the scanners")
    watchdog = systemd.watchdog_interval()
    try:
        while not stop.is_set():
            if watchdog:
                systemd.notify("WATCHDOG=1")
            try:
                scan = scans.get(timeout=0.2)
            except queue.Empty:
                continue
            config = _try(setup, scan, registry, on_refused)
            _feedback(supervisors.get(scan.device), good=config is not None)
            if config is not None:
                systemd.notify("STATUS=enrolled; starting")
                return config
        return None
    finally:
        for supervisor in supervisors.values():
            supervisor.stop()


def _feedback(supervisor: ScannerSupervisor | None, *, good: bool) -> None:
    """The scanner's own beep or light, if its config sets one (as for loyalty scans)."""
    if supervisor is None:
        return
    command = supervisor.config.feedback_good if good else supervisor.config.feedback_bad
    if command:
        supervisor.send_to_scanner(bytes.fromhex(command))


def _offer(scans: queue.Queue[Scan]) -> Callable[[Scan], None]:
    def on_scan(scan: Scan) -> None:
        if scan.text and not scan.continuation:
            with contextlib.suppress(queue.Full):  # a scanner gone mad: later scans still get through
                scans.put_nowait(scan)

    return on_scan


def _try(setup: Unconfigured, scan: Scan, registry: Registry, on_refused: Callable[[str], None]) -> Config | None:
    if not is_enrolment_code(scan.text):
        log.info("enrolment mode: a scan on %s was not an enrolment code; ignored", scan.device)
        return None
    try:
        enrolment = read_code(scan.text, setup.keys)  # the code is masked in every log line from here
        config = apply(setup, enrolment)
    except EnrolmentRefused as exc:
        log.warning("enrolment code scanned on %s refused: %s", scan.device, exc.message)
        on_refused(exc.message)
        print_slip(setup.printers, scan.lane, refused_slip(exc.message), setup.cache_dir, registry)
        return None
    key = fingerprint(setup.keys[0])
    log.warning("enrolled as till %s of branch %s (chain key %s)", config.till_id, config.branch_id, key)
    printed = print_slip(config.printers, scan.lane, enrolled_slip(config, enrolment, key), setup.cache_dir, registry)
    if not printed:
        log.warning("the enrolment slip could not be printed (no printer on lane %d)", scan.lane)
    return config


def enrol_if_needed(config_path: str) -> None:
    """Before the daemon starts: enrolment mode if the till is not configured yet."""
    setup = unconfigured(config_path)
    if setup is not None:
        wait_for_enrolment(setup)
