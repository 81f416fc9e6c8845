"""Webhook signatures, Stripe style: `Dropsim-Signature: t=<unix>,v1=<hex HMAC-SHA256>`.

The MAC covers `f"{t}."` followed by the raw body bytes, so the timestamp cannot be swapped
without breaking it; a timestamp outside the tolerance is refused, which bounds replays to a
few minutes (event-id dedupe covers the rest).
"""

from __future__ import annotations

import hashlib
import hmac

from dropsim.errors import InvalidRequest

SIGNATURE_HEADER = "Dropsim-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(InvalidRequest):
    """A callback whose signature is missing, malformed, wrong or outside the tolerance.

    `code` is one of `missing_signature`, `malformed_signature`, `bad_signature`,
    `stale_signature`.
    """

    code = "bad_signature"
    title = "Invalid signature"


def _mac(secret: str, body: bytes, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, now: float) -> str:
    """The `Dropsim-Signature` header value for `body` sent at `now` (epoch seconds)."""
    timestamp = int(now)
    return f"t={timestamp},v1={_mac(secret, body, timestamp)}"


def verify(
    secret: str,
    body: bytes,
    header: str | None,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> int:
    """Return the signed timestamp if `header` signs `body` with `secret` within `tolerance`
    seconds of `now` (either side); raise SignatureError otherwise.

    Several `v1=` entries are allowed (a sender rotating secrets signs with both); one match is
    enough. Comparison is constant-time.
    """
    if not header:
        raise SignatureError(f"send a {SIGNATURE_HEADER} header", code="missing_signature")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                timestamp = None
                break
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError(
            f"{SIGNATURE_HEADER} must look like t=<unix seconds>,v1=<hex>",
            code="malformed_signature",
        )
    expected = _mac(secret, body, timestamp)
    # check every candidate so the time taken does not depend on which one matched
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    if not matched:
        raise SignatureError("the signature does not match the body", code="bad_signature")
    if abs(now - timestamp) > tolerance:
        raise SignatureError(
            f"the signature's timestamp is more than {tolerance:g} s away from now",
            code="stale_signature",
        )
    return timestamp
