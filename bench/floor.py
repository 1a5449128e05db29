"""The floor: the simplest correct script a POS developer would hand-write for the same job.

pyserial reads a line → httpx looks the member up (user, then wallet) on a keep-alive
connection → python-escpos formats the slip → bytes go to the printer.  For vouchers:
read a line → validate the code (check only) → send the answer to the till as one JSON line.
"""

import argparse
import json
import socket
import sqlite3

import httpx
import serial
from escpos.printer import Dummy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", required=True)
    ap.add_argument("--engine", required=True)
    ap.add_argument("--out", required=True, help="host:port of the printer (balance) or the till (voucher)")
    ap.add_argument("--mode", choices=["balance", "balance-honest", "voucher"], default="balance")
    ap.add_argument("--state", help="the honest floor's job database (SQLite)")
    args = ap.parse_args()

    base = args.engine
    token = httpx.post(
        base + "/oauth/token",
        json={
            "client_id": "sim-client",
            "client_secret": "sim-client-secret",
            "audience": "wlloyalty.net",
            "grant_type": "client_credentials",
        },
    ).json()
    http = httpx.Client(
        base_url=base + "/v1",
        headers={"X-Api-Key": "sim-api-key-0000", "Authorization": f"Bearer {token['access_token']}"},
    )
    host, port = args.out.rsplit(":", 1)
    out = socket.create_connection((host, int(port)))
    out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    jobs = None
    if args.mode == "balance-honest":
        # The same essential work as a truthful spool: the slip recorded durably (as tillplug's spool
        # does: WAL, synchronous=NORMAL, one commit) and one status answer before its bytes go out.
        jobs = sqlite3.connect(args.state, isolation_level=None)
        jobs.execute("PRAGMA journal_mode=WAL")
        jobs.execute("PRAGMA synchronous=NORMAL")
        jobs.execute("CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, data BLOB, state TEXT)")
    scanner = serial.Serial(args.port, 115200, timeout=None)
    print("ready", flush=True)
    while True:
        line = scanner.read_until(b"\r\n").strip().decode()
        if not line:
            continue
        if args.mode == "voucher":
            r = http.post("/commands/validate_voucher", json={"code": line, "allowFutureValidation": True})
            out.sendall(
                json.dumps({"code": line, "status": r.status_code, "data": r.json().get("data")}).encode() + b"\n"
            )
            continue
        user = http.get(f"/users/{line}").json()["data"]
        wallet = http.get(f"/users/{user['id']}/wallet").json()["data"]
        p = Dummy(profile="TM-T20II")
        p.set(align="center", bold=True)
        p.textln("Your points")
        p.set(align="left", bold=False)
        p.textln(f"Balance: {wallet['pointsBalance']} pts")
        p.textln(f"Lifetime: {wallet['lifetimeEarn']} pts")
        p.cut()
        if jobs is not None:
            jobs.execute("INSERT INTO jobs (data, state) VALUES (?, 'printing')", (p.output,))
            out.sendall(b"\x10\x04\x01")  # DLE EOT 1: is the printer online?
            if out.recv(1) != b"\x16":
                raise SystemExit("the printer is not ready")
        out.sendall(p.output)


if __name__ == "__main__":
    main()
