"""Callback signatures: only the provider's exact bytes, signed with our secret, recently, pass."""

from __future__ import annotations

import pytest

from dropsim.errors import InvalidRequest
from dropsim.payments.signing import SignatureError, sign, verify

SECRET = "whsec_" + "s" * 32
BODY = b'{"id":"evt_1","type":"charge.succeeded","data":{"amount_cents":1500}}'
NOW = 1_750_000_000.0


def rejection(header: str | None, *, body: bytes = BODY, now: float = NOW) -> str:
    with pytest.raises(SignatureError) as raised:
        verify(SECRET, body, header, now)
    return raised.value.code


def test_a_signature_made_by_sign_verifies_and_yields_its_timestamp() -> None:
    header = sign(SECRET, BODY, NOW)

    assert header.startswith(f"t={int(NOW)},v1=")
    assert verify(SECRET, BODY, header, NOW) == int(NOW)
    assert verify(SECRET, BODY, header, NOW + 299) == int(NOW)  # within the tolerance


def test_a_tampered_body_is_refused() -> None:
    header = sign(SECRET, BODY, NOW)

    assert rejection(header, body=BODY.replace(b"1500", b"1")) == "bad_signature"
    assert rejection(header, body=BODY + b" ") == "bad_signature"


def test_a_signature_made_with_another_secret_is_refused() -> None:
    assert rejection(sign("another-secret", BODY, NOW)) == "bad_signature"


def test_a_swapped_timestamp_breaks_the_signature() -> None:
    mac = sign(SECRET, BODY, NOW).split(",v1=")[1]

    assert rejection(f"t={int(NOW) + 60},v1={mac}", now=NOW + 60) == "bad_signature"


def test_an_old_timestamp_is_refused_as_stale() -> None:
    assert rejection(sign(SECRET, BODY, NOW - 301)) == "stale_signature"


def test_a_timestamp_too_far_in_the_future_is_refused_as_stale() -> None:
    assert rejection(sign(SECRET, BODY, NOW + 301)) == "stale_signature"


@pytest.mark.parametrize(
    "header",
    ["", "garbage", "t=abc,v1=00", "v1=deadbeef", f"t={int(NOW)}", f"t={int(NOW)},v0=00"],
)
def test_a_missing_or_malformed_header_is_refused(header: str) -> None:
    code = rejection(header)
    assert code == ("missing_signature" if not header else "malformed_signature")


def test_a_missing_header_is_refused() -> None:
    assert rejection(None) == "missing_signature"


def test_any_matching_v1_entry_is_enough_for_secret_rotation() -> None:
    good = sign(SECRET, BODY, NOW).split(",v1=")[1]
    old = sign("retired-secret", BODY, NOW).split(",v1=")[1]

    assert verify(SECRET, BODY, f"t={int(NOW)},v1={old},v1={good}", NOW) == int(NOW)


def test_signature_errors_are_400_invalid_requests() -> None:
    error = SignatureError("x", code="stale_signature")
    assert isinstance(error, InvalidRequest)
    assert error.status == 400
