"""Identifiers: prefixed, time-ordered, 80 random bits (ULID-like), safe to mint in any process."""

from __future__ import annotations

import base64
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())
"""RFC 4648 base32 digits -> ours (the same 5-bit groups, most significant first)."""


def _base32(data: bytes) -> str:
    return base64.b32encode(data).translate(_CROCKFORD).decode()


def new_id(prefix: str) -> str:
    """`<prefix>_<10 chars of ms time><16 chars of randomness>`; sorts by creation time."""
    millis = time.time_ns() // 1_000_000
    # 50 bits of time: the first 10 digits of those bits followed by 30 zero bits
    stamp = _base32((millis << 30).to_bytes(10, "big"))[:10]
    return f"{prefix}_{stamp}{_base32(secrets.token_bytes(10))}"
