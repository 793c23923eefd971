"""What finished in a sweep: one line per run directory, from each run's ``run.json``.

    python scripts/index_runs.py outputs/table1_synapse/2025-01-01_12-00-00
    python scripts/index_runs.py outputs --status running,interrupted      # what to look after

``run.json`` is written when a run starts and rewritten as it goes (segbench/runtime/rundir.py): status
``running`` / ``done`` / ``failed`` / ``interrupted``, the attempt (resumes count up), epochs done,
the mean test DSC, the error. A run that was killed outright (SIGKILL, out of memory) stays
``running``; its ``updated`` time then stops moving. Exit status: 0, or 1 when no run.json was found.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segbench.files import find_dirs
from segbench.runtime.rundir import has_run_file


def describe(run_dir: Path, root: Path) -> dict:
    try:
        status = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as exc:
        return {"run": str(run_dir.relative_to(root)) or ".", "status": f"unreadable run.json ({exc})"}
    epoch = status.get("epoch")
    dsc = status.get("mean_dsc")
    return {"run": str(run_dir.relative_to(root)) or ".", "status": status.get("status", "?"),
            "attempt": status.get("attempt", ""),
            "epochs": f"{epoch}/{status.get('max_epochs', '?')}" if epoch is not None else "-",
            "mean_dsc": f"{dsc:.4f}" if isinstance(dsc, (int, float)) else "-",
            "wall_s": status.get("wall_time_s", "-"), "updated": status.get("updated", ""),
            "overrides": " ".join(status.get("overrides") or []),
            "error": status.get("error", "")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a run directory, a sweep directory or any directory above them")
    parser.add_argument("--status", default=None, help="comma list of statuses to show (default: all)")
    args = parser.parse_args(argv)
    rows = [describe(d, args.root) for d in find_dirs(args.root, has_run_file)]
    if args.status:
        rows = [r for r in rows if r["status"] in args.status.split(",")]
    if not rows:
        print(f"no run.json at or below {args.root}", file=sys.stderr)
        return 1
    columns = ["run", "status", "attempt", "epochs", "mean_dsc", "wall_s", "updated", "overrides", "error"]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns[:-2]}
    print("  ".join(c.ljust(widths.get(c, 0)) for c in columns).rstrip())
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths.get(c, 0)) for c in columns).rstrip())
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
