"""The code passes the project's linter (ruff, configured in pyproject.toml), and every ``# noqa`` says why."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["segbench", "scripts", "tests", "hydra_plugins", "setup.py"]
#: ``# noqa: E402 - <reason>`` / ``# noqa: F401 (reason)``: the codes, then at least a few words of reason
NOQA_WITH_REASON = re.compile(r"#\s*noqa:\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*\s*(?:-|\(|:)?\s*\S.{3,}")


def ruff() -> list[str]:
    found = shutil.which("ruff")
    if found:
        return [found]
    try:
        import ruff as _ruff  # noqa: F401 - only to see whether the module is installed
    except ImportError:
        pytest.fail("ruff is not installed: pip install -e \".[dev]\" installs it")
    return [sys.executable, "-m", "ruff"]


def test_the_code_passes_ruff():
    proc = subprocess.run([*ruff(), "check", "--no-cache", *CHECKED], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def python_files() -> list[Path]:
    files = [ROOT / "setup.py"]
    for folder in CHECKED[:-1]:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def noqa_comments(path: Path) -> list[tuple[int, str]]:
    """``(line, comment)`` of every comment in ``path`` that holds a noqa marker (comments only: a string
    that mentions one does not count)."""
    with open(path, "rb") as handle:
        return [(token.start[0], token.string) for token in tokenize.tokenize(handle.readline)
                if token.type == tokenize.COMMENT and re.search(r"#\s*noqa\b", token.string)]


def test_every_noqa_gives_a_reason():
    bare = [f"{path.relative_to(ROOT)}:{line}: {comment}" for path in python_files()
            for line, comment in noqa_comments(path) if not NOQA_WITH_REASON.search(comment)]
    assert not bare, "a noqa without a written reason:\n" + "\n".join(bare)


def test_the_noqa_rule_itself():
    noqa = "# noqa"
    assert NOQA_WITH_REASON.search(f"x = 1  {noqa}: E731 - a named one-liner reads better here")
    assert NOQA_WITH_REASON.search(f"import a  {noqa}: F401 (registers the losses)")
    assert not NOQA_WITH_REASON.search(f"import a  {noqa}: F401")
    assert not NOQA_WITH_REASON.search(f"import a  {noqa}")
