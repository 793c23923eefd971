"""One-off migration tool: split the long README's sections into docs/ pages (kept for the record of the move).

    python scripts/split_readme.py README.long.md docs/

Every ``## `` section of the input goes to the page the table below names (an unknown section is an error, so
nothing is dropped silently); a section's quoted cross-references to other sections ("Add your own loss /
dataset") become links to the page and anchor where that section now lives.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: page file -> (page title, the README's ``## `` sections it holds, in order)
PAGES = {
    "getting-started.md": ("Getting started", ["Set-up and first run"]),
    "outputs.md": ("Outputs, metrics and tables", ["Reading the outputs", "Metrics", "Tables and figures"]),
    "use-the-model.md": ("Use the trained model", ["Use the trained model"]),
    "configs.md": ("Configs", ["How configs compose"]),
    "losses.md": ("Losses", ["The loss library"]),
    "models.md": ("Models", ["Models"]),
    "datasets.md": ("Datasets", ["Datasets"]),
    "paper.md": ("The AFW-Dice paper", ["Reproducing the AFW-Dice paper"]),
    "clusters.md": ("Sweeps, clusters and resuming", ["Sweeps, failures and what finished",
                                                      "Multi-GPU, clusters, resuming"]),
    "performance.md": ("Performance", ["Training on GPUs: loaders, host syncs, throughput"]),
    "extending.md": ("Extending segbench", ["Add your own loss / dataset"]),
    "troubleshooting.md": ("Troubleshooting", ["When something is wrong: bad input, faults, shared run directories"]),
}
#: sections left out: ``docs/layout.md`` already says all of it (every module, where a new piece goes)
DROPPED = {"Layout"}


def slug(text: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def sections(text: str) -> tuple[str, dict[str, str]]:
    """The preamble before the first ``## `` and each ``## `` section's body (without its heading line)."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return parts[0], {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def main(source: str, out_dir: str) -> None:
    text = Path(source).read_text()
    _, found = sections(text)
    placed = {name: page for page, (_, names) in PAGES.items() for name in names}
    unknown = [name for name in found if name not in placed and name not in DROPPED]
    if unknown:
        raise SystemExit(f"sections without a page: {unknown}; add them to PAGES")
    pages: dict[str, str] = {}
    anchors: dict[str, tuple[str, str | None]] = {}   # heading text -> (page, anchor; None: the page itself)
    for page, (title, names) in PAGES.items():
        single = len(names) == 1
        body = f"# {title}\n"
        for name in names:
            chunk = found.get(name, "")
            if single:  # the page is the section: its ### become ##
                chunk = re.sub(r"^###(#?) ", r"##\1 ", chunk, flags=re.M)
            else:
                chunk = f"\n## {name}\n" + chunk
            body += chunk
        for name in names:
            anchors.setdefault(name, (page, None if single else slug(name)))
        for heading in re.findall(r"^##+ (.+)$", body, flags=re.M):
            anchors.setdefault(heading.strip(), (page, slug(heading)))
        pages[page] = body
    pattern = re.compile(r'(?<![\[(])"(' + "|".join(re.escape(h) for h in sorted(anchors, key=len, reverse=True))
                         + r')"')
    for page, body in pages.items():
        out, fenced = [], False
        for line in body.splitlines():
            if line.startswith("```"):
                fenced = not fenced
            if not fenced:
                line = line.replace("](docs/", "](")

                def link(match: re.Match, page: str = page) -> str:
                    where, anchor = anchors[match.group(1)]
                    target = (f"#{anchor}" if where == page else f"{where}#{anchor}") if anchor else where
                    return f'["{match.group(1)}"]({target})'

                line = pattern.sub(link, line)
            out.append(line)
        Path(out_dir, page).write_text("\n".join(out).rstrip() + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
