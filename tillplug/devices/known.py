"""The table of devices tillplug knows by USB id.  One table feeds the driver guess in
``tillplug devices`` and the generated udev rules, so the two cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownDevice:
    vid: str  # four lower-case hex digits, as udev's ATTRS{idVendor}
    pid: str
    vendor: str
    model: str
    kind: str  # scanner, printer, bridge (a USB-serial adapter: could be either)
    driver: str | None  # the tillplug driver to use, None for a bridge


KNOWN_DEVICES: tuple[KnownDevice, ...] = (
    # scanners in USB CDC-ACM (serial emulation) mode
    KnownDevice("0c2e", "0b61", "Honeywell", "Xenon/Voyager (CDC-ACM)", "scanner", "serial-scanner"),
    KnownDevice("0c2e", "0b6a", "Honeywell", "Voyager 1450g (CDC-ACM)", "scanner", "serial-scanner"),
    KnownDevice("0c2e", "0901", "Honeywell", "Granit/Xenon (CDC-ACM)", "scanner", "serial-scanner"),
    KnownDevice("05e0", "1701", "Zebra/Symbol", "LS/DS series (CDC-ACM)", "scanner", "serial-scanner"),
    KnownDevice("05e0", "1300", "Zebra/Symbol", "DS series (SNAPI/CDC)", "scanner", "serial-scanner"),
    KnownDevice("05f9", "4204", "Datalogic", "QuickScan/Gryphon (USB-COM)", "scanner", "serial-scanner"),
    KnownDevice("05f9", "4001", "Datalogic", "Magellan (USB-COM)", "scanner", "serial-scanner"),
    KnownDevice("1eab", "1d06", "Newland", "HR/NLS series (USB-CDC)", "scanner", "serial-scanner"),
    KnownDevice("1eab", "8006", "Newland", "FR/NLS series (USB-CDC)", "scanner", "serial-scanner"),
    # scanners in USB keyboard (HID) mode: the hid-scanner driver
    KnownDevice("0c2e", "0200", "Honeywell/Metrologic", "Voyager 1200g (USB keyboard)", "scanner", "hid-scanner"),
    KnownDevice("05e0", "1200", "Zebra/Symbol", "LS2208 (USB keyboard)", "scanner", "hid-scanner"),
    # ESC/POS receipt printers
    KnownDevice("04b8", "0e15", "Epson", "TM-T20II", "printer", "escpos"),
    KnownDevice("04b8", "0e28", "Epson", "TM-T20III", "printer", "escpos"),
    KnownDevice("04b8", "0202", "Epson", "TM-T88 series", "printer", "escpos"),
    KnownDevice("0519", "0003", "Star Micronics", "TSP100/TSP650", "printer", "escpos"),
    KnownDevice("0519", "0001", "Star Micronics", "TSP700/TSP800", "printer", "escpos"),
    KnownDevice("1504", "0006", "Bixolon", "SRP-350", "printer", "escpos"),
    KnownDevice("1504", "0031", "Bixolon", "SRP-330II/350III", "printer", "escpos"),
    KnownDevice("1d90", "2060", "Citizen", "CT-S310II/CT-S801", "printer", "escpos"),
    KnownDevice("0fe6", "811e", "Xprinter", "XP-58/XP-80 (ICS)", "printer", "escpos"),
    KnownDevice("0483", "5743", "Xprinter", "XP-N160 (STM)", "printer", "escpos"),
    # USB-serial bridges (RS-232 scanners and printers behind an adapter)
    KnownDevice("0403", "6001", "FTDI", "FT232R", "bridge", None),
    KnownDevice("0403", "6015", "FTDI", "FT231X/FT230X", "bridge", None),
    KnownDevice("067b", "2303", "Prolific", "PL2303", "bridge", None),
    KnownDevice("067b", "23a3", "Prolific", "PL2303GC", "bridge", None),
    KnownDevice("1a86", "7523", "WCH", "CH340", "bridge", None),
    KnownDevice("1a86", "55d4", "WCH", "CH9102", "bridge", None),
    KnownDevice("10c4", "ea60", "Silicon Labs", "CP210x", "bridge", None),
)


def lookup(vid: int | str | None, pid: int | str | None) -> KnownDevice | None:
    if vid is None or pid is None:
        return None
    v = f"{vid:04x}" if isinstance(vid, int) else vid.lower()
    p = f"{pid:04x}" if isinstance(pid, int) else pid.lower()
    return next((d for d in KNOWN_DEVICES if d.vid == v and d.pid == p), None)
