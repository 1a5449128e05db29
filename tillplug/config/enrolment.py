"""Enrolment codes: what a technician scans at a new till so that it knows who it is.

A code is ``TPE1:<payload>.<signature>`` (base64url), the payload a small JSON object (till id,
branch id, the URL of the chain's config layer, optionally the relay token, issue and expiry
times) and the signature Ed25519 by the chain's enrolment key over a fixed prefix and the
payload.  The chain keeps the private key; the till has the public half (``enrolment.pub``
beside the config file, or ``[enrolment] public_key`` in the base layer).  A code fits a QR code
on an A4 sheet; the relay token inside it is a secret, so the code is never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tillplug.config.loader import Secret
from tillplug.config.model import IDENT_RE, _http_url
from tillplug.errors import ConfigError, EnrolmentRefused
from tillplug.logs import never_log

PREFIX = "TPE1:"
SIGNED_CONTEXT = b"tillplug enrolment code v1\x00"  # a signature made for anything else never verifies here
DEFAULT_VALID_DAYS = 7
MAX_VALID_DAYS = 365
DAMAGED = "the enrolment code is damaged (not readable): scan it again, or ask for a new one"
MAX_CODE = 2000
BASE64URL = re.compile(r"[A-Za-z0-9_-]+")  # characters: a QR code a till's 2D scanner reads in one go


@dataclass(frozen=True)
class Enrolment:
    till_id: str
    branch_id: str
    config_url: str
    relay_token: Secret | None
    issued: int
    expires: int


def is_enrolment_code(text: str) -> bool:
    return text.startswith(PREFIX)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not BASE64URL.fullmatch(text):  # the decoder itself skips characters it does not know
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_config_url(url: str) -> str:
    """Where the chain's layer comes from: a file the image carries, or https (http only on loopback)."""
    if url.startswith("file:///"):
        return url
    try:
        return _http_url(url)
    except ValueError:
        raise ValueError("must be file:///path or an https:// URL of the chain's config layer") from None


def make_code(
    key: Ed25519PrivateKey,
    *,
    till_id: str,
    branch_id: str,
    config_url: str,
    relay_token: str | None = None,
    valid_days: float = DEFAULT_VALID_DAYS,
    now: float | None = None,
) -> str:
    for name, value in (("till id", till_id), ("branch id", branch_id)):
        if not IDENT_RE.match(value):
            raise ConfigError(f"the {name} {value!r} must be 1-64 letters, digits, '.', '_' or '-'")
    try:
        check_config_url(config_url)
    except ValueError as exc:
        raise ConfigError(f"the config URL {exc}") from None
    if not 0 < valid_days <= MAX_VALID_DAYS:
        raise ConfigError(f"a code is valid for more than 0 and at most {MAX_VALID_DAYS} days")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"t": till_id, "b": branch_id, "c": config_url, "iat": issued}
    payload["exp"] = issued + int(valid_days * 86400)
    if relay_token:
        payload["r"] = relay_token
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    code = f"{PREFIX}{_b64(body)}.{_b64(key.sign(SIGNED_CONTEXT + body))}"
    if len(code) > MAX_CODE:
        raise ConfigError(f"the code would be {len(code)} characters; at most {MAX_CODE} fit a till's scanner")
    return code


def read_code(text: str, keys: list[Ed25519PublicKey], *, now: float | None = None) -> Enrolment:
    """The enrolment in ``text``, or EnrolmentRefused saying why (never quoting the code)."""
    never_log(text)  # it may carry the relay token: masked in every log line from here on
    if not is_enrolment_code(text):
        raise EnrolmentRefused("this is not an enrolment code")
    if len(text) > MAX_CODE:
        raise EnrolmentRefused("the enrolment code is too long to be one of ours: refused")
    payload_part, dot, signature_part = text.removeprefix(PREFIX).partition(".")
    if not dot or not signature_part:
        raise EnrolmentRefused("the enrolment code is unsigned: refused (ask the chain for a signed code)")
    try:
        body, signature = _unb64(payload_part), _unb64(signature_part)
    except (binascii.Error, ValueError):
        raise EnrolmentRefused(DAMAGED) from None
    if not keys:
        raise EnrolmentRefused("this till has no enrolment key, so it cannot check any code (see enrolment.pub)")
    if not any(_verifies(key, signature, body) for key in keys):
        raise EnrolmentRefused(
            "the enrolment code is not signed by this chain's enrolment key (a code of another chain, "
            "or altered): refused"
        )
    return _enrolment(body, time.time() if now is None else now)


def _verifies(key: Ed25519PublicKey, signature: bytes, body: bytes) -> bool:
    try:
        key.verify(signature, SIGNED_CONTEXT + body)
    except InvalidSignature:
        return False
    return True


def _enrolment(body: bytes, now: float) -> Enrolment:
    """The signed payload's fields, checked as strictly as the chain's own tool wrote them."""
    try:
        data = json.loads(body)
        till_id, branch_id, url = data["t"], data["b"], data["c"]
        issued, expires, relay = int(data["iat"]), int(data["exp"]), data.get("r")
        if not (isinstance(till_id, str) and IDENT_RE.match(till_id) and isinstance(branch_id, str)):
            raise ValueError("till id")
        if not IDENT_RE.match(branch_id) or not isinstance(url, str) or not isinstance(relay, str | None):
            raise ValueError("branch id, url or relay token")
        check_config_url(url)
    except (ValueError, KeyError, TypeError):
        raise EnrolmentRefused("the enrolment code is signed but its content is not valid: ask for a new one") from None
    if now > expires:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
        raise EnrolmentRefused(f"the enrolment code expired on {when}: ask the chain for a new one")
    if issued > now + 86400:
        raise EnrolmentRefused("the enrolment code is dated in the future: check the till's clock")
    return Enrolment(till_id, branch_id, url, Secret(relay) if relay else None, issued, expires)


def new_key() -> tuple[bytes, bytes]:
    """A new enrolment key pair for a chain: (private PEM, public PEM)."""
    key = Ed25519PrivateKey.generate()
    pem = serialization.Encoding.PEM
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a readable PEM private key ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key (make one with tillplug enrol keygen)")
    return key


def load_public_keys(path: Path) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key in the PEM file (two during a key rotation: the old and the new)."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read ({type(exc).__name__})") from None
    keys = []
    end = "-----END PUBLIC KEY-----"
    for block in (b + end for b in text.split(end) if "-----BEGIN PUBLIC KEY-----" in b):
        try:
            key = serialization.load_pem_public_key(block.strip().encode())
        except ValueError:
            raise ConfigError(f"{path} holds a public key that cannot be read") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{path} holds a key that is not Ed25519")
        keys.append(key)
    return keys


def fingerprint(key: Ed25519PublicKey) -> str:
    """A short name for the key, for the slip and the chain's records: SHA-256 of its raw form, 16 hex digits."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
