"""A self-signed certificate for a TLS server on 127.0.0.1 (openssl; .ci/debian-packages lists it)."""

import shutil
import subprocess
from pathlib import Path

import pytest


def self_signed(folder: Path, name: str) -> tuple[str, str]:
    """(certificate, key) paths for ``name``.test, valid for 127.0.0.1 for a day."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificate (.ci/debian-packages lists it)")
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}.test",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)
