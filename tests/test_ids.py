"""Identifiers: their shape, and that they sort by the millisecond they were minted in."""

from __future__ import annotations

import re
import time

from dropsim.ids import _ALPHABET, new_id


def digits(value: int, width: int) -> str:
    """`value` in Crockford base32, most significant digit first (the reference encoding)."""
    out = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def test_an_id_is_its_prefix_its_millisecond_and_80_random_bits() -> None:
    before = time.time_ns() // 1_000_000
    minted = new_id("ord")
    after = time.time_ns() // 1_000_000
    assert re.fullmatch(r"ord_[0-9a-hjkmnp-tv-z]{26}", minted)
    stamp = minted[4:14]
    assert digits(before, 10) <= stamp <= digits(after, 10)
    assert len({new_id("ord")[14:] for _ in range(1000)}) == 1000


def test_ids_sort_by_the_time_they_were_minted() -> None:
    minted = []
    for _ in range(5):
        minted.append(new_id("x"))
        time.sleep(0.002)
    assert sorted(minted) == minted
