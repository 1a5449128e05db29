"""The customer display page, ``GET /display/{lane}``, for the tablets and second screens at a till.

A page cannot send ``Authorization``, so each lane's page carries a read-only key in its address
(``?key=``): HMAC-SHA256 of the lane under a secret the till holds (``customer_display.key``, else
the API token).  The key opens that lane's page and its screen stream and nothing else, and it
cannot be turned back into the secret.  With neither secret set the API is open on loopback only,
and so is the page.  The page and its stream are read-only and stand behind the API's own
Host/Origin guard; the stream carries the lane's screens (``tillplug.display.hub``), never events.

The page writes text with ``textContent`` only, runs only the script carrying this answer's nonce
(Content-Security-Policy), and sends no referrer, so its key does not leak to anything it loads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
from typing import Any

from tillplug.receipts.templates import SlipContext

KEY_LABEL = "tillplug customer display, lane {lane}"
LABELS = ("Member", "Balance", "Points used", "Points earned", "Voucher accepted", "Voucher refused")


def lane_key(secret: str, lane: int) -> str:
    """The page key for one lane: 22 URL-safe characters (128 bits)."""
    mac = hmac.new(secret.encode(), KEY_LABEL.format(lane=lane).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:16]).decode().rstrip("=")


class DisplayPages:
    def __init__(self, secret: str | None, slip: SlipContext, idle_text: list[str]) -> None:
        self._secret = secret
        self.slip = slip
        self.idle_text = idle_text

    def allowed(self, lane: int, key: str | None) -> bool:
        if self._secret is None:
            return True
        return key is not None and hmac.compare_digest(key.encode(), lane_key(self._secret, lane).encode())

    def url(self, base: str, lane: int) -> str:
        """The address a display for this lane opens (``tillplug display-url`` prints it)."""
        query = f"?key={lane_key(self._secret, lane)}" if self._secret is not None else ""
        return f"{base.rstrip('/')}/display/{lane}{query}"

    def page(self, lane: int) -> tuple[str, dict[str, str]]:
        """The page's HTML and its headers (a fresh nonce each time)."""
        nonce = secrets.token_urlsafe(16)
        _ = self.slip._
        config = {
            "lane": lane,
            "labels": {label: _(label) for label in LABELS},
            "locale": self.slip.locale.replace("_", "-"),
        }
        idle = "".join(f"<div>{html.escape(line)}</div>" for line in self.idle_text)
        body = PAGE.format(
            nonce=nonce,
            lane=lane,
            language=html.escape(self.slip.language[:2]),
            config=html.escape(json.dumps(config), quote=True),
            idle=idle,
            script=SCRIPT,
        )
        headers = {
            "Content-Security-Policy": (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ),
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
        return body, headers

    @staticmethod
    def screen_data(view: dict[str, Any]) -> str:
        return f"event: screen\ndata: {json.dumps(view, separators=(',', ':'))}\n\n"


SCRIPT = """
const root = document.getElementById("display");
const config = JSON.parse(root.dataset.config);
const numbers = new Intl.NumberFormat(config.locale);
const show = (id, text) => {
  const row = document.getElementById(id);
  row.hidden = text === null;
  row.querySelector(".value").textContent = text === null ? "" : text;
};
const key = new URLSearchParams(location.search).get("key");
const source = new EventSource(`/display/${config.lane}/events` + (key ? `?key=${encodeURIComponent(key)}` : ""));
source.addEventListener("screen", (message) => {
  const s = JSON.parse(message.data);
  const idle = s.state === "idle";
  document.getElementById("idle").hidden = !idle;
  document.getElementById("loyalty").hidden = idle;
  root.dataset.state = s.state;
  root.dataset.news = s.news;
  show("member", s.member);
  show("balance", s.balance === null ? null : numbers.format(s.balance));
  show("spent", s.spent ? numbers.format(s.spent) : null);
  show("earned", s.earned === null ? null : "+" + numbers.format(s.earned));
  show("voucher", s.voucher);
  show("refused", s.voucher_refused);
});
source.addEventListener("open", () => { root.dataset.connected = "yes"; });
source.addEventListener("error", () => { root.dataset.connected = "no"; });
"""

PAGE = """<!doctype html>
<html lang="{language}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Lane {lane}</title>
<style nonce="{nonce}">
  body {{ margin: 0; font: 6vmin/1.3 system-ui, "DejaVu Sans", sans-serif; background: #10243e; color: #fff; }}
  main {{ display: flex; flex-direction: column; justify-content: center; min-height: 100vh; padding: 0 8vw; }}
  #idle div {{ font-size: 9vmin; margin: 0.2em 0; text-align: center; }}
  .row {{ display: flex; justify-content: space-between; border-bottom: 1px solid #3d5a80; padding: 0.3em 0; }}
  .row .value {{ font-weight: bold; }}
  #refused .value {{ color: #ffb4a2; }}
  [hidden] {{ display: none !important; }}
  #voucher .value, #earned .value {{ color: #b7e4c7; }}
</style>
</head>
<body>
<main id="display" data-config="{config}" data-state="idle" data-connected="no">
  <section id="idle">{idle}</section>
  <section id="loyalty" hidden>
    <div class="row" id="member" hidden><span class="label">Member</span><span class="value"></span></div>
    <div class="row" id="balance" hidden><span class="label">Balance</span><span class="value"></span></div>
    <div class="row" id="spent" hidden><span class="label">Points used</span><span class="value"></span></div>
    <div class="row" id="earned" hidden><span class="label">Points earned</span><span class="value"></span></div>
    <div class="row" id="voucher" hidden><span class="label">Voucher accepted</span><span class="value"></span></div>
    <div class="row" id="refused" hidden><span class="label">Voucher refused</span><span class="value"></span></div>
  </section>
</main>
<script nonce="{nonce}">
for (const label of document.querySelectorAll(".label")) {{
  label.textContent = JSON.parse(document.getElementById("display").dataset.config).labels[label.textContent];
}}
{script}
</script>
</body>
</html>
"""
