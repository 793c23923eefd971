"""The documentation: a short README that points into docs/, a site that builds strictly, no broken internal link.

``mkdocs build --strict`` turns every warning into an error: a link to a missing page or anchor, a page left out
of the navigation, a docstring of the API reference that names a parameter the function does not have
(mkdocs.yml, ``validation``). The README is not part of the site, so its links are checked here the same way.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
pytestmark = pytest.mark.skipif(not (REPO / "mkdocs.yml").is_file(), reason="not a source checkout")


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (MkDocs) gives a heading."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text, fenced, found = page.read_text(), False, set()
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^#{1,6} (.+)$", line)):
            found.add(slug(match.group(1)))
    return found


def links(page: Path) -> list[str]:
    """Every Markdown link and image target of ``page`` outside code blocks and code spans."""
    out, fenced = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out += re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line))
    return out


def test_the_readme_is_short_and_keeps_the_test_command():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert re.search(r"<!-- test-command -->\n```bash\n.*python -m pytest", text)  # .ci/run reads this block
    for page in ("getting-started", "outputs", "use-the-model", "losses", "paper", "clusters", "performance",
                 "extending", "troubleshooting", "api"):
        assert f"(docs/{page}.md)" in text, f"the README does not link docs/{page}.md"


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_no_internal_link_or_anchor_is_broken(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):   # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        where = page if not path else (page.parent / path).resolve()
        if not where.exists():
            broken.append(f"{target}: no such file")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


@pytest.mark.slow  # imports the package for the API reference; ~10 s
def test_the_site_builds_strictly(tmp_path):
    """The docs extra (mkdocs, mkdocstrings) builds the site with warnings as errors, the API reference included."""
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, "mkdocs build --strict failed (pip install -e \".[docs]\"):\n" + proc.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("segbench.losses.SegLoss", "segbench.losses.LossInputs", "segbench.losses.build_loss",
                 "segbench.data.DataSource", "segbench.metrics.evaluate_case", "segbench.data.SegDataModule",
                 "segbench.data.PatchDataModule"):
        assert name in api, f"the API reference lacks {name}"
    assert "AFW" in (tmp_path / "site" / "losses" / "index.html").read_text()
