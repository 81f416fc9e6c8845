"""Developer and CI sessions: `nox` runs lint and tests; `nox -s bench` prints benchmark figures."""

from __future__ import annotations

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
