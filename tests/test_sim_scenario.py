"""Scenario files: validation errors name the file and the field; profiles lay over the base."""

from __future__ import annotations

from pathlib import Path

import pytest

from dropsim.sim.scenario import (
    Arrival,
    ScenarioError,
    list_scenarios,
    load_scenario,
    scenario_dir,
)

BASE = """
description = "test"
[world]
followers = 1000
[drop]
stock = 50
[load.rush]
buyers = 200
[budgets.endpoints.order]
p99_ms = 500
[profiles.ci]
load.rush.buyers = 20
drop.go_live_after_seconds = 3
[profiles.big.world]
followers = 5000
"""


def write(directory: Path, text: str, name: str = "test-drop") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def test_default_profile_is_the_base_tables(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    scenario = load_scenario("test-drop", directory=tmp_path)
    assert scenario.name == "test-drop"
    assert scenario.profile == "default"
    assert scenario.load.rush.buyers == 200
    assert scenario.budgets.endpoints["order"].p99_ms == 500


def test_a_profile_overrides_only_what_it_names(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    ci = load_scenario("test-drop", "ci", directory=tmp_path)
    assert ci.profile == "ci"
    assert ci.load.rush.buyers == 20
    assert ci.drop.go_live_after_seconds == 3
    assert ci.drop.stock == 50  # from the base
    assert ci.world.followers == 1000
    assert load_scenario("test-drop", "big", directory=tmp_path).world.followers == 5000


def test_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    with pytest.raises(ScenarioError, match=r"no profile 'huge' \(known: default, big, ci\)"):
        load_scenario("test-drop", "huge", directory=tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("[drop]\nstock = 0", r"drop\.stock: Input should be greater than or equal to 1"),
        ("[drop]\nstokc = 5", r"drop\.stokc: Extra inputs are not permitted"),
        ('[load.rush]\narrival = "sometimes"', r"load\.rush\.arrival: Input should be 'burst'"),
        ("[budgets.endpoints.order]\np99_ms = -1", r"budgets\.endpoints\.order\.p99_ms"),
        ("[load.rush]\nbuyers = 5000", r"load needs 5000 followers .* world\.followers is 1000"),
        ("[budgets]\naudit_clean = false", r"budgets\.audit_clean"),
        (
            "[[faults]]\nat_seconds = 1\nduration_seconds = 2\nfailure_rate = 3",
            r"faults\.0\.failure_rate: Input should be less than or equal to 1",
        ),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path: Path, change: str, message: str) -> None:
    path = write(tmp_path, f"[world]\nfollowers = 1000\n{change}\n")
    with pytest.raises(ScenarioError, match=message) as caught:
        load_scenario("test-drop", directory=tmp_path)
    assert str(caught.value).startswith(str(path))


def test_an_error_in_a_profile_says_which_profile(tmp_path: Path) -> None:
    write(tmp_path, BASE.replace("load.rush.buyers = 20", "load.rush.buyers = -3"))
    with pytest.raises(ScenarioError, match=r"\(profile ci\): load\.rush\.buyers"):
        load_scenario("test-drop", "ci", directory=tmp_path)
    # listing validates every profile, so a broken one cannot hide until someone picks it
    with pytest.raises(ScenarioError, match=r"\(profile ci\)"):
        list_scenarios(tmp_path)


def test_broken_toml_and_unknown_names_are_one_line_errors(tmp_path: Path) -> None:
    write(tmp_path, "[world\nfollowers = 3")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario("test-drop", directory=tmp_path)
    with pytest.raises(ScenarioError, match=r"no scenario 'nope' \(known: test-drop\)"):
        load_scenario("nope", directory=tmp_path)


def test_server_table_becomes_dropsim_environment(tmp_path: Path) -> None:
    write(tmp_path, BASE + "\n[server]\nrate_limit_enabled = true\npayment_timeout_seconds = 5\n")
    scenario = load_scenario("test-drop", directory=tmp_path)
    assert scenario.server_environment() == {
        "DROPSIM_RATE_LIMIT_ENABLED": "true",
        "DROPSIM_PAYMENT_TIMEOUT_SECONDS": "5",
    }


def test_shipped_scenarios_validate_in_every_profile() -> None:
    found = {scenario.name: scenario for scenario in list_scenarios(scenario_dir())}
    assert {"celebrity-drop", "flash-crowd", "payment-outage"} <= set(found)
    for scenario in found.values():
        assert {"default", "ci", "full"} <= set(scenario.profiles)
    celebrity = load_scenario("celebrity-drop", "ci")
    assert celebrity.load.watchers.count > 0
    assert celebrity.load.rush.buyers > celebrity.drop.stock
    assert celebrity.load.rush.arrival is Arrival.FRONT_LOADED
    assert load_scenario("flash-crowd").load.bots.count > 0
    assert load_scenario("payment-outage").faults
