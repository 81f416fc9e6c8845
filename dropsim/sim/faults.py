"""Faults during a run: the simulated payment provider fails or slows for a while, changed
through its control route, and is put back as the scenario describes it afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from dropsim.sim.scenario import Scenario


def fault_steps(
    scenario: Scenario, go_live_at: float
) -> Iterator[tuple[float, str, dict[str, float]]]:
    baseline = scenario.payments
    for fault in scenario.faults:
        changes = fault.changes()
        restore = {name: float(getattr(baseline, name)) for name in changes}
        if "latency_median_ms" in changes or "latency_p99_ms" in changes:
            # the provider refuses p99 < median: always send both
            for name in ("latency_median_ms", "latency_p99_ms"):
                changes.setdefault(name, float(getattr(baseline, name)))
                restore[name] = float(getattr(baseline, name))
        start = go_live_at + fault.at_seconds
        text = ", ".join(f"{name}={value:g}" for name, value in changes.items())
        yield start, f"start payments fault: {text}", changes
        yield start + fault.duration_seconds, "end payments fault", restore


def apply_fault(provider_url: str, change: dict[str, float]) -> str | None:
    """Send `change` to the provider's control route; why it failed, or None."""
    try:
        response = httpx.put(f"{provider_url}/v1/simulation/behaviour", json=change, timeout=5)
    except httpx.HTTPError as exc:
        return str(exc)
    return None if response.status_code == 200 else response.text[:200]
