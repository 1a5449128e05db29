"""One class per printer connection kind, each asking the printer's status where its wire can answer."""

import contextlib
import os
import pty
import select
import threading
import tty

import pytest
from tillplug.drivers.escpos_printer import (
    CaptureConnection,
    EscposPrinter,
    FileConnection,
    SerialConnection,
    TcpConnection,
    UsbConnection,
    connection_for,
)

from tillplug.commands.virtual.printer import ANSWERS
from tillplug.config.model import PrinterConfig
from tillplug.devices.base import PrinterState


class PtyPrinter:
    """A printer on the far side of a pty: keeps what it is sent and answers DLE EOT n."""

    def __init__(self, mood):
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave
        self.mood = mood
        self.received = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        pending = bytearray()
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            try:
                pending += os.read(self.master, 4096)
            except OSError:
                return
            while (at := pending.find(b"\x10\x04")) >= 0 and at + 2 < len(pending):
                self.received += pending[:at]
                answer = ANSWERS[self.mood].get(pending[at + 2])
                del pending[: at + 3]
                if answer:
                    os.write(self.master, answer)
            if b"\x10" not in pending[-1:]:
                self.received += pending
                pending.clear()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        os.close(self.master)
        os.close(self._slave)


@pytest.mark.parametrize("scheme, cls", [("serial", SerialConnection), ("file", FileConnection)])
@pytest.mark.parametrize(
    "mood, state", [("ok", PrinterState.OK), ("paper_out", PrinterState.ERROR), ("silent", PrinterState.UNKNOWN)]
)
def test_serial_and_device_node_printers_answer_status_on_their_own_wire(scheme, cls, mood, state):
    fake = PtyPrinter(mood)
    cfg = PrinterConfig(
        name="p", connection=f"{scheme}://{fake.path}", profile="TM-T20II", status_timeout=0.2, flow_control="none"
    )
    p = EscposPrinter(cfg)
    assert type(p.connection) is cls and p.answers_status()
    try:
        p.open()
        p.write(b"HELLO\n")
        assert p.status().state is state
    finally:
        p.close()
        fake.close()
    assert b"HELLO\n" in fake.received


class FakeUsbDevice:
    """pyusb's Device as python-escpos's Usb printer holds it: bulk OUT and IN endpoints."""

    def __init__(self, mood):
        self.mood, self.written, self.reply = mood, bytearray(), b""

    def write(self, endpoint, data, timeout=None):
        assert endpoint == 0x01
        self.written += data
        if data[:2] == b"\x10\x04":
            self.reply = ANSWERS[self.mood].get(data[2], b"")

    def read(self, endpoint, size, timeout=None):
        assert endpoint == 0x82
        if not self.reply:
            raise TimeoutError("usb read timed out")  # as usb.core.USBTimeoutError would
        reply, self.reply = self.reply, b""
        return bytearray(reply)


class FakeUsbPrinter:
    out_ep, in_ep = 0x01, 0x82

    def __init__(self, mood):
        self.device = FakeUsbDevice(mood)

    def _raw(self, data):
        self.device.write(self.out_ep, data)

    def close(self):
        pass


@pytest.mark.parametrize("mood, state", [("ok", PrinterState.OK), ("cover_open", PrinterState.ERROR)])
def test_a_usb_printer_reports_status_over_its_in_endpoint(mood, state):
    p = EscposPrinter(PrinterConfig(name="p", connection="usb://04b8:0e15", profile="TM-T20II"))
    assert isinstance(p.connection, UsbConnection)
    p.connection._printer = FakeUsbPrinter(mood)  # what open() gets from python-escpos's Usb
    p.write(b"SLIP")
    status = p.status()
    assert status.state is state
    assert p.connection._printer.device.written.startswith(b"SLIP\x10\x04\x01")


def test_each_scheme_has_its_connection_class():
    for url, cls in (
        ("tcp://127.0.0.1:9100", TcpConnection),
        ("capture://memory", CaptureConnection),
        ("usb://04b8:0e15", UsbConnection),
        ("serial:///dev/ttyS0", SerialConnection),
        ("file:///dev/usb/lp0", FileConnection),
    ):
        assert type(connection_for(PrinterConfig(name="p", connection=url))) is cls


class AllAtOncePrinter(PtyPrinter):
    """Answers nothing until it holds all three status queries: only a driver that sends them together
    (one round trip, #27) hears back; one asking 1, then 2, then 4 waits out its timeout on the first."""

    def _serve(self):
        pending = bytearray()
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            try:
                pending += os.read(self.master, 4096)
            except OSError:
                return
            if pending.count(b"\x10\x04") >= 3:
                os.write(self.master, b"".join(ANSWERS["ok"][n] for n in (1, 2, 4)))
                pending.clear()


def serve_tcp_all_at_once(listener, got):
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(2)
        pending = b""
        try:
            while pending.count(b"\x10\x04") < 3:
                chunk = conn.recv(64)
                if not chunk:
                    return
                pending += chunk
        except OSError:
            return
        got.append(pending)
        conn.sendall(b"".join(ANSWERS["ok"][n] for n in (1, 2, 4)))
        conn.settimeout(2)
        with contextlib.suppress(OSError):
            conn.recv(64)  # until the driver closes


@pytest.mark.parametrize("scheme", ["tcp", "serial", "file"])
def test_a_status_is_one_round_trip_its_three_queries_sent_together(scheme):
    import socket

    if scheme == "tcp":
        listener = socket.create_server(("127.0.0.1", 0))
        got: list[bytes] = []
        threading.Thread(target=serve_tcp_all_at_once, args=(listener, got), daemon=True).start()
        url, fake = f"tcp://127.0.0.1:{listener.getsockname()[1]}", None
    else:
        fake = AllAtOncePrinter("ok")
        url = f"{scheme}://{fake.path}"
    p = EscposPrinter(
        PrinterConfig(name="p", connection=url, profile="TM-T20II", status_timeout=0.3, flow_control="none")
    )
    try:
        p.open()
        assert p.status().state is PrinterState.OK
    finally:
        p.close()
        if fake is not None:
            fake.close()
        else:
            listener.close()
            assert got == [b"\x10\x04\x01\x10\x04\x02\x10\x04\x04"]
