"""Timestamps: stored as epoch seconds (portable across SQL backends), shown as aware datetimes."""

from __future__ import annotations

from datetime import UTC, datetime


def to_datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def to_epoch(moment: datetime) -> float:
    return moment.timestamp()
