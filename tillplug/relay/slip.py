"""The enrolment slip: ``tillplug relay enrol … --print HOST:PORT`` hands a till's token over on paper.

Printed on a network ESC/POS printer (9100-style) through the project's own printer driver, so the
token never passes a terminal, a scrollback or a file: the technician at the till reads the QR code
into the till's ``relay_token`` file (or carries it in the fleet's enrolment code), then destroys
the slip.
"""

from __future__ import annotations

import logging
import tempfile
import time

from tillplug.config.model import PrinterConfig
from tillplug.errors import DeviceError
from tillplug.receipts.layout import QR, Block, Columns, Cut, Feed, Receipt, Rule, Text

log = logging.getLogger(__name__)


def printer_address(value: str) -> str:
    """``HOST:PORT`` of a network printer, checked; ``ValueError`` saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise ValueError(f"--print takes HOST:PORT of a network printer, such as 10.0.0.7:9100, not {value!r}")
    return value


def enrolment_slip(till_id: str, branch_id: str, token: str) -> Receipt:
    blocks: list[Block] = [
        Text("Relay enrolment", double=True, align="center"),
        Rule(),
        Columns("Till", till_id),
        Columns("Branch", branch_id),
        Rule(),
        Text("The till's relay token:", align="center"),
        QR(token),
        Feed(1),
        Text(
            "Secret: whoever holds this code acts as this till. Put it in the till's relay_token file, then "
            "destroy this slip. Lost? tillplug relay revoke --till " + till_id
        ),
        Rule(),
        Text(time.strftime("%Y-%m-%d %H:%M:%S")),
        Feed(2),
        Cut(),
    ]
    return Receipt("enrolment", blocks)


def print_slip(address: str, receipt: Receipt) -> None:
    """Print ``receipt`` on the printer at ``address``; ``TillplugError`` unless it printed (or was sent
    to a printer that answers no status)."""
    from tillplug.devices.registry import load_drivers
    from tillplug.spool import JobState, PrinterLink

    printer = PrinterConfig(name="enrolment", connection=f"tcp://{address}", connect_timeout=5)
    with tempfile.TemporaryDirectory(prefix="tillplug-slip-") as cache:
        driver = load_drivers().get(printer.driver)(printer, cache)
        link = PrinterLink(driver)
        try:
            _, outcome = link.print_job(driver.render(receipt))
        finally:
            link.close()
    if outcome.state not in (JobState.PRINTED, JobState.SENT):
        raise DeviceError(f"the printer at {address} did not print the slip ({outcome.reason or outcome.state})")


__all__ = ["enrolment_slip", "print_slip", "printer_address"]
