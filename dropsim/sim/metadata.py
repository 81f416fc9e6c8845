"""Run metadata for reports: git revision, versions, machine, seed (what makes runs comparable)."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from dropsim import __version__
from dropsim.sim.scenario import Scenario

PACKAGES = ("locust", "litestar", "uvicorn", "redis", "fakeredis", "hdrhistogram", "plotly")


def git_revision(directory: Path | None = None) -> str:
    """The commit checked out where dropsim's source lives (+ `-dirty` with local changes)."""
    where = directory or Path(__file__).resolve().parents[2]
    try:
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return revision or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def run_metadata(scenario: Scenario, load_workers: int) -> dict[str, Any]:
    return {
        "scenario": scenario.name,
        "profile": scenario.profile,
        "seed": scenario.seed,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "dropsim": __version__,
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in PACKAGES},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average": [round(value, 2) for value in os.getloadavg()],
        },
        "load_workers": load_workers,
    }
