"""ops/journald: the upload sends tillplug's own namespace journal, the one its unit writes to."""

import configparser
import inspect
from pathlib import Path

from tillplug.commands import diag

JOURNALD = Path(__file__).resolve().parents[2] / "ops" / "journald"


def ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)  # ExecStart= is repeated on purpose
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_the_uploader_reads_only_the_namespace_the_unit_writes_to():
    namespace = ini(JOURNALD / "tillplug.service.d" / "10-log-namespace.conf")["Service"]["LogNamespace"]
    assert (JOURNALD / f"journald@{namespace}.conf").is_file()
    assert ini(JOURNALD / f"journald@{namespace}.conf")["Journal"]["Storage"] == "persistent"  # files to upload
    lines = (JOURNALD / "systemd-journal-upload.service.d" / "10-tillplug-only.conf").read_text().splitlines()
    starts = [line for line in lines if line.startswith("ExecStart=")]
    assert starts[0] == "ExecStart="  # the packaged command is cleared, not run beside ours
    assert starts[-1].split()[-1] == f"--directory=/var/log/journal/%m.{namespace}"
    assert "--namespace=*" in inspect.getsource(diag.journal)  # diag finds the lines in the namespace too


def test_the_upload_goes_out_over_verified_tls():
    upload = ini(JOURNALD / "journal-upload.conf")["Upload"]
    assert upload["URL"].startswith("https://")
    assert {"ServerKeyFile", "ServerCertificateFile", "TrustedCertificateFile"} <= set(upload)
    assert upload["TrustedCertificateFile"] != "all"  # "all" would turn verification off
