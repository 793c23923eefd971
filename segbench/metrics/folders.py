"""Score a folder of predicted label maps against ground truth: the logic of ``segbench-score``.

Another tool's predictions (nnU-Net's, or any NIfTI label maps) are scored under exactly segbench's
metric conventions and written in a run's results format, so that ``segbench-table`` puts them beside
segbench's runs::

    <output>/results/per_case.csv   one row per case x organ x convention, as a run writes it
    <output>/results/summary.json   the same keys as a run's; ``config`` says what was scored
                                    (``score``: name, folders, label maps; ``data``; ``metrics``)

Each pair is read and checked as a run reads its test cases (:mod:`segbench.data.volume`: readable, 3D,
one shape and affine, integer ids within the classes after the label map) and scored as a run's test
step scores it: in the canonical orientation (:func:`~segbench.data.volume.to_canonical`), with the
voxel spacing of the ground truth's header, by :class:`~segbench.metrics.results.CaseEvaluator`. On a
run's own ``predictions/`` this reproduces the run's ``per_case.csv`` row for row.

Matching (:func:`match_files`): every ``*.nii.gz`` / ``*.nii`` file directly in the prediction folder is
one case. It pairs with the ground-truth file of the same name; else with the one of the same *case
id*: the name without ``.nii.gz`` / ``.nii``, without one leading ``label``, ``labels``, ``seg``,
``segmentation``, ``gt``, ``mask``, ``pred``, ``prediction``, ``img`` or ``image`` (followed by ``_``,
``-``, ``.`` or a digit) and without one trailing ``_0000`` (nnU-Net's channel) or ``_label``, ``_seg``,
``_gt``, ``_mask``, ``_pred`` (:func:`case_id`). So ``0003.nii.gz`` pairs with BTCV's
``label/label0003.nii.gz`` and nnU-Net's ``<case>.nii.gz`` with ``labelsTr/<case>.nii.gz``. A name that
could pair with two files is refused. Rows are named by the ground truth's case id, the id segbench's
own runs give these cases, so segbench-table's paired test pairs them with a run's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, SegbenchError

#: what may be done with a ground-truth case that has no prediction (``--missing``)
MISSING_CHOICES = ("error", "skip", "empty")
NIFTI_ENDINGS = (".nii.gz", ".nii")
#: where a dataset folder keeps its label maps (nnU-Net raw, the raw BTCV / phantom layout)
LABEL_SUBDIRS = ("labelsTr", "labelsTs", "label")
_PREFIX = re.compile(r"^(?:segmentation|prediction|labels|label|image|mask|pred|seg|img|gt)(?:[_\-.]|(?=\d))",
                     re.IGNORECASE)
_SUFFIX = re.compile(r"(?:_0000|[_\-.](?:label|mask|pred|seg|gt))$", re.IGNORECASE)


class ScoreError(SegbenchError):
    """Cases that cannot be scored: one line per bad file (``problems``), reported together."""

    def __init__(self, problems: Sequence[str], total: int):
        self.problems = list(problems)
        self.total = int(total)
        super().__init__(f"{len(self.problems)} of {total} case(s) cannot be scored (nothing written): "
                         f"{self.problems[0]}")


# ----------------------------------------------------------------------------------------------
# files and matching


def nifti_stem(path: Path | str) -> str | None:
    """``label0003.nii.gz`` -> ``label0003``; None for a file that is not NIfTI."""
    name = Path(path).name
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)]
    return None


def case_id(stem: str) -> str:
    """The case id of a file stem (see the module docstring): ``label0003`` -> ``0003``,
    ``seg_case7`` -> ``case7``, ``abdomen_001_0000`` -> ``abdomen_001``; a stem that would be left empty
    is its own id."""
    out = _PREFIX.sub("", stem, count=1) or stem
    return _SUFFIX.sub("", out, count=1) or out


def nifti_files(folder: Path, what: str) -> dict[str, Path]:
    """``{stem: path}`` of the NIfTI files directly in ``folder`` (hidden files left out: a temporary
    file of an atomic write); two files of one stem (``a.nii`` and ``a.nii.gz``) are refused."""
    from ..files import natural_key

    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        stem = nifti_stem(path)
        if stem is None or path.name.startswith(".") or not path.is_file():
            continue
        if stem in found:
            raise DataError(f"{what} {folder} holds both {found[stem].name} and {path.name}; keep one of them")
        found[stem] = path
    return found


def label_folder(gt_dir: Path) -> Path:
    """Where the ground-truth label maps of ``gt_dir`` are: the folder itself when it holds NIfTI files,
    else its ``labelsTr/`` or ``labelsTs/`` (nnU-Net raw) or ``label/`` (raw BTCV, the phantom)."""
    if not gt_dir.is_dir():
        raise DataError(f"ground-truth folder {gt_dir} not found; pass the folder of label maps (or a dataset "
                        "folder with labelsTr/ or label/)")
    if any(nifti_stem(p) for p in gt_dir.iterdir() if p.is_file()):
        return gt_dir
    found = [gt_dir / d for d in LABEL_SUBDIRS if (gt_dir / d).is_dir()]
    if len(found) > 1:
        raise DataError(f"ground-truth folder {gt_dir} holds {' and '.join(d.name + '/' for d in found)}; pass "
                        f"the one the predictions belong to ({found[0]} or {found[1]})")
    if not found:
        raise DataError(f"no NIfTI label maps (.nii.gz / .nii) in {gt_dir}, nor a labelsTr/, labelsTs/ or label/ "
                        "folder in it; pass the folder of ground-truth label maps")
    return found[0]


@dataclass
class Pair:
    """One case to score: its id (the ground truth's case id), its files (``prediction`` None: missing)."""

    case: str
    ground_truth: Path
    prediction: Path | None


@dataclass
class Matching:
    pairs: list[Pair]
    missing: list[Pair] = field(default_factory=list)   # ground truth without a prediction


def _listing(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def match_files(predictions: dict[str, Path], truths: dict[str, Path],
                cases: Sequence[str] | None = None) -> Matching:
    """Pair prediction files with ground-truth files (stems -> paths) by the rule of the module docstring.

    ``cases``: only the ground truth of these case ids is in scope (a run's test split); each must have a
    file. A prediction without ground truth, two predictions of one case, or a name that pairs with two
    files is a one-line :class:`DataError`.
    """
    if cases is not None:
        wanted = set(cases)
        truths = {s: p for s, p in truths.items() if s in wanted or case_id(s) in wanted}
        have = {case_id(s) for s in truths} | set(truths)
        absent = [c for c in cases if c not in have]
        if absent:
            raise DataError(f"the run's test case(s) {_listing(absent)} have no label file in the ground-truth "
                            "folder; pass the dataset the run was tested on")
    by_id: dict[str, list[str]] = {}
    for stem in truths:
        by_id.setdefault(case_id(stem), []).append(stem)
    chosen: dict[str, str] = {}   # prediction stem -> ground-truth stem
    orphans = []
    for stem in predictions:
        if stem in truths:
            chosen[stem] = stem
            continue
        candidates = by_id.get(case_id(stem), [])
        if len(candidates) > 1:
            raise DataError(f"prediction {predictions[stem].name} (case {case_id(stem)}) matches "
                            f"{' and '.join(truths[c].name for c in candidates)}; keep one ground-truth file per "
                            "case, or name the prediction as its ground-truth file")
        if candidates:
            chosen[stem] = candidates[0]
        else:
            orphans.append(predictions[stem].name)
    if orphans:
        scope = " of the run's test split" if cases is not None else ""
        raise DataError(f"prediction(s) {_listing(orphans)} have no ground truth{scope} in the ground-truth folder "
                        "(matched by file name, or by case id: label0003 = 0003); remove them or pass the right "
                        "folders")
    by_truth: dict[str, list[str]] = {}
    for pred, truth in chosen.items():
        by_truth.setdefault(truth, []).append(pred)
    for truth, preds in by_truth.items():
        if len(preds) > 1:
            raise DataError(f"predictions {' and '.join(predictions[p].name for p in preds)} both match ground truth "
                            f"{truths[truth].name}; keep one prediction per case")
    pairs = [Pair(case_id(t), truths[t], predictions[p]) for p, t in chosen.items()]
    missing = [Pair(case_id(s), truths[s], None) for s in truths if s not in by_truth]
    return Matching(pairs, missing)


# ----------------------------------------------------------------------------------------------
# options: class names, label maps


def parse_label_map(text: str | None, option: str, num_classes: int | None = None) -> dict[int, int] | None:
    """``'{6: 5, 1: 1}'`` (YAML / JSON), or a ``.json`` / ``.yaml`` file holding one, as ``{raw id: class id}``;
    ``none`` / ``null`` / None: no map. Class ids are checked against ``num_classes`` when given."""
    import yaml

    if text is None or str(text).strip().lower() in ("", "none", "null"):
        return None
    source = str(text)
    path = Path(source)
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        try:
            source = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{option} {text}: cannot read the file ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(source)
    except yaml.YAMLError:
        raw = None
    usage = f"{option} {text!r} is not a label map; pass {{raw_id: class_id, ...}}, e.g. '{{6: 5, 1: 1}}'"
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(usage + " (or a .json / .yaml file holding one)")
    out: dict[int, int] = {}
    for key, value in raw.items():
        try:
            k, v = int(str(key).strip()), int(str(value).strip())
        except (TypeError, ValueError):
            raise ConfigError(usage + f" (entry {key!r}: {value!r} is not two integer ids)") from None
        if k < 0 or v < 0:
            raise ConfigError(f"{option} maps {k} to {v}; label ids are >= 0")
        out[k] = v
    if num_classes is not None:
        check_label_map(out, option, num_classes)
    return out


def check_label_map(label_map: dict[int, int] | None, option: str, num_classes: int) -> None:
    bad = {k: v for k, v in (label_map or {}).items() if v >= num_classes}
    if bad:
        k, v = next(iter(bad.items()))
        raise ConfigError(f"{option} maps {k} to class {v}, outside the {num_classes} classes 0..{num_classes - 1}")


def parse_class_names(text: str) -> list[str]:
    names = [n.strip() for n in str(text).split(",")]
    return check_class_names(names, "--class-names")


def check_class_names(names: Any, where: str) -> list[str]:
    if not isinstance(names, (list, tuple)) or any(not isinstance(n, (str, int)) for n in names):
        raise ConfigError(f"{where}: class names must be a list of names, got {names!r}")
    names = [str(n).strip() for n in names]
    if len(names) < 2 or any(not n for n in names):
        raise ConfigError(f"{where}: expected the class names by id, background first, e.g. "
                          f"background,spleen,liver (at least 2, none empty); got {','.join(names)!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{where}: class name(s) {', '.join(repeated)} appear more than once")
    return names


@dataclass
class Setup:
    """What to score with: class names, label maps, convention, and where they came from."""

    class_names: list[str]
    source: str                                   # words: where the class names came from
    data_name: str | None = None
    label_map: dict[int, int] | None = None       # ground truth raw id -> class id
    label_map_source: str | None = None           # words, when the map is a default of --data / --run
    convention: str | None = None
    report_convention: str | None = None
    nsd_tolerance_mm: float | None = None
    cases: list[str] | None = None                # the run's test split (--run)
    run_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def _source_label_map(data: dict[str, Any], where: str) -> tuple[dict[int, int] | None, str | None]:
    """The raw id -> class id map a data config's source applies to NIfTI label files."""
    source = data.get("source") or {}
    if not isinstance(source, dict):
        return None, None
    if isinstance(source.get("label_map"), dict) and source["label_map"]:
        return ({int(k): int(v) for k, v in source["label_map"].items()},
                f"{where} data.source.label_map")
    if str(source.get("_target_", "")).endswith("SynapseSource"):
        from ..data.datasets.synapse import BTCV_TO_SYNAPSE

        return dict(BTCV_TO_SYNAPSE), f"{where} (Synapse: BTCV's 13 organ ids to the 8 classes)"
    return None, None


def dataset_json_names(gt_dir: Path) -> list[str] | None:
    """Class names of the nnU-Net dataset that ``gt_dir`` is (or whose labelsTr/ / labelsTs/ it is)."""
    from ..data.datasets.nnunet import dataset_labels, read_dataset_json

    for root in (gt_dir, gt_dir.parent):
        if (root / "dataset.json").is_file():
            return dataset_labels(read_dataset_json(root), root / "dataset.json")
    return None


def setup_from_data(name: str, gt_dir: Path) -> Setup:
    """Class names (and the source's label map) of the shipped data config ``configs/data/<name>.yaml``."""
    import yaml

    from ..config import CONFIG_DIR

    folder = Path(CONFIG_DIR) / "data"
    choices = sorted(p.stem for p in folder.glob("*.yaml"))
    if not re.fullmatch(r"[\w.-]+", name) or not (folder / f"{name}.yaml").is_file():
        raise ConfigError(f"--data {name}: no such data config; choose one of {', '.join(choices)}")
    data = yaml.safe_load((folder / f"{name}.yaml").read_text()) or {}
    names = data.get("class_names")
    where = f"data={name}"
    if isinstance(names, str) and "${" in names:  # nnunet: the dataset's own dataset.json names them
        names = dataset_json_names(gt_dir)
        if names is None:
            raise ConfigError(f"--data {name} takes its class names from the dataset's dataset.json, and "
                              f"{gt_dir} is not an nnU-Net dataset (nor its labelsTr/); pass --class-names")
        where = f"data={name} ({gt_dir} dataset.json)"
    label_map, map_source = _source_label_map(data, where)
    return Setup(check_class_names(names, f"--data {name}"), where, data_name=str(data.get("name") or name),
                 label_map=label_map, label_map_source=map_source)


def read_run_config(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A run directory's config, as data (never instantiated): the resolved one of ``results/summary.json``,
    else ``.hydra/config.yaml``; and the summary (None without one)."""
    import json

    import yaml

    if not run_dir.is_dir():
        raise ConfigError(f"--run {run_dir}: no such run directory")
    summary_path, hydra_path = run_dir / "results" / "summary.json", run_dir / ".hydra" / "config.yaml"
    summary = None
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--run: cannot read {summary_path} ({exc}); pass --class-names instead") from None
        if isinstance(summary, dict) and isinstance(summary.get("config"), dict) and summary["config"]:
            return summary["config"], summary
    if hydra_path.is_file():
        try:
            config = yaml.safe_load(hydra_path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--run: cannot read {hydra_path} ({str(exc).splitlines()[0]})") from None
        if isinstance(config, dict):
            return config, summary if isinstance(summary, dict) else None
    raise ConfigError(f"--run {run_dir} is not a segbench run directory (no results/summary.json or "
                      ".hydra/config.yaml)")


def setup_from_run(run_dir: Path) -> Setup:
    """Class names, label map, convention, NSD tolerance and test split of a segbench run directory."""
    import json

    config, summary = read_run_config(run_dir)
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    metrics = config.get("metrics") if isinstance(config.get("metrics"), dict) else {}
    names = data.get("class_names")
    if isinstance(names, str):
        raise ConfigError(f"--run {run_dir}: data.class_names is {names!r}, unresolved (the run has no "
                          "results/summary.json); pass --class-names")
    where = f"run {run_dir}"
    label_map, map_source = _source_label_map(data, where)
    cases = None
    splits = (summary or {}).get("splits")
    if not isinstance(splits, dict) and (run_dir / "splits.json").is_file():
        try:
            splits = json.loads((run_dir / "splits.json").read_text())
        except (OSError, ValueError):
            splits = None
    if isinstance(splits, dict) and isinstance(splits.get("test"), list) and splits["test"]:
        cases = [str(c) for c in splits["test"]]
    setup = Setup(check_class_names(names, f"--run {run_dir} (data.class_names)"), where,
                  data_name=data.get("name"), label_map=label_map, label_map_source=map_source,
                  convention=metrics.get("convention"), report_convention=metrics.get("report_convention"),
                  nsd_tolerance_mm=metrics.get("nsd_tolerance_mm"), cases=cases, run_dir=run_dir)
    grid = {k: data.get(k) for k in ("target_spacing", "target_shape") if data.get(k)}
    if grid and metrics.get("grid") == "resampled":  # metrics.grid=original: scored on the scans' own grid
        keys = ", ".join(f"data.{k}={v}" for k, v in grid.items())
        setup.notes.append(f"run {run_dir} scored its cases resampled ({keys}); segbench-score scores on the "
                           "ground truth's own grid, so its numbers are not the run's")
    return setup


# ----------------------------------------------------------------------------------------------
# reading and scoring one case


def read_label_map(path: Path, role: str):
    """A NIfTI label map as ``(image, array (X, Y, Z))`` read as a run reads its files (nibabel, the array
    as stored): readable, 3D (a trailing axis of length 1, ``(X, Y, Z, 1)``, is dropped), integer values
    (``role``: what the file is, for the messages)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for truncated / corrupt files
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise DataError(f"cannot read {role} {path} ({type(exc).__name__}: {reason}); the file is corrupt, "
                        "truncated or not NIfTI: write it again") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{role} {path} holds a {data.ndim}D array {data.shape}; expected a 3D label map")
    if data.dtype.kind == "f":
        if not np.allclose(data, np.round(data)):
            raise DataError(f"{role} {path} holds non-integer values; expected a label map of class ids "
                            "(not probabilities or an image)")
        data = data.astype(np.int64)
    elif data.dtype.kind not in "biu":
        raise DataError(f"{role} {path} holds {data.dtype} values; expected a label map of integer class ids")
    return img, data


def load_pair(pair: Pair, num_classes: int, label_map: dict[int, int] | None,
              pred_label_map: dict[int, int] | None):
    """``(pred, gt, spacing)`` of one case as a run's test step scores it: class ids (uint8) in the canonical
    orientation, ``(Z, Y, X)``, with the ground truth's voxel spacing in the same order."""
    from ..data.volume import Volume, apply_label_map, to_canonical

    gt_img, gt = read_label_map(pair.ground_truth, "ground truth")
    spacing = tuple(float(z) for z in gt_img.header.get_zooms()[:3])[::-1]
    if min(spacing) <= 0:
        raise DataError(f"ground truth {pair.ground_truth} has non-positive voxel spacing {spacing}; fix its header")
    gt = apply_label_map(gt.transpose(2, 1, 0), label_map, f"ground truth {pair.ground_truth}", num_classes,
                         fix="map the dataset's ids to classes with --label-map '{raw_id: class_id}', or pass the "
                             "class names of all its ids")
    if pair.prediction is None:  # --missing empty: an empty prediction on the ground truth's grid
        pred = np.zeros_like(gt)
    else:
        pred_img, pred_raw = read_label_map(pair.prediction, "prediction")
        if pred_raw.shape != tuple(gt.shape[::-1]):
            raise DataError(f"prediction {pair.prediction} has shape {pred_raw.shape} but its ground truth "
                            f"{pair.ground_truth.name} has {tuple(gt.shape[::-1])}; predictions must be on the ground "
                            "truth's voxel grid (resample the prediction onto it, nearest neighbour)")
        if not np.allclose(pred_img.affine, gt_img.affine, atol=1e-3):
            gap = float(np.abs(np.asarray(pred_img.affine) - np.asarray(gt_img.affine)).max())
            raise DataError(f"prediction {pair.prediction} and its ground truth {pair.ground_truth.name} have "
                            f"different affines (up to {gap:.3g} apart); the prediction is not on the ground "
                            "truth's grid (resample it onto it, or write it with the image's affine)")
        pred = apply_label_map(pred_raw.transpose(2, 1, 0), pred_label_map, f"prediction {pair.prediction}",
                               num_classes, fix="map another tool's ids to these classes with --pred-label-map "
                                                "'{its_id: class_id}'")
    # the run's loading path: the label (here both maps) brought to the canonical orientation with the
    # ground truth's affine, the spacing permuted alike
    vol = to_canonical(Volume(pair.case, pred, gt, spacing, np.asarray(gt_img.affine)))
    return np.ascontiguousarray(vol.image), np.ascontiguousarray(vol.label), vol.spacing


# ----------------------------------------------------------------------------------------------
# the folder


@dataclass
class ScoreResult:
    summary: dict[str, Any]
    results_dir: Path
    scored: list[Pair]
    missing: list[Pair]
    missing_policy: str


def score_folder(pred_dir: Path | str, gt_dir: Path | str, setup: Setup, output_dir: Path | str,
                 name: str, convention: str = "default", nsd_tolerance_mm: float = 2.0,
                 pred_label_map: dict[int, int] | None = None, missing: str = "error",
                 progress: bool | None = None) -> ScoreResult:
    """Score every prediction of ``pred_dir`` against its ground truth in ``gt_dir`` and write
    ``<output_dir>/results/per_case.csv`` and ``summary.json`` (a run's format).

    ``missing``: what a ground-truth case without a prediction does: ``error`` (refused, as nnU-Net's
    ``evaluate_folder``), ``skip`` (left out, said in the summary) or ``empty`` (scored as an empty
    prediction: DSC 0 and worst-case distances per organ present). A bad file (unreadable, not 3D, another
    shape or affine, non-integer or unmapped ids) stops the scoring; every bad file is named
    (:class:`ScoreError`) and nothing is written.
    """
    from tqdm.auto import tqdm

    from .results import CaseEvaluator

    pred_dir, gt_dir, output_dir = Path(pred_dir), Path(gt_dir), Path(output_dir)
    if missing not in MISSING_CHOICES:
        raise ConfigError(f"--missing {missing!r} is unknown; choose one of {', '.join(MISSING_CHOICES)}")
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder {pred_dir} not found; pass the folder of predicted label maps")
    predictions = nifti_files(pred_dir, "prediction folder")
    if not predictions:
        raise DataError(f"no NIfTI label maps (.nii.gz / .nii) in the prediction folder {pred_dir}")
    labels_dir = label_folder(gt_dir)
    truths = nifti_files(labels_dir, "ground-truth folder")
    num_classes = len(setup.class_names)
    check_label_map(setup.label_map, "--label-map", num_classes)
    check_label_map(pred_label_map, "--pred-label-map", num_classes)
    matching = match_files(predictions, truths, setup.cases)
    if matching.missing and missing == "error":
        names = [p.ground_truth.name for p in matching.missing]
        raise DataError(f"{len(names)} ground-truth case(s) have no prediction in {pred_dir}: {_listing(names)}; "
                        "pass --missing skip to score the predicted cases only, or --missing empty to score them "
                        "as empty predictions")
    todo = matching.pairs + (matching.missing if missing == "empty" else [])
    if not todo:  # pragma: no cover - match_files refuses a prediction without ground truth
        raise DataError(f"no prediction in {pred_dir} matches a ground-truth file in {labels_dir}")
    todo.sort(key=lambda p: p.case)
    for first, second in zip(todo, todo[1:]):
        if first.case == second.case:
            raise DataError(f"ground-truth files {first.ground_truth.name} and {second.ground_truth.name} both name "
                            f"case {first.case}; keep one file per case")

    evaluator = CaseEvaluator(setup.class_names, convention, nsd_tolerance_mm)
    problems: list[str] = []
    start = time.time()
    for pair in tqdm(todo, desc="segbench-score", unit="case", leave=False, disable=None if progress is None
                     else not progress):
        try:
            pred, gt, spacing = load_pair(pair, num_classes, setup.label_map, pred_label_map)
        except DataError as exc:
            problems.append(str(exc).splitlines()[0])
            continue
        if not problems:  # after a bad file, the rest are only checked
            evaluator.add_case(pair.case, pred, gt, spacing)
    if problems:
        raise ScoreError(problems, len(todo))

    config = {
        "task_name": "score",
        "score": {"name": name, "pred_dir": str(pred_dir.resolve()), "gt_dir": str(labels_dir.resolve()),
                  "label_map": setup.label_map, "pred_label_map": pred_label_map, "missing": missing,
                  "class_names_from": setup.source,
                  "run": None if setup.run_dir is None else str(Path(setup.run_dir).resolve())},
        "data": {**({"name": setup.data_name} if setup.data_name else {}), "num_classes": num_classes,
                 "class_names": list(setup.class_names)},
        "metrics": {"convention": convention, "nsd_tolerance_mm": float(nsd_tolerance_mm),
                    "report_convention": setup.report_convention},
    }
    extra = {
        "score": {"cases": {p.case: {"prediction": None if p.prediction is None else str(p.prediction.resolve()),
                                     "ground_truth": str(p.ground_truth.resolve())} for p in todo},
                  "missing_predictions": [p.case for p in matching.missing], "missing": missing,
                  "wall_time_s": round(time.time() - start, 1)},
        "splits": {"test": [p.case for p in todo]},
    }
    results_dir = output_dir / "results"
    summary = evaluator.write(results_dir, config=config, extra=extra)
    return ScoreResult(summary, results_dir, todo, matching.missing, missing)
