"""Tokens: verified once per process, and never honoured past their expiry, cached or not."""

from __future__ import annotations

import time

import jwt
import pytest

from dropsim.accounts.models import Role
from dropsim.errors import AuthenticationFailed
from dropsim.gateway.tokens import Principal, TokenIssuer, VerifiedTokens

SECRET = "test-secret-" + "x" * 32


def test_a_token_names_its_user_and_a_repeat_is_not_verified_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issuer = TokenIssuer(SECRET, 3600)
    token = issuer.issue("usr_1", Role.BUYER)
    assert issuer.verify(token) == Principal("usr_1", Role.BUYER)
    import dropsim.gateway.tokens as tokens

    def no_more_decoding(*_: object, **__: object) -> None:
        raise AssertionError("verified twice")

    monkeypatch.setattr(tokens.Token, "decode", no_more_decoding)
    assert issuer.verify(token) == Principal("usr_1", Role.BUYER)


def test_forged_and_expired_tokens_are_refused() -> None:
    issuer = TokenIssuer(SECRET, 3600)
    forged = TokenIssuer("another-secret-" + "y" * 32, 3600).issue("usr_1", Role.ADMIN)
    with pytest.raises(AuthenticationFailed):
        issuer.verify(forged)
    # (the issuer will not mint one in the past: sign one by hand)
    past = int(time.time()) - 10
    expired = jwt.encode(
        {"sub": "usr_1", "exp": past, "iat": past - 60, "role": "buyer"}, SECRET, "HS256"
    )
    with pytest.raises(AuthenticationFailed):
        issuer.verify(expired)


def test_a_remembered_token_lapses_with_its_expiry_and_the_oldest_go_first() -> None:
    verified: VerifiedTokens[str] = VerifiedTokens(capacity=2)
    verified.put("lapsed", time.time() - 1, "a")
    assert verified.get("lapsed") is None
    verified.put("t1", time.time() + 60, "one")
    verified.put("t2", time.time() + 60, "two")
    verified.put("t3", time.time() + 60, "three")
    assert (verified.get("t1"), verified.get("t2"), verified.get("t3")) == (None, "two", "three")
