"""``segbench-score PRED_DIR GT_DIR``: score a folder of label maps (another tool's predictions) against
ground truth under segbench's metric conventions, written in a run's results format.

    segbench-score nnUNet_results/.../fold_0/validation nnUNet_raw/Dataset003_Liver --name nnunet
    segbench-score my_preds/ /data/Synapse/RawData/Training --data synapse --missing skip
    segbench-score outputs/train/<run>/predictions data/phantom/<key> --run outputs/train/<run>
    segbench-table outputs/score/nnunet outputs/multirun/<date>     # beside segbench's runs

The logic is :func:`segbench.metrics.folders.score_folder`; matching rule and outputs in its module
docstring and docs/use-the-model.md ("Score another tool's predictions").
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "segbench-score"


def build_parser() -> argparse.ArgumentParser:
    from .metrics.conventions import CONVENTIONS
    from .metrics.folders import MISSING_CHOICES

    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score a folder of NIfTI label maps (e.g. nnU-Net's predictions) against ground truth with\n"
                    "segbench's metrics (DSC, HD95, HD, ASSD, NSD; the default and transunet conventions, always)\n"
                    "and write results/per_case.csv and results/summary.json as a segbench run does, for\n"
                    "segbench-table. Each case is read and scored as a run's test step does it.",
        epilog="matching: a prediction pairs with the ground-truth file of the same name, else of the same case id:\n"
               "  the name without .nii.gz / .nii, without a leading label, labels, seg, segmentation, gt, mask,\n"
               "  pred, prediction, img or image, and without a trailing _0000, _label, _seg, _gt, _mask or _pred;\n"
               "  0003.nii.gz pairs with label/label0003.nii.gz, <case>.nii.gz with labelsTr/<case>.nii.gz\n"
               "examples:\n"
               "  segbench-score preds/ nnUNet_raw/Dataset003_Liver --name nnunet       # names from dataset.json\n"
               "  segbench-score preds/ /data/Synapse/RawData/Training --data synapse --missing skip\n"
               "  segbench-score outputs/train/<run>/predictions data/phantom/<key> --run outputs/train/<run>\n"
               "  segbench-table outputs/score/nnunet outputs/multirun/<date>          # beside segbench's runs\n"
               "exit status: 0 scored, 1 unusable input (one line per problem), 2 bad command line")
    parser.add_argument("pred_dir", metavar="PRED_DIR", type=Path,
                        help="folder of predicted label maps (*.nii.gz / *.nii, one per case)")
    parser.add_argument("gt_dir", metavar="GT_DIR", type=Path,
                        help="folder of ground-truth label maps, or a dataset folder holding them in labelsTr/ "
                             "(nnU-Net raw), labelsTs/ or label/ (raw BTCV, the phantom)")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--class-names", metavar="LIST",
                       help="class names by id, background (id 0, not scored) first: background,liver,spleen "
                            "(default: the dataset.json of an nnU-Net dataset GT_DIR is, or whose labelsTr/ it is)")
    names.add_argument("--data", metavar="NAME",
                       help="take the class names (and a label map the dataset applies, e.g. synapse's BTCV ids) "
                            "from segbench's data config NAME (phantom, synapse, abdomenct1k, nnunet, ...)")
    names.add_argument("--run", metavar="RUN_DIR", type=Path,
                       help="take class names, label map, convention and NSD tolerance from a segbench run "
                            "directory, and score its test split's cases only")
    parser.add_argument("--label-map", metavar="MAP", default=None,
                        help="ground truth raw id -> class id, e.g. '{6: 5, 1: 1}' (YAML / JSON, or a .json/.yaml "
                             "file); unlisted ids become background; none: no map (over a --data/--run default)")
    parser.add_argument("--pred-label-map", metavar="MAP", default=None,
                        help="the same for the predictions' ids (another tool's numbering); default: none")
    parser.add_argument("--convention", choices=sorted(CONVENTIONS), default=None,
                        help="the results' own convention (the summary's top level; default and transunet are "
                             "always scored too); default: the run's (--run), else default")
    parser.add_argument("--nsd-tolerance-mm", type=float, default=None, metavar="MM",
                        help="NSD tolerance in mm (default: the run's, else 2.0)")
    parser.add_argument("--missing", choices=MISSING_CHOICES, default="error",
                        help="a ground-truth case without a prediction: error (default, as nnU-Net's "
                             "evaluate_folder), skip (score the predicted cases only) or empty (score it as an empty "
                             "prediction: DSC 0, worst-case distances)")
    parser.add_argument("--name", default=None,
                        help="the label of this folder (segbench-table's row; default: PRED_DIR's folder name, its "
                             "parent's for a run's predictions/)")
    parser.add_argument("--output", metavar="DIR", type=Path, default=None,
                        help="where results/ goes (default: $SEGBENCH_OUTPUT_DIR or ./outputs, then score/<name>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none when not a terminal)")
    return parser


def default_name(pred_dir: Path) -> str:
    """PRED_DIR's folder name; its parent's for a folder called ``predictions`` (a segbench run's)."""
    folder = pred_dir.resolve()
    if folder.name == "predictions" and folder.parent.name:
        return folder.parent.name
    return folder.name or "score"


def default_output(name: str) -> Path:
    base = os.environ.get("SEGBENCH_OUTPUT_DIR") or str(Path.cwd() / "outputs")
    return Path(base) / "score" / name.replace(os.sep, "_")


def check_output(output: Path) -> None:
    """Refuse to write into a training or evaluation run's directory (it would replace its results), or
    where nothing can be written; creates nothing."""
    import json

    from .errors import ConfigError

    summary = output / "results" / "summary.json"
    task = None
    if summary.is_file():
        try:
            task = (json.loads(summary.read_text()).get("config") or {}).get("task_name")
        except (OSError, ValueError, AttributeError):
            task = "unknown"
    if (output / "run.json").is_file() or (output / "checkpoints").is_dir() or (summary.is_file() and task != "score"):
        raise ConfigError(f"output directory {output} is a segbench run directory; scoring into it would replace its "
                          "results: pass --output <another folder>")
    existing = output.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {output} cannot be written ({existing} is "
                          f"{'not a folder' if not existing.is_dir() else 'not writable'}); pass --output "
                          "<a writable folder>")


def score(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .metrics import folders
    from .metrics.results import format_table

    if args.run is not None:
        setup = folders.setup_from_run(args.run)
    elif args.data is not None:
        setup = folders.setup_from_data(args.data, args.gt_dir)
    elif args.class_names is not None:
        setup = folders.Setup(folders.parse_class_names(args.class_names), "--class-names")
    else:
        names = folders.dataset_json_names(args.gt_dir) if args.gt_dir.is_dir() else None
        if names is None:
            raise ConfigError("which classes? pass --class-names background,<organ>,... (by id), --data <name> "
                              "(e.g. phantom, synapse) or --run <run dir>")
        setup = folders.Setup(folders.check_class_names(names, f"{args.gt_dir} dataset.json"),
                              f"{args.gt_dir} dataset.json")
    num_classes = len(setup.class_names)
    if args.label_map is not None:
        setup.label_map = folders.parse_label_map(args.label_map, "--label-map", num_classes)
        setup.label_map_source = None
    pred_label_map = folders.parse_label_map(args.pred_label_map, "--pred-label-map", num_classes)
    convention = args.convention or setup.convention or "default"
    if args.convention is not None and args.convention != setup.convention:
        setup.report_convention = None  # the run's report convention does not describe this choice
    tolerance = args.nsd_tolerance_mm if args.nsd_tolerance_mm is not None else setup.nsd_tolerance_mm
    tolerance = 2.0 if tolerance is None else float(tolerance)
    name = args.name or default_name(args.pred_dir)
    output = args.output if args.output is not None else default_output(name)
    check_output(output)

    for note in setup.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    if setup.label_map_source and setup.label_map:
        print(f"{PROG}: ground-truth ids mapped by {setup.label_map} ({setup.label_map_source}; --label-map none "
              "turns it off)", file=sys.stderr)
    result = folders.score_folder(args.pred_dir, args.gt_dir, setup, output, name, convention, tolerance,
                                  pred_label_map, args.missing, progress=False if args.no_progress else None)
    summary = result.summary
    print(format_table(summary))
    unit = summary.get("hd_unit", "mm")
    left = ""
    if result.missing:
        left = (f"; {len(result.missing)} ground-truth case(s) without a prediction "
                + ("scored as empty" if result.missing_policy == "empty" else "left out"))
    mean_dsc, mean_hd95 = summary.get("mean_dsc"), summary.get("mean_hd95")
    dsc = "-" if mean_dsc is None or mean_dsc != mean_dsc else f"{100 * mean_dsc:.2f} %"
    hd95 = "-" if mean_hd95 is None or mean_hd95 != mean_hd95 else f"{mean_hd95:.2f} {unit}"
    print(f"{PROG}: {name}: {len(result.scored)} case(s) of {args.pred_dir} scored against {args.gt_dir} "
          f"(convention {summary['convention']}): mean DSC {dsc}, mean HD95 {hd95}{left}; "
          f"results: {result.results_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import SegbenchError, report_error
    from .metrics.folders import ScoreError

    args = build_parser().parse_args(argv)
    try:
        return score(args)
    except ScoreError as exc:
        for problem in exc.problems:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
        print(f"{PROG}: error: {len(exc.problems)} of {exc.total} case(s) cannot be scored; nothing written",
              file=sys.stderr)
        return 1
    except (SegbenchError, OSError) as exc:
        report_error(exc, PROG)
        return 1


def cli() -> None:
    """The console script: :func:`main`'s status as the exit status."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
