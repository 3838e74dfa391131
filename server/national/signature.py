"""x-tif-* request signatures (some provinces' gateways): who is calling the national door.

With `serve --auth token` every request carries

    x-tif-paasid     the institution (fixmedins_code)
    x-tif-timestamp  unix seconds
    x-tif-nonce      a random string, once per request
    x-tif-signature  hex SHA-256 of timestamp + token + nonce + timestamp

where token is the institution's secret from the world data (institutions.yaml `token`,
the same one gRPC's bearer token is). A request signed for an institution acts for it
only: the envelope's fixmedins_code must be the paasid (INSTITUTION_NOT_CALLER).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping

from settlesim.server.rules.reasons import Reason, Refusal

HEADERS = ("x-tif-paasid", "x-tif-timestamp", "x-tif-nonce", "x-tif-signature")
WINDOW_SECONDS = 300  # a timestamp further from the platform's clock is refused


def signature(timestamp: str, token: str, nonce: str) -> str:
    return hashlib.sha256(f"{timestamp}{token}{nonce}{timestamp}".encode()).hexdigest()


class SignatureCheck:
    """Checks x-tif-* headers against the institutions' tokens; a nonce is accepted once
    within the window (a replayed request is refused)."""

    MAX_NONCES = 100_000

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self.tokens = {code: token for code, token in tokens.items() if token}
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def institution(self, headers: Mapping[str, str], now: float | None = None) -> str:
        """The institution the request is signed for, or Refusal CALLER_UNAUTHENTICATED."""
        now = time.time() if now is None else now
        missing = [name for name in HEADERS if not headers.get(name)]
        if missing:
            raise Refusal(
                Reason.CALLER_UNAUTHENTICATED, f"the request is not signed: no {', '.join(missing)}"
            )
        paasid, stamp, nonce, signed = (headers[name] for name in HEADERS)
        token = self.tokens.get(paasid)
        if token is None:
            raise Refusal(
                Reason.CALLER_UNAUTHENTICATED, f"x-tif-paasid {paasid[:40]!r} is no institution with a token"
            )
        if not stamp.isdigit() or abs(now - int(stamp)) > WINDOW_SECONDS:
            raise Refusal(
                Reason.CALLER_UNAUTHENTICATED,
                f"x-tif-timestamp {stamp[:20]!r} is not unix seconds within {WINDOW_SECONDS} s of the platform's clock",
            )
        if not hmac.compare_digest(signature(stamp, token, nonce), signed.lower()):
            raise Refusal(
                Reason.CALLER_UNAUTHENTICATED, "x-tif-signature does not match (sha256 of ts+token+nonce+ts)"
            )
        with self._lock:
            for key, seen in list(self._seen.items()):  # oldest first: drop what left the window
                if now - seen <= WINDOW_SECONDS and len(self._seen) < self.MAX_NONCES:
                    break
                del self._seen[key]
            if (paasid, nonce) in self._seen:
                raise Refusal(
                    Reason.CALLER_UNAUTHENTICATED, "x-tif-nonce was already used: sign each request anew"
                )
            self._seen[(paasid, nonce)] = now
        return paasid
