"""Developer and CI sessions: `nox` runs lint and tests; `nox -s budgets` runs every scenario's
`ci` profile against its budgets; `nox -s bench` prints benchmark figures.

Sessions run in the environment nox itself runs in (the README's `.venv`, where
`pip install -e ".[test]"` put everything), and call each tool through that interpreter: no
per-session virtualenv to build (a minute or two of every CI run) and no PATH lookups.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.error_on_missing_interpreters = True

PYTHON = sys.executable


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The test suite; real Redis/PostgreSQL tests run when DROPSIM_TEST_*_URL are set (CI)."""
    session.run(PYTHON, "-m", "pytest", *session.posargs)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff (lint and format) and mypy --strict."""
    paths = ["dropsim", "tests", "benchmarks", "noxfile.py"]
    session.run(PYTHON, "-m", "ruff", "check", *paths)
    session.run(PYTHON, "-m", "ruff", "format", "--check", *paths)
    session.run(PYTHON, "-m", "mypy")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Benchmarks that print figures (never pass/fail on time)."""
    session.run(PYTHON, "benchmarks/seed_follows.py", *session.posargs)
    session.run(PYTHON, "benchmarks/sse_fanout.py")
    session.run(PYTHON, "benchmarks/rate_limit.py")


@nox.session(python=False)
def budgets(session: nox.Session) -> None:
    """Every scenario's `ci` profile on embedded backends: fails on a breached budget, an invalid
    measurement or a broken audit (reports in reports/<scenario>/<run>/)."""
    for scenario in sorted(Path("scenarios").glob("*.toml")):
        session.run(
            PYTHON,
            "-m",
            "dropsim.cli",
            "simulate",
            scenario.stem,
            "--profile",
            "ci",
            *session.posargs,
        )
