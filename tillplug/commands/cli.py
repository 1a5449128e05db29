"""The ``tillplug`` command.

Exit codes: 0 success; 1 a runtime failure (device, engine) or, for status and
doctor, a problem found; 2 bad usage or an invalid config.  ready-to-restart: 0 safe,
1 not safe, 2 cannot tell.
Heavy imports happen inside each command so that ``--help`` and
``check-config`` stay instant on a small till.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tillplug import __version__

if TYPE_CHECKING:  # kept out of the start-up path: --help and --version import nothing heavy
    from tillplug.config.layers import Merged
    from tillplug.config.model import Config
    from tillplug.outbox.store import OutboxStore, Row

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = "/etc/tillplug/tillplug.toml"


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()  # live commands (sniff, outbox drain) are read through pipes and tee


def _err(text: str) -> None:
    sys.stderr.write(text if text.endswith("\n") else text + "\n")


def cmd_check_config(args: argparse.Namespace) -> int:
    from tillplug.config import check_config
    from tillplug.devices.registry import driver_names

    report = check_config(args.file, known_drivers=driver_names())
    if report.config is not None:  # paper settings that disagree with the printer's profile
        from tillplug.config.loader import Problem
        from tillplug.receipts.paper import layout_warnings

        for i, printer in enumerate(report.config.printers):
            if printer.driver == "escpos":
                report.problems += [Problem(f"printers[{i}]", w, "warning") for w in layout_warnings(printer)]
    for problem in report.problems:
        _out(str(problem))
    errors, warnings = len(report.errors), len(report.warnings)
    if report.ok and args.explain and report.config is not None and report.layers is not None:
        _explain(report.config, report.layers)
    if report.ok:
        layers = report.layers.sources[1:] if report.layers else []
        also = f" with {len(layers)} drop-in(s)" if layers else ""
        _out(f"{args.file}{also}: valid ({warnings} warning(s))")
        return EXIT_OK
    _out(f"{args.file}: {errors} error(s), {warnings} warning(s)")
    return EXIT_USAGE


def _explain(config: Config, layers: Merged) -> None:
    """Each value of the merged config, and the file it came from ('(default)': set in none)."""
    from tillplug.config.layers import explain

    rows = [
        (path, json.dumps(value, ensure_ascii=False), source)
        for path, value, source in explain(config.model_dump(mode="json"), layers)
    ]
    width = min(max(len(path) + len(value) for path, value, _ in rows) + 3, 56)  # long lists overrun alone
    for path, value, source in rows:
        _out(f"{path} = {value}".ljust(width) + f"  # {source}")


def cmd_config(args: argparse.Namespace) -> int:
    if args.what == "example":
        from tillplug.config import example_text

        _out(example_text())
    else:
        from tillplug.config import Config

        schema = Config.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = "tillplug config file"
        _out(json.dumps(schema, indent=2))
    return EXIT_OK


def cmd_relay(args: argparse.Namespace) -> int:
    """``tillplug relay ...``: the relay room does the work (it alone imports psycopg)."""
    from tillplug.relay.cli import relay_command

    return relay_command(args)


def cmd_sim(args: argparse.Namespace) -> int:
    from tillplug.sim import serve

    try:
        serve(args.port, args.seed, rate=args.rate, burst=args.burst, dialect=args.dialect)
    except OSError as exc:
        _err(f"tillplug sim: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}")
        return EXIT_FAILURE
    except (ValueError, KeyError) as exc:
        _err(f"tillplug sim: the seed file is not valid: {exc}")
        return EXIT_USAGE
    return EXIT_OK


def _load(path: str) -> Config | None:
    """The validated config, or None after printing every problem (the caller exits 2)."""
    from tillplug.config import load_config
    from tillplug.devices.registry import driver_names
    from tillplug.errors import ConfigError

    try:
        return load_config(path, known_drivers=driver_names())
    except ConfigError as exc:
        _err(exc.message)
        return None


# Outbox commands that write: they must hold the state lock (stats and list only read).
OUTBOX_WRITES = ("retry", "discard", "drain")


def outbox_path(config: Config) -> str:
    return str(config.state_dir / "outbox.sqlite3")


def cmd_outbox(args: argparse.Namespace) -> int:
    from tillplug.daemon.statelock import StateLock
    from tillplug.errors import StateDirLocked, StorageError
    from tillplug.outbox.store import open_store

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    lock = StateLock(config.state_dir)
    if args.action in OUTBOX_WRITES:  # beside a running daemon these would race its own writes
        try:
            lock.acquire()
        except StateDirLocked as exc:
            _err(f"tillplug outbox {args.action}: {exc.message}")
            return EXIT_FAILURE
    try:
        store = open_store(outbox_path(config))
    except StorageError as exc:
        _err(f"tillplug outbox: {exc.message}")
        return EXIT_FAILURE
    try:
        return _outbox_action(args, config, store)
    finally:
        store.close()
        lock.release()


def _outbox_action(args: argparse.Namespace, config: Config, store: OutboxStore) -> int:
    if args.action == "stats":
        stats = store.stats()
        _out(
            json.dumps(stats.to_dict(), indent=2)
            if args.json
            else f"pending {stats.pending}  sending {stats.sending}  delivered {stats.delivered}  "
            f"dead {stats.dead}  discarded {stats.discarded}  oldest {stats.oldest_pending_age:.0f}s"
        )
    elif args.action == "list":
        rows = store.rows(args.state)
        if args.json:
            _out(json.dumps([r.summary() for r in rows], indent=2))
        for r in rows if not args.json else []:
            _out(
                f"{r.id:>6}  {r.state:<9} {r.body.get('type', r.kind):<16} tries {r.attempts:<3} "
                f"{r.event_key}  {r.last_error or ''} {r.note or ''}".rstrip()
            )
    elif args.action == "retry":
        return _outbox_retry(store, args.id, resend_unverified=args.resend_unverified)
    elif args.action == "discard":
        decision = store.discard(args.id, args.reason)
        if not decision.done:
            _err(_outbox_refusal(args.id, decision.row, "discard"))
            return EXIT_FAILURE
        assert decision.row is not None
        _out(f"row {args.id} discarded: {args.reason}")
        if decision.row.state == "sending" or decision.row.needs_lookup or decision.row.unverifiable:
            _out(
                f"  it may have reached the engine (eventKey {decision.row.event_key}): if it is not in the "
                "Loyalty Console, the member's points must be put right there"
            )
    elif args.action == "drain":
        return _drain(config, store, args.timeout)
    return EXIT_OK


def _outbox_refusal(row_id: int, row: Row | None, action: str) -> str:
    """Why ``retry`` or ``discard`` left a row as it was, in a technician's words."""
    if row is None:
        return f"no outbox row {row_id} (see `tillplug outbox list`)"
    if row.state == "delivered":
        landed = f" as {row.engine_id}" if row.engine_id else ""
        return f"row {row_id} was delivered to the engine{landed}; there is nothing to {action}"
    if row.state == "discarded":
        return f"row {row_id} was already discarded ({row.note or 'no reason kept'}); it is never sent again"
    return (
        f"row {row_id} is not unverifiable, so --resend-unverified does not apply; "
        f"`tillplug outbox retry {row_id}` tries it again (looked up first where needed)"
    )


def _outbox_retry(store: OutboxStore, row_id: int, *, resend_unverified: bool) -> int:
    decision = store.retry(row_id, resend_unverified=resend_unverified)
    row = decision.row
    if not decision.done or row is None:
        _err(_outbox_refusal(row_id, row, "retry"))
        return EXIT_FAILURE
    reverses = f" and the write it reverses (eventKey {row.requires_key})" if row.requires_key else ""
    if resend_unverified:
        warning = (
            f"WARNING: row {row_id} will be sent without asking the engine first. If the engine already has "
            f"eventKey {row.event_key}, it counts the member's points twice."
        )
        if row.requires_key:
            warning += f" If it does not have eventKey {row.requires_key}, this reversal moves points never counted."
        _err(warning)
        _out(f"row {row_id} will be sent again now, unverified")
    elif row.unverifiable:
        _out(
            f"row {row_id} is unverifiable: the engine's look-up cannot tell whether it has eventKey "
            f"{row.event_key}{reverses}. It will be looked up again now, never resent blindly.\n"
            f"  If it stays unverifiable, look for that eventKey in the Loyalty Console, then either\n"
            f"    tillplug outbox discard {row_id} --reason 'in the engine'   (it is there), or\n"
            f"    tillplug outbox retry {row_id} --resend-unverified          (it is not; "
            "the engine counts it twice if it was there after all)"
        )
    elif row.state == "sending":
        _out(f"row {row_id} was interrupted mid-send; it will be looked up in the engine now and sent only if missing")
    else:
        _out(f"row {row_id} will be tried again now")
    return EXIT_OK


def _drain(config: Config, store: OutboxStore, timeout: float) -> int:
    import asyncio

    from tillplug.engine import EngineClient, load_secrets
    from tillplug.outbox import Deliverer

    async def go() -> bool:
        token_path = config.state_dir / "engine-token.json"  # the daemon's cached token, not a new one
        async with EngineClient(config.engine, load_secrets(config.engine), token_path=token_path) as client:
            deliverer = Deliverer(store, client, rate=config.outbox.rate_per_second, burst=config.outbox.burst)
            return await deliverer.drain(timeout)

    empty = asyncio.run(go())
    stats = store.stats()
    held = f", unverifiable {stats.unverifiable} (see tillplug engine-check)" if stats.unverifiable else ""
    _out(f"delivered {stats.delivered}, pending {stats.depth}, dead {stats.dead}{held}")
    return EXIT_OK if empty else EXIT_FAILURE


def cmd_run(args: argparse.Namespace) -> int:
    # Start-up builds objects that live as long as the daemon: collecting cycles among them while they
    # are built is wasted work (about 0.1 s).  The daemon turns the collector back on at READY=1.
    gc.disable()
    from tillplug.daemon.wiring import run_daemon
    from tillplug.errors import ConfigError, TillplugError

    try:
        return run_daemon(args.config)
    except ConfigError as exc:
        _err(exc.message)
        return EXIT_USAGE
    except TillplugError as exc:
        _err(f"tillplug: {exc.message}")
        return EXIT_FAILURE
    except OSError as exc:
        _err(f"tillplug: {exc}")
        return EXIT_FAILURE


def cmd_display_url(args: argparse.Namespace) -> int:
    """The address each lane's customer display opens, with its read-only key."""
    from tillplug.config import load_config, read_secret
    from tillplug.display.page import DisplayPages
    from tillplug.errors import ConfigError
    from tillplug.receipts.templates import SlipContext

    try:
        cfg = load_config(args.config)
        ref = cfg.customer_display.key or cfg.api.token
        secret = read_secret(ref).reveal() if ref else None
    except ConfigError as exc:
        _err(exc.message)
        return EXIT_USAGE
    pages = DisplayPages(secret, SlipContext.from_config(cfg), cfg.customer_display.idle_text)
    host = cfg.api.host if cfg.api.host not in ("0.0.0.0", "::") else "TILL-ADDRESS"
    base = args.base or f"http://{'[' + host + ']' if ':' in host else host}:{cfg.api.port}"
    lanes = (
        [args.lane]
        if args.lane
        else sorted({d.lane for group in (cfg.scanners, cfg.printers, cfg.displays) for d in group})
    )
    for lane in lanes or [1]:
        _out(pages.url(base, lane))
    return EXIT_OK


def cmd_preview(args: argparse.Namespace) -> int:
    from tillplug.receipts.preview import interpret, render_png

    try:
        data = open(args.file, "rb").read()  # noqa: SIM115
    except OSError as exc:
        _err(f"tillplug preview: cannot read {args.file}: {exc.strerror}")
        return EXIT_USAGE
    preview = interpret(data)
    if args.text or not args.png:
        _out(preview.text(args.columns))
    if args.png:
        from tillplug.receipts.paper import dots_for_columns

        render_png(preview, args.png, columns=args.columns, width_px=dots_for_columns(args.columns))
        _err(f"wrote {args.png}")
    for offset, hexbytes in preview.unknown:
        _err(f"not understood at byte {offset}: {hexbytes}")
    return EXIT_OK


def cmd_test_print(args: argparse.Namespace) -> int:
    from tillplug.devices.registry import load_drivers
    from tillplug.errors import TillplugError
    from tillplug.receipts import templates
    from tillplug.spool import JobState, PrinterLink

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    printer = next((p for p in config.printers if p.name == args.printer), None)
    if printer is None:
        _err(
            f"no printer named {args.printer!r} in {args.config} "
            f"(configured: {', '.join(p.name for p in config.printers) or 'none'})"
        )
        return EXIT_USAGE
    ctx = templates.SlipContext.from_config(config)
    try:
        driver = load_drivers().get(printer.driver)(printer, str(config.cache_dir))
        page = templates.test_page(
            ctx, printer.name, printer.profile, getattr(driver, "columns", 0), getattr(driver, "code_page", "-")
        )
        link = PrinterLink(driver)
        try:
            status, outcome = link.print_job(driver.render(page))
        finally:
            link.close()
    except TillplugError as exc:
        _err(f"tillplug test-print: {exc.message}")
        return EXIT_FAILURE
    said = f"{status.state.value} {status.reason}".strip()
    if outcome.state in (JobState.PRINTED, JobState.SENT):
        _out(f"test page {outcome.state.value} to {printer.name}; printer status: {said}")
        return EXIT_OK
    _err(f"tillplug test-print: test page {outcome.state.value} on {printer.name}: {outcome.reason}")
    return EXIT_FAILURE


def cmd_devices(args: argparse.Namespace) -> int:
    from tillplug.devices.known import lookup
    from tillplug.devices.registry import load_drivers

    registry = load_drivers()
    ports: list[dict[str, Any]] = []
    for cls in registry.drivers.values():
        if hasattr(cls, "discover"):
            ports.extend(cls.discover())
    if args.json:
        _out(json.dumps(ports, indent=2, default=str))
        return EXIT_OK
    keyboards = [p for p in ports if p.get("input")]
    ports = [p for p in ports if not p.get("input")]
    if not ports:
        _out("no serial ports found")
    for i, port in enumerate(ports):
        known = lookup(port.get("vid"), port.get("pid"))
        ids = f"{port['vid']:04x}:{port['pid']:04x}" if port.get("vid") is not None else "-"
        guess = f"{known.vendor} {known.model} ({known.kind})" if known else "unknown device"
        _out(f"{port['device']}  USB {ids}  serial {port.get('serial') or '-'}  {guess}")
        if port.get("by_id"):
            _out(f"    by-id: {port['by_id']}")
        path = port.get("by_id") or port["device"]
        if known is None or known.kind in ("scanner", "bridge"):
            _out(f'    [[scanners]]\n    name = "scanner{i}"\n    port = "{path}"\n    baudrate = 9600')
        if known is not None and known.kind in ("printer", "bridge"):
            _out(f'    [[printers]]\n    name = "printer{i}"\n    connection = "serial://{path}"')
    _list_keyboards(keyboards, first=len(ports), hid_driver="hid-scanner" in registry.drivers)
    for name, why in registry.broken.items():
        _err(f"driver {name} did not load: {why}")
    return EXIT_OK


def _list_keyboards(keyboards: list[dict[str, Any]], *, first: int, hid_driver: bool) -> None:
    """Input devices that type: keyboard-mode scanners (known ones get a config snippet) and keyboards."""
    from tillplug.devices.known import lookup

    if not hid_driver:
        _out("keyboard-mode scanners: not listed (the hid-scanner driver needs pip install 'tillplug[hid]')")
        return
    for i, kbd in enumerate(keyboards, start=first):
        known = lookup(kbd.get("vid"), kbd.get("pid"))
        ids = f"{kbd['vid']:04x}:{kbd['pid']:04x}" if kbd.get("vid") is not None else "-"
        scanner = known is not None and known.driver == "hid-scanner"
        guess = f"{known.vendor} {known.model}" if scanner and known else "a keyboard, or a scanner in keyboard mode"
        _out(f"{kbd['device']}  USB {ids}  serial {kbd.get('serial') or '-'}  {kbd.get('name')!r}: {guess}")
        if kbd.get("by_id"):
            _out(f"    by-id: {kbd['by_id']}")
        if scanner:
            path = kbd.get("by_id") or kbd["device"]
            _out(
                f'    [[scanners]]\n    name = "scanner{i}"\n    driver = "hid-scanner"\n    port = "{path}"\n'
                '    layout = "us"   # the keyboard layout the scanner is set to: us gb de fr be es it nl'
            )


def cmd_demo(args: argparse.Namespace) -> int:
    from tillplug.commands import demo

    if args.interactive:
        return demo.interactive(args.out)
    return demo.run(args.out)


def cmd_install(args: argparse.Namespace) -> int:
    from tillplug.commands import install as service

    if args.print_rules:
        _out(service.udev_rules())
        return EXIT_OK
    if args.print_unit:
        _out(service.unit())
        return EXIT_OK
    try:
        return service.install(args.root, dry_run=args.dry_run, out=_out)
    except (OSError, RuntimeError) as exc:
        _err(f"tillplug install: {exc}")
        return EXIT_FAILURE


def cmd_doctor(args: argparse.Namespace) -> int:
    from tillplug.commands.doctor import FAIL, Doctor, read_test_scan, write_layout_code

    if args.layout_code:
        write_layout_code(args.layout_code)
        _out(
            f"wrote {args.layout_code}: scan it with `tillplug doctor --scan-test` to check a keyboard scanner's layout"
        )
        return EXIT_OK
    doctor = Doctor(args.config, root=args.root)
    if args.scan_test:
        doctor.scan_test = lambda cfg: read_test_scan(cfg, out=_out)
    findings = doctor.run(engine=not args.offline, printers=not args.offline)
    for finding in findings:
        _out(str(finding))
    failed = sum(f.verdict == FAIL for f in findings)
    _out(f"{failed} problem(s) found" if failed else "no problems found")
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_diag(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tillplug.commands.diag import write_bundle

    try:
        names = write_bundle(args.config, Path(args.out))
    except OSError as exc:
        _err(f"tillplug diag: cannot write {args.out}: {exc.strerror or exc}")
        return EXIT_FAILURE
    _out(f"wrote {args.out}: {', '.join(names)} (secrets and member ids masked; attach it to the ticket)")
    return EXIT_OK


def cmd_enrol(args: argparse.Namespace) -> int:
    """The chain's side of enrolment: a key pair once, then one signed code per till."""
    import os
    from pathlib import Path

    from tillplug.config.enrolment import fingerprint, load_private_key, make_code, new_key
    from tillplug.config.loader import read_secret
    from tillplug.errors import ConfigError

    if args.action == "keygen":
        private, public = new_key()
        key, pub = Path(args.out + ".key"), Path(args.out + ".pub")
        if key.exists() or pub.exists():
            _err(f"tillplug enrol keygen: {key} or {pub} exists already; a chain's key is never overwritten")
            return EXIT_USAGE
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        pub.write_bytes(public)
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        print_key = fingerprint(load_pem_public_key(public))  # type: ignore[arg-type]
        _out(f"wrote {key} (keep it off the tills) and {pub} (ship it as enrolment.pub); key {print_key}")
        return EXIT_OK
    try:
        relay = read_secret(args.relay_token_file).reveal() if args.relay_token_file else None
        code = make_code(
            load_private_key(Path(args.key)),
            till_id=args.till,
            branch_id=args.branch,
            config_url=args.config_url,
            relay_token=relay,
            valid_days=args.valid_days,
        )
    except ConfigError as exc:
        _err(f"tillplug enrol make-code: {exc.message}")
        return EXIT_USAGE
    if args.png:
        import qrcode

        qrcode.make(code).save(args.png)
        _out(f"wrote {args.png}: a QR code for till {args.till} of branch {args.branch}, to scan at the till")
    else:
        _out(code)
    return EXIT_OK


def cmd_engine_check(args: argparse.Namespace) -> int:
    """How this engine answers where WLL publishes nothing; the answers go to engine.dialect_file."""
    import asyncio

    from tillplug.barcodes.classify import Classifier, ScanKind
    from tillplug.commands.engine_check import Report, engine_check, evidence_with_time, table
    from tillplug.engine import EngineClient, load_secrets
    from tillplug.engine.dialect import EngineDialect, write_dialect_file
    from tillplug.errors import TillplugError

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    if config.engine.relay_mode:  # the relay talks to the engine; its technician runs engine-check there
        _out("engine-check: this till talks to the chain relay; run engine-check with the relay's engine settings")
        return EXIT_USAGE
    classified = Classifier(config.barcodes).classify(args.card)
    card = classified.code if classified.kind is ScanKind.MEMBER else args.card.strip()
    out = args.out or config.engine.dialect_file

    async def go() -> Report:
        # No dialect assumed: this is what finds it out (and the file may not exist yet).
        async with EngineClient(config.engine, load_secrets(config.engine), dialect=EngineDialect()) as client:
            return await engine_check(
                client,
                card,
                event_types=config.engine.event_types,
                write=args.yes,
                till_id=config.till_id,
                branch_id=config.branch_id,
            )

    try:
        report = asyncio.run(go())
    except TillplugError as exc:
        _err(f"tillplug engine-check: {exc.code}: {exc.message}")
        return EXIT_FAILURE
    for line in table(report):
        _out(line)
    if args.yes:
        outcome = "net zero" if report.net_zero else "NOT CONFIRMED - check the member's balance"
        _out(f"test spend of 1 point and its refund: {outcome}")
        if report.answers.get("duplicate_event_key") == "accepted":
            _out(
                "warning: the engine took the same event twice (same eventKey); the second point was "
                "refunded too. Both test spends and refunds show in the Loyalty Console."
            )
    else:
        _out("no write was made; --yes adds a 1-point spend and its refund (settles reactions and write bodies)")
    if out:
        write_dialect_file(out, report.dialect(), evidence_with_time(report), test_member=report.test_member)
        _out(
            f"answers written to {out}"
            + ("" if config.engine.dialect_file == out else " (set engine.dialect_file to use them)")
        )
    else:
        _out("set engine.dialect_file (or pass --out) to keep these answers for the daemon")
    return EXIT_OK if report.net_zero is not False else EXIT_FAILURE


def _status_failure(args: argparse.Namespace, url: str, status: str, exc: Exception, sentence: str) -> int:
    """Why there is no health to show: a sentence for people, one JSON object on stdout for scripts."""
    if args.json:
        _out(json.dumps({"status": status, "url": url, "error": type(exc).__name__}, indent=2))
    _err(f"{sentence} ({type(exc).__name__})" if status == "not_tillplug" else sentence)
    return EXIT_FAILURE


def cmd_status(args: argparse.Namespace) -> int:
    import httpx

    from tillplug.config import read_secret
    from tillplug.errors import ConfigError

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    try:
        token = read_secret(config.api.token).reveal() if config.api.token else None
    except ConfigError as exc:
        _err(exc.message)
        return EXIT_USAGE
    host = config.api.host if config.api.host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{config.api.port}/v1/health"
    try:
        r = httpx.get(url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=5)
        health = r.json()
        health["status"]  # an answer without it is not tillplug's health
    except httpx.ConnectError as exc:
        return _status_failure(
            args,
            url,
            "not_running",
            exc,
            f"tillplug is not running: nothing listens on {url} (systemctl status tillplug)",
        )
    except httpx.TimeoutException as exc:
        return _status_failure(
            args,
            url,
            "not_answering",
            exc,
            f"tillplug is running but not answering on {url} within 5 s: its event loop may be stuck "
            "(journalctl -u tillplug; systemctl restart tillplug)",
        )
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        return _status_failure(
            args, url, "not_tillplug", exc, f"something on {url} answered, but not with tillplug's health"
        )
    if args.json:
        _out(json.dumps(health, indent=2))
    else:
        _out(f"tillplug {health['version']}  till {health['tillId']}  status {health['status']}")
        for problem in health.get("problems", []):
            _out(f"  problem {problem['code']}: {problem['message']}")
        for d in health["devices"]:
            paper = f"  paper {d['paper']['state']} {d['paper']['reason']}".rstrip() if "paper" in d else ""
            _out(f"  {d['kind']:<8}{d['name']:<16}{d['state']:<11}{d['reason']}{paper}")
            if "tillPort" in d:
                t = d["tillPort"]
                _out(
                    f"          till side {t['path']}: {'open' if t['tillHasItOpen'] else 'NOT open'} "
                    f"({t['passed']} passed, {t['dropped']} dropped)"
                )
        e = health["engine"]
        _out(
            f"  engine  {'reachable' if e['reachable'] else 'NOT reachable'}"
            + (f"  last error {e['lastError']['error']} on {e['lastError']['endpoint']}" if e["lastError"] else "")
        )
        o = health["outbox"]
        _out(
            f"  outbox  {o['depth']} waiting (oldest {o['oldest_pending_age']:.0f} s), {o['dead']} dead"
            + ("  OVER LIMIT" if o["overLimit"] else "")
        )
    return EXIT_OK if health["status"] == "ok" else EXIT_FAILURE


def cmd_ready_to_restart(args: argparse.Namespace) -> int:
    from tillplug.commands.restart import EXIT_CANNOT_TELL, ask

    config = _load(args.config)
    if config is None:
        return EXIT_CANNOT_TELL
    verdict = ask(config)
    _out(verdict.line)
    return verdict.code


def cmd_restart_when_ready(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tillplug.commands.restart import RestartPlan, restart_when_ready

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    plan = RestartPlan(
        within=args.within,
        every=args.every,
        start_within=args.start_within,
        unit=args.unit,
        expect=args.expect,
        root=Path(args.root),
    )
    return restart_when_ready(config, plan)


def cmd_sniff(args: argparse.Namespace) -> int:
    import time

    if args.port.startswith(("/dev/input/", "usb://")) or "hid-scanner" in args.port:
        return _sniff_keyboard(args)

    from tillplug.errors import DeviceError

    opened = _open_sniffed(args, "serial-scanner", dict(baudrate=args.baudrate, terminator="none"))
    if isinstance(opened, int):
        return opened
    driver, route = opened
    _out(f"listening on {args.port} at {args.baudrate} baud for {args.seconds:g} s (read only); scan something…")
    seen = bytearray()
    start = time.monotonic()
    try:
        while time.monotonic() - start < args.seconds:
            chunk = driver.read()
            if not chunk:
                continue
            while more := driver.read():  # one burst (a scan) per line: read until the line goes quiet
                chunk += more
            seen += chunk
            text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
            _out(f"{time.monotonic() - start:8.3f}  {chunk.hex(' '):<48}  {text}")
            for line in route(chunk):
                _out(f"          → {line}")
            if args.count and seen.count(b"\n") + seen.count(b"\r") >= args.count:
                break
    except DeviceError as exc:
        _err(f"tillplug sniff: {exc.message}")
    except KeyboardInterrupt:
        pass
    finally:
        driver.close()
    return _sniff_verdict(bytes(seen), args.baudrate)


def _sniff_verdict(seen: bytes, baudrate: int) -> int:
    """What the bytes a scanner sent say about its settings."""
    from tillplug.barcodes.framing import guess_terminator

    if not seen:
        _out("nothing arrived: check the cable, the port, and that the scanner is in serial (not keyboard) mode")
        return EXIT_FAILURE
    printable = sum(32 <= b < 127 or b in (9, 10, 13, 29) for b in seen) / len(seen)
    _out(f"{len(seen)} bytes; terminator looks like: {guess_terminator(seen)}")
    if printable < 0.9:
        _out("many bytes are not text: the baud rate is probably wrong; try 9600, 19200, 38400 or 115200")
    else:
        _out(f'config: baudrate = {baudrate}, terminator = "{guess_terminator(seen)}"')
        if seen.startswith(b"]"):
            _out("the scanner sends AIM symbology identifiers (]E0, ]C1, ...): tillplug keeps them as metadata")
    return EXIT_OK


def _sniff_keyboard(args: argparse.Namespace) -> int:
    """A keyboard-mode scanner: what it types under the given layout (and others), scan by scan."""
    import time

    from tillplug.barcodes.framing import decode
    from tillplug.barcodes.keymaps import decode as decode_keys
    from tillplug.barcodes.keymaps_data import LAYOUTS
    from tillplug.errors import DeviceError

    opened = _open_sniffed(args, "hid-scanner", dict(driver="hid-scanner", layout=args.layout, retype=False))
    if isinstance(opened, int):
        return opened
    driver, route = opened
    _out(f"listening to {args.port} as a {args.layout} keyboard for {args.seconds:g} s (the session sees nothing)")
    start, count = time.monotonic(), 0
    try:
        while time.monotonic() - start < args.seconds and not (args.count and count >= args.count):
            for frame in driver.read_frames():
                count += 1
                _out(f"{time.monotonic() - start:8.3f}  {len(frame.keys)} key events  {frame.raw!r}")
                others = {decode_keys(frame.keys, lay) for lay in LAYOUTS if lay != args.layout}
                if others - {decode_keys(frame.keys, args.layout)}:
                    _out("          other layouts read it differently: check --layout (tillplug doctor --scan-test)")
                text = decode(frame.data)
                for line in route(frame.raw) if text else []:
                    _out(f"          → {line}")
    except DeviceError as exc:
        _err(f"tillplug sniff: {exc.message}")
    except KeyboardInterrupt:
        pass
    finally:
        driver.close()
    return EXIT_OK if count else EXIT_FAILURE


def _open_sniffed(
    args: argparse.Namespace, driver_name: str, settings: dict[str, Any]
) -> tuple[Any, Callable[[bytes], list[str]]] | int:
    """The scanner opened read-only and the routing preview, or the exit code after saying why not."""
    from tillplug.config.model import ScannerConfig
    from tillplug.devices.registry import load_drivers
    from tillplug.errors import DeviceError, DriverError

    try:
        driver = load_drivers().get(driver_name)(ScannerConfig(name="sniff", port=args.port, **settings))
        driver.open()
    except (DeviceError, DriverError) as exc:
        _err(f"tillplug sniff: {exc.message}")
        return EXIT_FAILURE
    except ValueError as exc:
        _err(f"tillplug sniff: {exc}")
        return EXIT_USAGE
    route = _sniff_router(args)
    if route is None:
        driver.close()
        return EXIT_USAGE
    return driver, route


def _sniff_router(args: argparse.Namespace) -> Callable[[bytes], list[str]] | None:
    """What routing would do with each scan in the bytes: the config's barcode rules if given
    (and the scanner there with this port, for pass_loyalty), else the default rules."""
    from tillplug.barcodes.classify import Classifier
    from tillplug.barcodes.framing import ScanFramer, decode
    from tillplug.config.model import BarcodeRules
    from tillplug.daemon.scans import Decision, Route, decide
    from tillplug.devices.till_port import PassThrough

    rules, pass_loyalty, has_till = BarcodeRules(), False, False
    if args.config:
        config = _load(args.config)
        if config is None:
            return None
        rules = config.barcodes
        mine = next((s for s in config.scanners if s.port == args.port), None)
        if mine is not None:
            pass_loyalty, has_till = mine.pass_loyalty, mine.till_port is not None
    classifier, framer = Classifier(rules), ScanFramer("auto")

    def route(chunk: bytes) -> list[str]:
        lines = []
        for frame in framer.feed(chunk):
            text = decode(frame)
            if text is None:
                continue
            classified = classifier.classify(text.text, text.symbology, read_product=False)
            where = decide(classified.kind, pass_loyalty=pass_loyalty)
            passing = PassThrough.WITHHELD if where is Route.LOYALTY else PassThrough.NONE
            if where is not Route.LOYALTY and has_till:
                passing = PassThrough.PASSED
            lines.append(f"{text.text!r}: {Decision(classified, where, passing).describe()}")
        return lines

    return route


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 -- the command table, read top to bottom
    parser = argparse.ArgumentParser(
        prog="tillplug",
        description="Loyalty plugin for shop tills: scanners, the Loyalty Engine, receipt printers.",
    )
    parser.add_argument("--version", action="version", version=f"tillplug {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    p = add(
        "check-config",
        "validate a config file and the drop-ins of conf.d/ beside it; exit 0 if valid, 2 if not",
        cmd_check_config,
    )
    p.add_argument("file", nargs="?", default=DEFAULT_CONFIG)
    p.add_argument("--explain", action="store_true", help="print each value and the file it came from")

    p = add("config", "print the commented example config or the JSON Schema", cmd_config)
    p.add_argument("what", choices=["example", "schema"])

    p = add("run", "run the daemon", cmd_run)
    p.add_argument("--config", default=DEFAULT_CONFIG)

    p = add("demo", "run the whole product against the simulator and virtual devices", cmd_demo)
    p.add_argument("--interactive", action="store_true", help="type barcodes and till commands yourself")
    p.add_argument("--out", default="demo-out", help="folder for the slips as PNG (default: ./demo-out)")

    p = add("display-url", "print the customer display page's address for each lane, with its key", cmd_display_url)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--lane", type=int, help="only this lane")
    p.add_argument("--base", help="the address the display reaches the till at (default: api.listen)")

    p = add("sim", "run the Loyalty Engine simulator alone on 127.0.0.1", cmd_sim)
    p.add_argument("--port", type=int, default=8620)
    p.add_argument("--seed", help="JSON seed file (members, rewards, vouchers); default: the built-in one")
    p.add_argument("--rate", type=float, default=100, help="rate limit, requests/s per API key (WLL: 100)")
    p.add_argument("--burst", type=int, default=400, help="rate-limit burst (WLL: 400)")
    p.add_argument(
        "--dialect",
        default="default",
        choices=["default", "strict", "hostile"],
        help="how to answer where WLL publishes nothing (docs/technician.md: Engine dialects)",
    )

    p = add("devices", "list serial ports and print a config snippet for each", cmd_devices)
    p.add_argument("--json", action="store_true")

    p = add("test-print", "print the test page on a configured printer", cmd_test_print)
    p.add_argument("--printer", required=True)
    p.add_argument("--config", default=DEFAULT_CONFIG)

    p = add("preview", "render a captured ESC/POS byte stream as PNG and text", cmd_preview)
    p.add_argument("file")
    p.add_argument("--png", help="write the receipt as a PNG image here")
    p.add_argument("--text", action="store_true", help="print the receipt as text (the default without --png)")
    p.add_argument("--columns", type=int, choices=[32, 42, 48], default=48)

    p = add("outbox", "inspect and manage the queue of engine writes", cmd_outbox)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--json", action="store_true")
    # The same options after the action (`outbox retry 42 --config F`); SUPPRESS: unset there, the
    # value given before the action (or its default) stands.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--config", default=argparse.SUPPRESS, help=f"the config file (default: {DEFAULT_CONFIG})")
    after.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="answer as JSON")
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    acts.add_parser("stats", help="counts by state and the oldest waiting row", parents=[after])
    a = acts.add_parser("list", help="rows, oldest first", parents=[after])
    a.add_argument("--state", choices=["pending", "sending", "delivered", "dead", "discarded"])
    a = acts.add_parser(
        "retry", help="try a row again now (pending, dead, interrupted or unverifiable)", parents=[after]
    )
    a.add_argument("id", type=int)
    a.add_argument(
        "--resend-unverified",
        action="store_true",
        help="send an unverifiable row without a look-up (after checking the Loyalty Console: "
        "the engine counts it twice if it has it already)",
    )
    a = acts.add_parser(
        "discard", help="give up on a row in any state but delivered, with a reason (kept for audit)", parents=[after]
    )
    a.add_argument("id", type=int)
    a.add_argument("--reason", required=True)
    a = acts.add_parser("drain", help="deliver everything now (the daemon does this by itself)", parents=[after])
    a.add_argument("--timeout", type=float, default=60.0)

    p = add("status", "ask the running daemon for its health (exit 1 if degraded or not running)", cmd_status)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--json", action="store_true")

    p = add(
        "ready-to-restart",
        "ask the running daemon whether a restart now is safe: exit 0 safe, 1 not (the reason on one line), "
        "2 cannot tell",
        cmd_ready_to_restart,
    )
    p.add_argument("--config", default=DEFAULT_CONFIG)

    p = add(
        "restart-when-ready",
        "restart the daemon at its next safe moment (what an update schedules); roll back if it does not start",
        cmd_restart_when_ready,
    )
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--within", type=float, default=900, help="seconds to wait for a safe moment (default 900)")
    p.add_argument("--every", type=float, default=5, help="seconds between questions (default 5)")
    p.add_argument("--start-within", type=float, default=60, help="seconds the new version has to answer (default 60)")
    p.add_argument("--unit", default="tillplug.service")
    p.add_argument("--expect", help="the version that must answer after the restart")
    p.add_argument("--root", default="/opt/tillplug", help="the folder of versions and the current link")

    p = add("engine-check", "find how the engine answers where WLL publishes nothing", cmd_engine_check)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--card", required=True, help="a test member's card as scanned (or its member id)")
    p.add_argument(
        "--yes",
        action="store_true",
        help="also spend 1 point of that member and refund it (the spend is sent twice, to see whether the "
        "engine refuses a repeated eventKey; a second point taken is refunded too)",
    )
    p.add_argument("--out", help="where to write the answers (default: engine.dialect_file)")

    p = add("doctor", "check this till for the faults that stop tillplug working", cmd_doctor)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--root", default="/", help=argparse.SUPPRESS)
    p.add_argument("--offline", action="store_true", help="skip the engine and printer checks")
    p.add_argument("--scan-test", action="store_true", help="check each keyboard scanner's layout with a test scan")
    p.add_argument("--layout-code", metavar="FILE", help="write the layout test barcode as a PNG, and stop")

    p = add("diag", "write one bundle for a support ticket: config, health, queues, versions, the journal", cmd_diag)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--out", required=True, help="the bundle to write (tar.gz)")

    p = add("enrol", "make the chain's enrolment key, and signed enrolment codes for new tills", cmd_enrol)
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = acts.add_parser("keygen", help="a new Ed25519 key pair: PREFIX.key (private) and PREFIX.pub")
    a.add_argument("--out", required=True, metavar="PREFIX")
    a = acts.add_parser("make-code", help="a signed code saying who a till is, to scan at that till")
    a.add_argument("--key", required=True, help="the chain's private key (PEM, from keygen)")
    a.add_argument("--till", required=True, help="the till's id")
    a.add_argument("--branch", required=True, help="the branch's id")
    a.add_argument("--config-url", required=True, help="the chain's config layer: https://… or file:///…")
    a.add_argument("--relay-token-file", help="a file holding the relay token, if the chain uses the relay")
    a.add_argument("--valid-days", type=float, default=7.0, help="how long the code may be used (default: 7)")
    a.add_argument("--png", help="write the code as a QR code image here instead of printing it")

    p = add("sniff", "show what a scanner sends, to find its terminator and baud rate", cmd_sniff)
    p.add_argument("port")
    p.add_argument("--baudrate", type=int, default=9600)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--count", type=int, default=0, help="stop after this many lines")
    p.add_argument("--config", help="route each scan by this config's barcode rules (default: the built-in rules)")
    p.add_argument(
        "--layout", default="us", help="keyboard-mode scanners (/dev/input/…, usb://…): the layout it is set to"
    )

    p = add("relay", "the chain relay: one gateway to the engine for many tills (docs/relay.md)", cmd_relay)
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = acts.add_parser("config", help="print the commented example relay.toml")
    a.add_argument("what", choices=["example"])
    a = acts.add_parser("check-config", help="validate a relay.toml; exit 0 if valid, 2 if not")
    a.add_argument("file")
    for verb, help_ in (("migrate", "create or update the relay's tables"), ("run", "serve the tills")):
        acts.add_parser(verb, help=help_).add_argument("--config", required=True)
    a = acts.add_parser("enrol", help="enrol a till: prints its token alone on one line")
    a.add_argument("--config", required=True)
    a.add_argument("--till", required=True)
    a.add_argument("--branch", required=True)
    a.add_argument(
        "--print", dest="print_to", metavar="HOST:PORT", help="print the token on an enrolment slip there instead"
    )
    a = acts.add_parser("revoke", help="revoke a till's token (every relay process refuses it within 5 s)")
    a.add_argument("--config", required=True)
    a.add_argument("--till", required=True)
    a = acts.add_parser("outbox", help="the relay's outbox rows that need a human: list, retry ID, drop ID --yes")
    verbs = a.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("list", help="dead rows, unverifiable ones, deliveries tried 10 times").add_argument(
        "--config", required=True
    )
    for verb, help_ in (("retry", "make the row due now"), ("drop", "stop working on the row for good")):
        v = verbs.add_parser(verb, help=help_)
        v.add_argument("event_key", metavar="ID")
        v.add_argument("--config", required=True)
        if verb == "drop":
            v.add_argument("--yes", action="store_true", help="yes, drop it")

    p = add("install", "install the udev rules and the systemd unit, create the user and folders", cmd_install)
    p.add_argument("--dry-run", action="store_true", help="show what would be done, change nothing")
    p.add_argument("--root", default="/", help="stage the files under this folder instead of /")
    p.add_argument("--print-rules", action="store_true", help="print the generated udev rules")
    p.add_argument("--print-unit", action="store_true", help="print the systemd unit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
