"""The documentation cannot rot: every ``python`` block of README.md and docs/*.md runs.

A block that is a fragment, not a complete program, is preceded by the line ``<!-- no-run -->``.
Each runnable block runs in its own interpreter (a fresh namespace, no state shared with the test
process or with other blocks), with warnings as errors, bounded by a timeout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NO_RUN = "<!-- no-run -->"
TIMEOUT = 60.0  # seconds per block

_FENCE = re.compile(r"^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@attrs.frozen
class Block:
    """One fenced ``python`` block of a Markdown document."""

    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    runs: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """Return the ``python`` blocks of *path*, marking those preceded by ``<!-- no-run -->``."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        blocks.append(
            Block(
                path=path,
                line=text.count("\n", 0, match.start()) + 1,
                code=match.group("code"),
                runs=before != NO_RUN,
            )
        )
    return blocks


ALL_BLOCKS = [block for path in DOCUMENTS if path.is_file() for block in python_blocks(path)]
RUNNABLE = [block for block in ALL_BLOCKS if block.runs]


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_block_runs(block: Block, tmp_path: Path) -> None:
    """A complete-program code block of the docs runs to completion and exits 0."""
    script = tmp_path / "block.py"
    # Pad with blank lines so tracebacks point at the block's line in the Markdown file.
    script.write_text("\n" * block.line + block.code, encoding="utf-8")
    # The checkout comes first on the path, so the blocks test this code even if not installed.
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    try:
        done = subprocess.run(
            [sys.executable, "-W", "error", str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = b"".join(
            part.encode() if isinstance(part, str) else part or b""
            for part in (exc.stdout, exc.stderr)
        )
        pytest.fail(f"{block.id} did not finish within {TIMEOUT:.0f} s:\n{output.decode()}")
    assert done.returncode == 0, f"{block.id} failed:\n{done.stdout}{done.stderr}"


def test_readme_has_a_runnable_quickstart() -> None:
    """README.md has at least one runnable Python block, so the quickstart is really exercised."""
    assert any(block.path.name == "README.md" for block in RUNNABLE)


def test_no_run_marker_precedes_a_block() -> None:
    """Every ``<!-- no-run -->`` marker directly precedes a python block (no stray markers)."""
    for path in DOCUMENTS:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        markers = text.count(NO_RUN)
        marked = sum(not block.runs for block in python_blocks(path))
        assert markers == marked, f"{path.name}: {markers} markers but {marked} skipped blocks"
