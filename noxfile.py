"""Developer sessions for litechan: ``nox -l`` lists them, ``nox`` runs the default set.

The supported Pythons are read from ``pyproject.toml`` (the ``Programming Language :: Python ::
3.X`` classifiers, else ``requires-python``), so adding a version there is the only change needed.
Versions that cannot be run on this machine are skipped; when none can, the Python running nox is
used, so ``nox -s tests`` always tests something.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CURRENT = f"{sys.version_info.major}.{sys.version_info.minor}"

nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False
nox.options.sessions = ["lint", "typecheck", "tests", "docs", "examples"]


def declared_pythons() -> list[str]:
    """Return the ``3.X`` versions pyproject.toml declares, oldest first."""
    project = PYPROJECT["project"]
    found = {
        m.group(1)
        for c in project.get("classifiers", [])
        if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c.strip()))
    }
    if not found:
        # No per-version classifiers: take every minor from the requires-python floor up to ours.
        floor = re.search(r">=\s*3\.(\d+)", project.get("requires-python", ""))
        low = int(floor.group(1)) if floor else sys.version_info.minor
        found = {f"3.{minor}" for minor in range(low, sys.version_info.minor + 1)}
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")))


def _runs(executable: str) -> bool:
    """Whether *executable* starts (a pyenv shim of an inactive version exists but fails)."""
    try:
        done = subprocess.run(
            [executable, "-c", "pass"], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _pyenv_interpreter(version: str) -> Path | None:
    """Return an interpreter for *version* installed by pyenv but not active, if any."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted((root / "versions").glob(f"{version}.*/bin/python{version}"))
    return candidates[-1] if candidates else None


def available_pythons() -> list[str]:
    """Return the declared versions this machine can run (never empty).

    A version installed by pyenv but not active is made reachable by a ``python3.X`` symlink in
    ``.nox/.pythons``, prepended to ``PATH`` — only versioned names, so ``python3`` is unchanged.
    """
    links = ROOT / ".nox" / ".pythons"
    usable: list[str] = []
    for version in declared_pythons():
        name = f"python{version}"
        if version == CURRENT or (shutil.which(name) and _runs(name)):
            usable.append(version)
            continue
        target = _pyenv_interpreter(version)
        if target is None or not _runs(str(target)):
            continue
        links.mkdir(parents=True, exist_ok=True)
        link = links / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        usable.append(version)
    if links.is_dir() and str(links) not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([str(links), os.environ.get("PATH", "")])
    return usable or [CURRENT]


PYTHONS = available_pythons()
# Single-interpreter sessions run on the oldest supported Python: what users on the floor get.
DEFAULT_PYTHON = PYTHONS[0]


@nox.session(python=PYTHONS)
@nox.parametrize("extras", ["redis,test,test-redis", "test"], ids=["all-extras", "no-redis"])
def tests(session: nox.Session, extras: str) -> None:
    """Run the test suite, with and without the optional Redis client installed."""
    session.install("-e", f".[{extras}]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def lint(session: nox.Session) -> None:
    """Check lint rules and formatting with ruff (no files are changed)."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=DEFAULT_PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check the package and the typed usage example with mypy --strict."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "litechan", "tests/typing/api.py")
    # The example, benchmark and this file are code users copy: hold them to the same bar.
    session.run("mypy", "--strict", "examples", "benchmarks", "noxfile.py")


@nox.session(python=DEFAULT_PYTHON)
def docs(session: nox.Session) -> None:
    """Run every Python block of README.md and docs/*.md, and check the public names."""
    session.install("-e", ".[test]")
    checks = ["tests/test_docs.py", "tests/test_all_attributes.py"]
    session.run("python", "-m", "pytest", *checks, *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def examples(session: nox.Session) -> None:
    """Run the quickstart and the voice agent; each exits non-zero when a reply is lost."""
    session.install("-e", ".[examples]")
    session.run("python", "examples/quickstart.py")
    session.run("python", "examples/voice_agent.py", *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def bench(session: nox.Session) -> None:
    """Run the "replies" benchmark (pass arguments after ``--``, e.g. ``-- --sessions 500``)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/replies.py", *session.posargs)
