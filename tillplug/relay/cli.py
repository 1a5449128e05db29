"""What ``tillplug relay ACTION`` does; ``commands/cli.py`` only parses the arguments."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys

from tillplug.errors import ConfigError, RelayUnavailable

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
KEY_RE = re.compile(r"^[\x21-\x7e]{1,64}$")  # an eventKey: 1-64 printable characters, no space


def relay_command(args: argparse.Namespace) -> int:  # noqa: PLR0911 -- one return per action and outcome
    from tillplug.relay import config as relay_config

    if args.action == "config":
        sys.stdout.write(relay_config.example())
        return EXIT_OK
    if args.action == "check-config":
        report = relay_config.check_config(args.file)
        for problem in report.problems:
            print(problem)
        print(f"{args.file}: valid" if report.ok else f"{args.file}: {len(report.errors)} error(s)")
        return EXIT_OK if report.ok else EXIT_USAGE
    for name in ("till", "branch"):
        value = getattr(args, name, None)
        if value is not None and not ID_RE.match(value):
            print(f"--{name} must be 1-64 letters, digits, '.', '_' or '-'", file=sys.stderr)
            return EXIT_USAGE
    try:
        config = relay_config.load_config(args.config)
        return _act(args, config)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_USAGE
    except RelayUnavailable as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_FAIL
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("psycopg"):
            print("the relay needs its extra: pip install 'tillplug[relay]'", file=sys.stderr)
            return EXIT_FAIL
        raise


def _act(args: argparse.Namespace, config: object) -> int:
    from tillplug import logs
    from tillplug.relay import service
    from tillplug.relay.config import RelayConfig

    assert isinstance(config, RelayConfig)
    if args.action == "migrate":
        applied = asyncio.run(service.migrate(config))
        print(f"applied migrations: {', '.join(map(str, applied))}" if applied else "the schema is up to date")
        return EXIT_OK
    if args.action == "enrol":
        return _enrol(args, config)
    if args.action == "revoke":
        if asyncio.run(service.revoke(config, args.till)):
            print(f"till {args.till}: revoked", file=sys.stderr)
            return EXIT_OK
        print(f"till {args.till} is not enrolled", file=sys.stderr)
        return EXIT_FAIL
    if args.action == "outbox":
        return _outbox(args, config)
    logs.setup(config.log_level)
    # The pool warns at every failed reconnect; the relay's own 503s and health say it once.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    asyncio.run(service.serve(config))
    return EXIT_OK


def _enrol(args: argparse.Namespace, config: object) -> int:
    """The token alone on one line; with ``--print``, on a slip and never on the terminal (if the slip
    does not print, the new token is revoked: nobody could read it; the technician tries again)."""
    from tillplug.errors import TillplugError
    from tillplug.relay import service
    from tillplug.relay.config import RelayConfig
    from tillplug.relay.slip import enrolment_slip, print_slip, printer_address

    assert isinstance(config, RelayConfig)
    if not getattr(args, "print_to", None):
        print(asyncio.run(service.enrol(config, args.till, args.branch)), flush=True)
        return EXIT_OK
    try:
        address = printer_address(args.print_to)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    token = asyncio.run(service.enrol(config, args.till, args.branch))
    try:
        print_slip(address, enrolment_slip(args.till, args.branch, token))
    except TillplugError as exc:
        asyncio.run(service.revoke(config, args.till))
        print(f"{exc.message}: till {args.till} is not enrolled (its new token is revoked); try again", file=sys.stderr)
        return EXIT_FAIL
    print(f"till {args.till}: enrolment slip printed on {address} (the token is on the slip only)", file=sys.stderr)
    return EXIT_OK


STUCK_ATTEMPTS = 10  # a delivery tried this often is listed, though the outbox keeps trying it


def _outbox(args: argparse.Namespace, config: object) -> int:
    """``tillplug relay outbox list | retry ID | drop ID --yes``: the rows the outbox cannot settle alone."""
    from tillplug.relay import service
    from tillplug.relay.config import RelayConfig

    assert isinstance(config, RelayConfig)
    if args.verb == "list":
        rows = asyncio.run(service.outbox(config, "list", None, STUCK_ATTEMPTS))
        if not rows:
            print("nothing in the relay's outbox needs a human")
            return EXIT_OK
        print("event_key\tkind\tstate\ttill\tattempts\tage\tlast_error")
        for r in rows:
            age = f"{float(r['age']) / 60:.0f} min" if float(r["age"]) < 7200 else f"{float(r['age']) / 3600:.0f} h"
            error = (r["last_error"] or "").replace("\t", " ").replace("\n", " ")
            print(f"{r['event_key']}\t{r['kind']}\t{r['state']}\t{r['till_id']}\t{r['attempts']}\t{age}\t{error}")
        print(f"{len(rows)} row(s) need a human: tillplug relay outbox retry ID, or drop ID --yes", file=sys.stderr)
        return EXIT_OK
    key = args.event_key
    if not KEY_RE.match(key):
        print("ID is a row's event_key, as `tillplug relay outbox list` shows it", file=sys.stderr)
        return EXIT_USAGE
    if args.verb == "drop" and not args.yes:
        print(f"drop {key}: the relay stops delivering or settling it for good; add --yes", file=sys.stderr)
        return EXIT_USAGE
    moved, row = asyncio.run(service.outbox(config, args.verb, key, STUCK_ATTEMPTS))
    if moved is None:
        why = "there is no such row" if row is None else f"it is {row['state']}: nothing to {args.verb}"
        print(f"{args.verb} {key}: {why}", file=sys.stderr)
        return EXIT_FAIL
    if args.verb == "retry":
        print(f"{key}: due now ({moved['state']}; a write that may have left is looked up before any resend)")
    else:
        print(f"{key}: dropped (kept for the audit as 'dropped')")
        if moved["kind"] == "spend":
            print(f"note: its {moved['points']} points no longer count against the member's balance", file=sys.stderr)
    return EXIT_OK
