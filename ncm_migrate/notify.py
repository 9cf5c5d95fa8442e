"""The built-in notifier: each run's summary POSTed as JSON to `notify.webhook_url`, with a
Slack-compatible `text`. A webhook that is down never fails the run; its URL's path and
query (where the secret lives) are never shown.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


def mask_webhook(url: str) -> str:
    """`scheme://host/***`: enough to say which service, nothing of the secret."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    hidden = "/***" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{hidden}"


def slack_text(summary: Mapping[str, Any]) -> str:
    """One line a chat channel shows: outcome, command, environment, services, time."""
    mark = {"succeeded": "✅", "failed": "❌"}.get(str(summary.get("outcome")), "•")
    services = ", ".join(summary.get("services") or ()) or "no service"
    seconds = float(summary.get("duration_ms") or 0) / 1000
    text = (f"{mark} ncm-migrate {summary.get('command', 'migrate')} {summary.get('outcome')} "
            f"in {summary.get('environment')}: {services} ({seconds:.1f}s)")
    if summary.get("error"):
        text += f"\n{summary['error']}"
    return text


def send_webhook(
    url: str,
    summary: Mapping[str, Any],
    *,
    timeout_s: float,
    retries: int,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """POST `summary` (plus `text`) to `url`, trying `retries` more times after a failure
    (1s, 2s, 4s... apart). None once delivered, else why it was not (URL masked)."""
    body = json.dumps({**summary, "text": slack_text(summary)}, default=str).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "ncm-migrate"})
    why = "not sent"
    for attempt in range(retries + 1):
        if attempt:
            sleep(min(2.0 ** (attempt - 1), 30.0))
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                response.read()
            return None
        except urllib.error.HTTPError as exc:
            why = f"answered HTTP {exc.code}"
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                break  # the request itself is wrong: another try gets the same answer
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            why = f"could not be reached ({type(reason).__name__}: {reason})"
    tries = f"{attempt + 1} attempt{'s' * (attempt > 0)}"
    return f"the webhook {mask_webhook(url)} {why} after {tries}".replace(url, mask_webhook(url))
