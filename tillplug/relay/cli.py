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
        print(asyncio.run(service.enrol(config, args.till, args.branch)), flush=True)  # the token alone
        return EXIT_OK
    if args.action == "revoke":
        if asyncio.run(service.revoke(config, args.till)):
            print(f"till {args.till}: revoked", file=sys.stderr)
            return EXIT_OK
        print(f"till {args.till} is not enrolled", file=sys.stderr)
        return EXIT_FAIL
    logs.setup(config.log_level)
    # The pool warns at every failed reconnect; the relay's own 503s and health say it once.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    asyncio.run(service.serve(config))
    return EXIT_OK
