"""Which shard owns a key: jump consistent hash (Lamping & Veach, 2014) over BLAKE2b-64.

Stable across processes, machines and Python versions (no `hash()` randomisation), and when the
shard count grows from N to N+1 only 1/(N+1) of the keys move.
"""

from __future__ import annotations

from hashlib import blake2b

_MASK = (1 << 64) - 1


def key_hash(key: str) -> int:
    """A 64-bit hash of `key` that never changes."""
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big")


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash: the bucket in [0, buckets) for a 64-bit `key`."""
    if buckets < 1:
        raise ValueError("buckets must be >= 1")
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & _MASK
        jump = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def shard_of(key: str, shards: int) -> int:
    """The shard in [0, shards) that owns `key`."""
    return jump_hash(key_hash(key), shards)
