"""The ``tillplug`` command.

Exit codes: 0 success; 1 a runtime failure (device, engine) or, for status and
doctor, a problem found; 2 bad usage or an invalid config.
Heavy imports happen inside each command so that ``--help`` and
``check-config`` stay instant on a small till.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from tillplug import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = "/etc/tillplug/tillplug.toml"


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text if text.endswith("\n") else text + "\n")


def cmd_check_config(args: argparse.Namespace) -> int:
    from tillplug.config import check_config
    from tillplug.devices.registry import driver_names

    report = check_config(args.file, known_drivers=driver_names())
    for problem in report.problems:
        _out(str(problem))
    errors, warnings = len(report.errors), len(report.warnings)
    if report.ok:
        _out(f"{args.file}: valid ({warnings} warning(s))")
        return EXIT_OK
    _out(f"{args.file}: {errors} error(s), {warnings} warning(s)")
    return EXIT_USAGE


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


def cmd_sim(args: argparse.Namespace) -> int:
    from tillplug.sim import serve

    try:
        serve(args.port, args.seed, rate=args.rate, burst=args.burst)
    except OSError as exc:
        _err(f"tillplug sim: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}")
        return EXIT_FAILURE
    except (ValueError, KeyError) as exc:
        _err(f"tillplug sim: the seed file is not valid: {exc}")
        return EXIT_USAGE
    return EXIT_OK


def _load(path: str):
    """The validated config, or None after printing every problem (the caller exits 2)."""
    from tillplug.config import load_config
    from tillplug.devices.registry import driver_names
    from tillplug.errors import ConfigError

    try:
        return load_config(path, known_drivers=driver_names())
    except ConfigError as exc:
        _err(exc.message)
        return None


def outbox_path(config) -> str:
    return str(config.state_dir / "outbox.sqlite3")


def cmd_outbox(args: argparse.Namespace) -> int:
    from tillplug.outbox import OutboxStore

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    store = OutboxStore(outbox_path(config))
    try:
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
            if not store.retry(args.id):
                _err(f"row {args.id} is not dead or pending; nothing to retry")
                return EXIT_FAILURE
            _out(f"row {args.id} will be tried again now")
        elif args.action == "discard":
            if not store.discard(args.id, args.reason):
                _err(f"row {args.id} is not dead or pending; nothing discarded")
                return EXIT_FAILURE
            _out(f"row {args.id} discarded: {args.reason}")
        elif args.action == "drain":
            return _drain(config, store, args.timeout)
    finally:
        store.close()
    return EXIT_OK


def _drain(config, store, timeout: float) -> int:
    import asyncio

    from tillplug.engine import EngineClient, load_secrets
    from tillplug.outbox import Deliverer

    async def go() -> bool:
        async with EngineClient(config.engine, load_secrets(config.engine)) as client:
            deliverer = Deliverer(store, client, rate=config.outbox.rate_per_second, burst=config.outbox.burst)
            return await deliverer.drain(timeout)

    empty = asyncio.run(go())
    stats = store.stats()
    _out(f"delivered {stats.delivered}, pending {stats.depth}, dead {stats.dead}")
    return EXIT_OK if empty else EXIT_FAILURE


def cmd_run(args: argparse.Namespace) -> int:
    from tillplug.daemon import run_daemon
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
        width = {32: 384, 42: 512, 48: 576}.get(args.columns, args.columns * 12)
        render_png(preview, args.png, columns=args.columns, width_px=width)
        _err(f"wrote {args.png}")
    for offset, hexbytes in preview.unknown:
        _err(f"not understood at byte {offset}: {hexbytes}")
    return EXIT_OK


def cmd_test_print(args: argparse.Namespace) -> int:
    import asyncio

    from tillplug.devices.registry import load_drivers
    from tillplug.devices.supervisor import PrinterSupervisor
    from tillplug.errors import TillplugError
    from tillplug.receipts import templates

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
    ctx = templates.SlipContext(
        config.till_id, config.branch_id, config.currency, tuple(config.receipts.header), tuple(config.receipts.footer)
    )

    async def go() -> str:
        driver = load_drivers().get(printer.driver)(printer, str(config.cache_dir))
        sup = PrinterSupervisor(printer, driver)
        page = templates.test_page(
            ctx, printer.name, printer.profile, printer.effective_columns(), getattr(driver, "code_page", "-")
        )
        await sup.print(page)
        status = await sup.status()
        await sup.close()
        return f"{status.state.value} {status.reason}".strip()

    try:
        status = asyncio.run(go())
    except TillplugError as exc:
        _err(f"tillplug test-print: {exc.message}")
        return EXIT_FAILURE
    _out(f"test page sent to {printer.name}; printer status: {status}")
    return EXIT_OK


def cmd_devices(args: argparse.Namespace) -> int:
    from tillplug.devices.known import lookup
    from tillplug.devices.registry import load_drivers

    registry = load_drivers()
    ports: list[dict] = []
    for cls in registry.drivers.values():
        if hasattr(cls, "discover"):
            ports.extend(cls.discover())
    if args.json:
        _out(json.dumps(ports, indent=2, default=str))
        return EXIT_OK
    if not ports:
        _out(
            "no serial ports found (USB scanners in keyboard mode do not appear here; "
            "switch them to USB serial / CDC-ACM mode)"
        )
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
    for name, why in registry.broken.items():
        _err(f"driver {name} did not load: {why}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from tillplug import demo

    if args.interactive:
        return demo.interactive(args.out)
    return demo.run(args.out)


def cmd_install(args: argparse.Namespace) -> int:
    from tillplug import service

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
    from tillplug.doctor import FAIL, Doctor

    findings = Doctor(args.config, root=args.root).run(engine=not args.offline, printers=not args.offline)
    for finding in findings:
        _out(str(finding))
    failed = sum(f.verdict == FAIL for f in findings)
    _out(f"{failed} problem(s) found" if failed else "no problems found")
    return EXIT_FAILURE if failed else EXIT_OK


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
    except (httpx.HTTPError, ValueError) as exc:
        if args.json:  # scripts always get one JSON object on stdout
            _out(json.dumps({"status": "not_running", "url": url, "error": type(exc).__name__}, indent=2))
        _err(
            f"tillplug is not answering on {url} ({type(exc).__name__}); is the service running? "
            "systemctl status tillplug"
        )
        return EXIT_FAILURE
    if args.json:
        _out(json.dumps(health, indent=2))
    else:
        _out(f"tillplug {health['version']}  till {health['tillId']}  status {health['status']}")
        for d in health["devices"]:
            paper = f"  paper {d['paper']['state']} {d['paper']['reason']}".rstrip() if "paper" in d else ""
            _out(f"  {d['kind']:<8}{d['name']:<16}{d['state']:<11}{d['reason']}{paper}")
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


def cmd_sniff(args: argparse.Namespace) -> int:
    import time

    from tillplug.barcodes.framing import guess_terminator
    from tillplug.config.model import ScannerConfig
    from tillplug.devices.registry import load_drivers
    from tillplug.errors import DeviceError, DriverError

    try:
        cfg = ScannerConfig(name="sniff", port=args.port, baudrate=args.baudrate, terminator="none")
        driver = load_drivers().get("serial-scanner")(cfg)
        driver.open()
    except (DeviceError, DriverError) as exc:
        _err(f"tillplug sniff: {exc.message}")
        return EXIT_FAILURE
    except ValueError as exc:
        _err(f"tillplug sniff: {exc}")
        return EXIT_USAGE
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
            if args.count and seen.count(b"\n") + seen.count(b"\r") >= args.count:
                break
    except DeviceError as exc:
        _err(f"tillplug sniff: {exc.message}")
    except KeyboardInterrupt:
        pass
    finally:
        driver.close()
    if not seen:
        _out("nothing arrived: check the cable, the port, and that the scanner is in serial (not keyboard) mode")
        return EXIT_FAILURE
    printable = sum(32 <= b < 127 or b in (9, 10, 13, 29) for b in seen) / len(seen)
    _out(f"{len(seen)} bytes; terminator looks like: {guess_terminator(bytes(seen))}")
    if printable < 0.9:
        _out("many bytes are not text: the baud rate is probably wrong; try 9600, 19200, 38400 or 115200")
    else:
        _out(f'config: baudrate = {args.baudrate}, terminator = "{guess_terminator(bytes(seen))}"')
        if bytes(seen).startswith(b"]"):
            _out("the scanner sends AIM symbology identifiers (]E0, ]C1, ...): tillplug keeps them as metadata")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
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

    p = add("check-config", "validate a config file; exit 0 if valid, 2 if not", cmd_check_config)
    p.add_argument("file", nargs="?", default=DEFAULT_CONFIG)

    p = add("config", "print the commented example config or the JSON Schema", cmd_config)
    p.add_argument("what", choices=["example", "schema"])

    p = add("run", "run the daemon", cmd_run)
    p.add_argument("--config", default=DEFAULT_CONFIG)

    p = add("demo", "run the whole product against the simulator and virtual devices", cmd_demo)
    p.add_argument("--interactive", action="store_true", help="type barcodes and till commands yourself")
    p.add_argument("--out", default="demo-out", help="folder for the slips as PNG (default: ./demo-out)")

    p = add("sim", "run the Loyalty Engine simulator alone on 127.0.0.1", cmd_sim)
    p.add_argument("--port", type=int, default=8620)
    p.add_argument("--seed", help="JSON seed file (members, rewards, vouchers); default: the built-in one")
    p.add_argument("--rate", type=float, default=100, help="rate limit, requests/s per API key (WLL: 100)")
    p.add_argument("--burst", type=int, default=400, help="rate-limit burst (WLL: 400)")

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
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    acts.add_parser("stats", help="counts by state and the oldest waiting row")
    a = acts.add_parser("list", help="rows, oldest first")
    a.add_argument("--state", choices=["pending", "sending", "delivered", "dead", "discarded"])
    a = acts.add_parser("retry", help="try a dead row again")
    a.add_argument("id", type=int)
    a = acts.add_parser("discard", help="give up on a row, with a reason (kept for audit)")
    a.add_argument("id", type=int)
    a.add_argument("--reason", required=True)
    a = acts.add_parser("drain", help="deliver everything now (the daemon does this by itself)")
    a.add_argument("--timeout", type=float, default=60.0)

    p = add("status", "ask the running daemon for its health (exit 1 if degraded or not running)", cmd_status)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--json", action="store_true")

    p = add("doctor", "check this till for the faults that stop tillplug working", cmd_doctor)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--root", default="/", help=argparse.SUPPRESS)
    p.add_argument("--offline", action="store_true", help="skip the engine and printer checks")

    p = add("sniff", "show what a scanner sends, to find its terminator and baud rate", cmd_sniff)
    p.add_argument("port")
    p.add_argument("--baudrate", type=int, default=9600)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--count", type=int, default=0, help="stop after this many lines")

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
