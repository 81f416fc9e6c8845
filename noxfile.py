"""Developer and CI sessions: `nox` runs lint and tests; `nox -s budgets` runs every scenario's
`ci` profile against its budgets; `nox -s bench` prints benchmark figures."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite; real Redis/PostgreSQL tests run when DROPSIM_TEST_*_URL are set (CI)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format) and mypy --strict."""
    session.install("-e", ".[test]")
    session.run("ruff", "check", "dropsim", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "dropsim", "tests", "benchmarks", "noxfile.py")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks that print figures (never pass/fail on time)."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/seed_follows.py", *session.posargs)
    session.run("python", "benchmarks/sse_fanout.py")
    session.run("python", "benchmarks/rate_limit.py")


@nox.session
def budgets(session: nox.Session) -> None:
    """Every scenario's `ci` profile on embedded backends: fails on a breached budget, an invalid
    measurement or a broken audit (reports in reports/<scenario>/<run>/)."""
    session.install("-e", ".[test]")
    for scenario in sorted(Path("scenarios").glob("*.toml")):
        session.run("dropsim", "simulate", scenario.stem, "--profile", "ci", *session.posargs)
