"""Real-dataset layouts (Synapse raw + TransUNet, CHAOS CT/MR DICOM, AbdomenCT-1K, nnU-Net v1/v2),
splits by ratio, the preprocessing cache, and bad data.

Every dataset is a tiny synthetic copy in the exact on-disk layout, with organs as boxes at known
voxel positions and a known, anisotropic spacing, so each loader must put each organ back where
it was, in the right array axis (Z, Y, X), with spacing (sz, sy, sx).
"""

from __future__ import annotations

import csv
import json
import re
import runpy
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from helpers import write_case, write_dicom
from segbench.data import SegDataModule
from segbench.data.datamodule import ratio_counts, resolve_split, window_hu
from segbench.data.datasets import (
    AbdomenCT1KSource,
    ChaosSource,
    NnUNetSource,
    SynapseSource,
    convert_btcv,
    nnunet_class_names,
)
from segbench.errors import ConfigError, DataError

SHAPE = (6, 40, 48)             # (Z, Y, X)
SPACING = (2.5, 0.7, 0.9)       # (sz, sy, sx) mm: every axis different, so a swapped axis shows
# organ boxes (z0, z1, y0, y1, x0, x1) in array order; none is symmetric in z, so a reversed
# slice order would move it
BOXES = {1: (1, 4, 4, 14, 4, 20), 2: (2, 6, 20, 30, 6, 14), 3: (0, 2, 22, 36, 28, 44), 4: (3, 5, 4, 12, 30, 44)}
HU = {0: -60, 1: 120, 2: 180, 3: 240, 4: 60}


def organ_volume(classes=(1, 2, 3, 4), shift: int = 0):
    """Label boxes + an image whose HU encodes the class (air outside a body rectangle)."""
    label = np.zeros(SHAPE, np.uint8)
    for k in classes:
        z0, z1, y0, y1, x0, x1 = BOXES[k]
        label[z0:z1, y0 + shift:y1 + shift, x0:x1] = k
    image = np.vectorize(HU.get)(label).astype(np.int16)
    image[:, :2], image[:, -2:] = -1000, -1000
    return image, label


def box_of(label: np.ndarray, k: int) -> tuple[int, ...]:
    idx = np.argwhere(label == k)
    lo, hi = idx.min(0), idx.max(0) + 1
    return (lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])


def nifti(path: Path, zyx: np.ndarray, spacing=SPACING, dtype=np.int16, affine=None) -> None:
    sz, sy, sx = spacing
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(zyx.transpose(2, 1, 0).astype(dtype), np.diag([-sx, -sy, sz, 1.0]) if affine is None
                             else affine), path)


# -- DICOM / PNG writers (CHAOS) --------------------------------------------------------------------------------
def write_chaos_case(case_dir: Path, image: np.ndarray, masks: np.ndarray, modality="CT", files_descend=True,
                     png_reversed=False, image_sub="DICOM_anon", mask_sub="Ground") -> None:
    """One CHAOS case. ``files_descend``: file i0000 is the highest slice (file order runs against the
    patient axis, as in many CHAOS series); mask k belongs to DICOM file k unless ``png_reversed``."""
    z = len(image)
    for i in range(z):
        k = z - 1 - i if files_descend else i   # position index of file i
        name = f"i{i:04d},0000b.dcm" if modality == "CT" else f"IMG-0002-{i + 1:05d}.dcm"
        stored = image[k] + 1024 if modality == "CT" else image[k]
        write_dicom(case_dir / image_sub / name, stored, 100.0 + SPACING[0] * k, i + 1, modality, spacing=SPACING)
        m = masks[z - 1 - k] if png_reversed else masks[k]
        png = f"liver_GT_{i:03d}.png" if modality == "CT" else f"IMG-0002-{i + 1:05d}.png"
        (case_dir / mask_sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(m.astype(np.uint8)).save(case_dir / mask_sub / png)


MR_GREY = {1: 63, 2: 126, 3: 189, 4: 252}


@pytest.fixture(scope="module")
def chaos_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chaos")
    for n, case in enumerate(("1", "2", "5", "10")):
        image, label = organ_volume((1,), shift=n)
        write_chaos_case(root / "Train_Sets/CT" / case, image, np.where(label == 1, 255, 0),
                         files_descend=n % 2 == 0)
        image, label = organ_volume(shift=n)
        mr_image = (image.astype(np.int32) + 1100) * 2   # MR: arbitrary positive scale, no rescale tags
        write_chaos_case(root / "Train_Sets/MR" / case, mr_image, np.vectorize(lambda v: MR_GREY.get(v, 0))(label),
                         modality="MR", files_descend=n % 2 == 0, image_sub="T2SPIR/DICOM_anon",
                         mask_sub="T2SPIR/Ground")
    return root


@pytest.fixture(scope="module")
def btcv_root(tmp_path_factory) -> Path:
    """Raw BTCV layout: BTCV ids 6 (liver -> 5), 11 (pancreas -> 8), 2 (kidney_r -> 2) and 5 (esophagus -> 0)."""
    root = tmp_path_factory.mktemp("btcv")
    raw = root / "RawData/Training"
    for n in range(1, 4):
        image, label = organ_volume(shift=n)
        btcv = np.choose(label, [0, 6, 11, 2, 5]).astype(np.uint8)
        write_case(raw, f"{n:04d}", image, btcv, spacing=SPACING)
    return root


@pytest.fixture(scope="module")
def transunet_root(tmp_path_factory) -> Path:
    """TransUNet's files as its repository reads them: float32 [0, 1] images, float32 labels, no spacing."""
    root = tmp_path_factory.mktemp("transunet")
    (root / "train_npz").mkdir()
    (root / "test_vol_h5").mkdir()
    (root / "lists_Synapse").mkdir()
    names = []
    for n in (5, 6):
        image, label = organ_volume(shift=n)
        unit = window_hu(image, (-125, 275))
        for z in range(SHAPE[0]):
            names.append(f"case{n:04d}_slice{z:03d}")
            np.savez(root / "train_npz" / f"{names[-1]}.npz", image=unit[z], label=label[z].astype(np.float32))
    for n in (1, 2):
        image, label = organ_volume(shift=n)
        with h5py.File(root / "test_vol_h5" / f"case{n:04d}.npy.h5", "w") as fh:
            fh["image"] = window_hu(image, (-125, 275))
            fh["label"] = label.astype(np.float32)
    (root / "lists_Synapse/train.txt").write_text("\n".join(names) + "\n")
    (root / "lists_Synapse/test_vol.txt").write_text("case0001\ncase0002\n")
    return root


@pytest.fixture(scope="module")
def ct1k_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ct1k")
    for n in range(1, 13):
        image, label = organ_volume(shift=n % 4)
        part = "AbdomenCT-1K-ImagePart1" if n <= 6 else "AbdomenCT-1K-ImagePart2"
        nifti(root / part / f"Case_{n:05d}_0000.nii.gz", image)
        nifti(root / "Mask" / f"Case_{n:05d}.nii.gz", label, dtype=np.uint8)
    nifti(root / "AbdomenCT-1K-ImagePart2" / "Case_00099_0000.nii.gz", image)  # image without mask: skipped
    return root


NNUNET_NAMES = ["background", "liver", "kidney", "spleen", "pancreas"]


def make_nnunet(root: Path, version: str) -> Path:
    cases = [f"abd_{n:03d}" for n in range(4)]
    for n, case in enumerate(cases):
        image, label = organ_volume(shift=n)
        nifti(root / "imagesTr" / f"{case}_0000.nii.gz", image)
        nifti(root / "imagesTr" / f"{case}_0001.nii.gz", -image)   # a second channel: ignored
        nifti(root / "labelsTr" / f"{case}.nii.gz", label, dtype=np.uint8)
    if version == "v1":
        meta = {"name": "abd", "modality": {"0": "CT", "1": "CT"},
                "labels": {str(i): name for i, name in enumerate(NNUNET_NAMES)}, "numTraining": 4,
                "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases]}
    else:
        meta = {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {name: i for i, name in enumerate(NNUNET_NAMES)},
                "numTraining": 4, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def nnunet_v2_root(tmp_path_factory) -> Path:
    return make_nnunet(tmp_path_factory.mktemp("Dataset001_Abd"), "v2")


# -- loaders recover images, labels, names and spacing ---------------------------------------------------------
def test_synapse_raw_maps_btcv_ids_and_keeps_geometry(btcv_root):
    src = SynapseSource(btcv_root)
    assert src.resolved_layout() == "raw"
    refs = src.cases()
    assert [r.case_id for r in refs] == ["0001", "0002", "0003"]
    vol = src.load(refs[0])
    image, label = organ_volume(shift=1)
    assert vol.spacing == pytest.approx(SPACING) and vol.image.shape == SHAPE
    # BTCV 6 (liver) -> 5, 11 (pancreas) -> 8, 2 (kidney_r) -> 2, 5 (esophagus) -> background
    np.testing.assert_array_equal(vol.label, np.choose(label, [0, 5, 8, 2, 0]))
    assert box_of(vol.label, 5) == (1, 4, 5, 15, 4, 20)       # BOXES[1] shifted by 1 row
    np.testing.assert_array_equal(vol.image, image)
    assert not vol.normalized


def test_transunet_layout_reads_npz_slices_and_h5_volumes(transunet_root):
    src = SynapseSource(transunet_root)
    assert src.resolved_layout() == "transunet"
    refs = {r.case_id: r for r in src.cases()}
    assert sorted(refs) == ["0001", "0002", "0005", "0006"]
    for case, n in (("0005", 5), ("0001", 1)):      # train case from slices, test case from its h5 volume
        vol = src.load(refs[case])
        image, label = organ_volume(shift=n)
        assert vol.normalized and vol.spacing == (1.0, 1.0, 1.0)   # TransUNet files carry no spacing:
        assert not vol.spacing_known                                # a stand-in, distances in voxels
        np.testing.assert_array_equal(vol.label, label)
        np.testing.assert_allclose(vol.image, window_hu(image, (-125, 275)))
        assert box_of(vol.label, 2) == (2, 6, 20 + n, 30 + n, 6, 14)


def test_transunet_files_without_spacing_are_scored_in_voxels_and_say_so(transunet_root, btcv_root, tmp_path):
    """Units are never mislabelled: a case from TransUNet's npz/h5 files has no known spacing, so every
    convention's HD is in voxels, in the per-case rows, the summary and the console table; a spacing
    declared in the config (data.source.default_spacing) or read from NIfTI is mm."""
    from segbench.data.preprocess import resample_volume, resize_volume
    from segbench.metrics.results import CaseEvaluator, format_table

    refs = {r.case_id: r for r in SynapseSource(transunet_root).cases()}
    vol = SynapseSource(transunet_root).load(refs["0001"])
    assert not vol.spacing_known
    assert resample_volume(vol, (None, 0.5, 0.5)) is vol  # no mm to resample to: the grid is kept
    resized = resize_volume(vol, (4, 8, 8))  # a shape in voxels needs no mm (Table 6's target_shape)
    assert resized.image.shape == (4, 8, 8) and not resized.spacing_known
    declared = SynapseSource(transunet_root, default_spacing=(2.0, 0.5, 0.5)).load(refs["0001"])
    assert declared.spacing_known and declared.spacing == (2.0, 0.5, 0.5)
    raw = SynapseSource(btcv_root)
    assert raw.load(raw.cases()[0]).spacing_known

    pred = vol.label.copy()
    pred[pred == 2] = 0  # one organ missed: a finite HD for the others, worst case for it
    evaluator = CaseEvaluator(["background", "a", "b", "c", "d"], "default")
    rows = evaluator.add_case("0001", pred, vol.label, vol.spacing, spacing_known=vol.spacing_known)
    assert {(r["convention"], r["hd_unit"]) for r in rows} == {("default", "voxels"), ("transunet", "voxels")}
    summary = evaluator.summary()
    assert summary["hd_unit"] == "voxels" and summary["by_convention"]["transunet"]["hd_unit"] == "voxels"
    assert "voxels" in summary["convention_description"]
    table = format_table(summary)
    assert "HD95 voxels" in table and "mm" not in table, table
    # the same case with its spacing known: default in mm, transunet still in voxels
    known = CaseEvaluator(["background", "a", "b", "c", "d"], "default")
    known.add_case("0001", pred, vol.label, (2.0, 0.5, 0.5))
    assert known.summary()["hd_unit"] == "mm" and known.summary()["by_convention"]["transunet"]["hd_unit"] == "voxels"


def test_prepare_synapse_writes_the_transunet_layout(btcv_root, tmp_path):
    out = tmp_path / "Synapse"
    script = runpy.run_path(str(Path(__file__).parent.parent / "scripts" / "prepare_synapse.py"))
    assert script["main"]([str(btcv_root), str(out), "--train", "1", "2", "--test", "3", "--no-progress"]) == 0
    assert (out / "lists_Synapse/train.txt").read_text().split() == \
        [f"case{c}_slice{z:03d}" for c in ("0001", "0002") for z in range(SHAPE[0])]
    assert (out / "lists_Synapse/test_vol.txt").read_text().split() == ["case0003"]
    assert not list(out.rglob(".*.tmp"))
    with np.load(out / "train_npz/case0001_slice002.npz") as npz:
        image, _ = organ_volume(shift=1)
        np.testing.assert_allclose(npz["image"], window_hu(image, (-125, 275))[2])
        assert npz["label"].dtype == np.float32
    raw, converted = SynapseSource(btcv_root), SynapseSource(out)
    raw_refs, conv_refs = {r.case_id: r for r in raw.cases()}, {r.case_id: r for r in converted.cases()}
    for case in ("0002", "0003"):
        a, b = raw.load(raw_refs[case]), converted.load(conv_refs[case])
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_allclose(window_hu(a.image, (-125, 275)), b.image)
        assert b.spacing == pytest.approx(SPACING)              # the script stores the spacing
    # a rerun after an interruption only writes what is missing
    (out / "train_npz/case0002_slice004.npz").unlink()
    assert convert_btcv(btcv_root, out, ["1", "2"], ["3"], progress=False)["files_written"] == 1


@pytest.mark.parametrize("descend", [True, False])
def test_chaos_ct_orders_slices_by_position_and_keeps_masks_with_their_files(chaos_root, descend):
    src = ChaosSource(chaos_root, modality="CT")
    refs = {r.case_id: r for r in src.cases()}
    assert list(refs) == ["1", "2", "5", "10"]                   # natural order
    case, shift = ("1", 0) if descend else ("2", 1)              # case 1: files run against the z axis
    vol = src.load(refs[case])
    image, label = organ_volume((1,), shift=shift)
    assert vol.spacing == pytest.approx(SPACING)                 # sz from positions, (sy, sx) from PixelSpacing
    np.testing.assert_allclose(vol.image, image)                 # HU = stored + RescaleIntercept
    np.testing.assert_array_equal(vol.label, label)
    # the affine puts voxel (x=0, y=0, z=0) at the lowest slice's ImagePositionPatient (LPS -> RAS)
    np.testing.assert_allclose(vol.affine @ [0, 0, 0, 1], [20.0, 15.0, 100.0, 1])
    np.testing.assert_allclose(vol.affine @ [1, 1, 1, 1], [20.0 - 0.9, 15.0 - 0.7, 102.5, 1])


def test_chaos_mask_order_reversed_is_detected(tmp_path):
    image, label = organ_volume((1,))
    write_chaos_case(tmp_path / "CT/7", image, np.where(label == 1, 255, 0), png_reversed=True)
    auto = ChaosSource(tmp_path, mask_order="auto")
    np.testing.assert_array_equal(auto.load(auto.cases()[0]).label, label)
    forced = ChaosSource(tmp_path, mask_order="filename")
    assert not np.array_equal(forced.load(forced.cases()[0]).label, label)


def test_chaos_mr_grey_levels_and_percentile_normalisation(chaos_root):
    src = ChaosSource(chaos_root, modality="MR", sequence="T2SPIR")
    vol = src.load(src.cases()[3])                               # case 10, shift 3
    _, label = organ_volume(shift=3)
    np.testing.assert_array_equal(vol.label, label)              # 63/126/189/252 -> 1/2/3/4
    assert vol.spacing == pytest.approx(SPACING)
    assert vol.normalized and vol.image.min() == 0.0 and vol.image.max() == 1.0
    assert src.class_names == ["background", "liver", "kidney_r", "kidney_l", "spleen"]


def test_abdomenct1k_finds_pairs_anywhere(ct1k_root):
    src = AbdomenCT1KSource(ct1k_root)
    refs = src.cases()
    assert [r.case_id for r in refs] == [f"Case_{n:05d}" for n in range(1, 13)]   # Case_00099 has no mask
    vol = src.load(refs[2])
    image, label = organ_volume(shift=3)
    assert vol.spacing == pytest.approx(SPACING)
    np.testing.assert_array_equal(vol.label, label)
    assert box_of(vol.label, 3) == (0, 2, 25, 39, 28, 44)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_nnunet_v1_and_v2_names_channels_and_normalisation(version, tmp_path):
    nnunet_root = make_nnunet(tmp_path, version)
    assert nnunet_class_names(str(nnunet_root)) == NNUNET_NAMES
    src = NnUNetSource(nnunet_root)
    refs = src.cases()
    assert [r.case_id for r in refs] == ["abd_000", "abd_001", "abd_002", "abd_003"]
    vol = src.load(refs[1])
    image, label = organ_volume(shift=1)
    np.testing.assert_array_equal(vol.label, label)
    assert vol.spacing == pytest.approx(SPACING)
    if src.channel == "CT":   # v1: the first channel is CT -> HU kept for the window
        assert not vol.normalized
        np.testing.assert_array_equal(vol.image, image)
    else:                     # v2: "T2" -> per-case percentiles to [0, 1], order of intensities kept
        assert vol.normalized and 0.0 <= vol.image.min() and vol.image.max() <= 1.0
        assert vol.image[label == 3].mean() > vol.image[label == 1].mean()


# -- splits ----------------------------------------------------------------------------------------------------
def test_ratio_splits_are_seeded_and_complete():
    ids = [f"Case_{n:05d}" for n in range(1, 201)]
    # 100 of 200 drawn with seed 1234, then 6:1:3 -> 60 / 10 / 30
    a = resolve_split(ids, {"ratios": [6, 1, 3], "subset": 100, "seed": 1234})
    assert [len(a[p]) for p in ("train", "val", "test")] == [60, 10, 30]
    assert len(set(a["train"]) | set(a["val"]) | set(a["test"])) == 100
    assert a == resolve_split(ids, {"ratios": [6, 1, 3], "subset": 100, "seed": 1234})
    assert a != resolve_split(ids, {"ratios": [6, 1, 3], "subset": 100, "seed": 1})
    # CHAOS: 20 cases 3:0:1 -> 15 train / 5 test; largest remainder: 7 cases 6:1:3 -> 4.2, 0.7, 2.1 -> 4, 1, 2
    assert ratio_counts(20, [3, 0, 1]) == {"train": 15, "val": 0, "test": 5}
    assert ratio_counts(7, [6, 1, 3]) == {"train": 4, "val": 1, "test": 2}
    # explicit counts (debug=smoke) win over ratios and are taken from the seeded order
    smoke = resolve_split(ids[:20], {"ratios": [3, 0, 1], "seed": 1234, "train": 1, "val": 1, "test": 1})
    assert [len(smoke[p]) for p in ("train", "val", "test")] == [1, 1, 1]
    # explicit ids: as written, or YAML's 5 for "0005"
    assert resolve_split(["1", "2", "0005"], {"train": [1, 5], "test": ["2"]})["train"] == ["1", "0005"]


def test_split_errors():
    with pytest.raises(DataError, match="leave split 'test' empty with 3 cases"):
        resolve_split(["a", "b", "c"], {"ratios": [6, 1, 1]})
    with pytest.raises(DataError, match="subset=100 but the dataset has 12 cases"):
        resolve_split([str(i) for i in range(12)], {"ratios": [6, 1, 3], "subset": 100, "seed": 0})
    with pytest.raises(ConfigError, match="subset needs data.split.seed"):
        resolve_split(["a", "b"], {"ratios": [1, 0, 1], "subset": 2})
    with pytest.raises(ConfigError, match="ratios must be"):
        resolve_split(["a", "b"], {"ratios": [1, 1]})


def test_synapse_config_holds_the_fixed_18_12_split():
    from hydra import compose, initialize_config_dir

    from segbench.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["data=synapse", "data.root=/nowhere"])
    split = resolve_split([f"{n:04d}" for n in range(1, 41)], dict(cfg.data.split))
    assert split["train"] == ["0005", "0006", "0007", "0009", "0010", "0021", "0023", "0024", "0026", "0027",
                              "0028", "0030", "0031", "0033", "0034", "0037", "0039", "0040"]
    assert split["test"] == ["0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035",
                             "0036", "0038"]
    assert split["val"] == []


# -- the preprocessing cache -----------------------------------------------------------------------------------
def counting(source):
    calls = []
    original = source.load

    def load(ref):
        calls.append(ref.case_id)
        return original(ref)
    source.load = load
    return calls


def make_dm(source, cache_dir, **kw):
    args = dict(source=source, class_names=["background", "a", "b", "c", "d"],
                split={"train": 2, "val": 1, "test": 1}, img_size=32, batch_size=4, augment={}, cache_dir=cache_dir)
    args.update(kw)
    return SegDataModule(**args)


def test_preprocessing_is_cached_reused_and_rebuilt_when_half_written(ct1k_root, tmp_path):
    cache = tmp_path / "cache"
    first_src = AbdomenCT1KSource(ct1k_root)
    calls = counting(first_src)
    first = make_dm(first_src, cache, target_spacing=[None, 1.4, 1.8])
    first.setup()
    assert calls == ["Case_00001", "Case_00002", "Case_00003", "Case_00004"]
    # resampled in-plane to (1.4, 1.8) mm: 40 x 0.7 / 1.4 = 20 rows, 48 x 0.9 / 1.8 = 24 columns
    assert first.test_volumes[0].shape == (6, 20, 24)
    assert first.test_volumes[0].spacing == pytest.approx((2.5, 1.4, 1.8))
    # a second run (new process, same cache) reads every case from the cache: no loading at all
    src = AbdomenCT1KSource(ct1k_root)
    calls = counting(src)
    second = make_dm(src, cache, target_spacing=[None, 1.4, 1.8])
    second.setup()
    # 4 cases, and the resampled test case's label on its own grid (scored there: metrics.grid=original)
    assert calls == [] and second.cache.hits == 5
    assert second.test_volumes[0].original.label.shape == second.test_volumes[0].original.shape == (6, 40, 48)
    assert torch_equal(first.train_set.slices.images, second.train_set.slices.images)
    np.testing.assert_array_equal(first.test_volumes[0].label, second.test_volumes[0].label)
    # a half-written entry (truncated array, as after a kill or a full disk) is detected and rebuilt;
    # a leftover temporary folder of a dead process is removed
    entries = sorted((cache / "slices").iterdir())
    victim = next(entries[0].glob("image.npy"))
    victim.write_bytes(victim.read_bytes()[:100])
    (cache / "slices" / ".tmp-deadbeef-999999999-abcd").mkdir()
    (entries[1] / "COMPLETE").unlink()                           # an entry without its completion marker
    src = AbdomenCT1KSource(ct1k_root)
    calls = counting(src)
    third = make_dm(src, cache, target_spacing=[None, 1.4, 1.8])
    third.setup("fit")
    assert len(calls) == 2 and third.cache.builds == 2
    assert torch_equal(first.train_set.slices.images, third.train_set.slices.images)
    assert not (cache / "slices" / ".tmp-deadbeef-999999999-abcd").exists()
    # other parameters or an edited file make new entries instead of reusing stale ones
    src = AbdomenCT1KSource(ct1k_root)
    calls = counting(src)
    make_dm(src, cache, img_size=48, target_spacing=[None, 1.4, 1.8]).setup("fit")
    assert len(calls) == 3


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


# -- training runs start from each dataset --------------------------------------------------------------------
def run_in_process(tmp_path: Path, *overrides: str) -> dict:
    """``segbench-train debug=smoke ...`` through the Python API (compose the real configs, run)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from segbench.config import CONFIG_DIR
    from segbench.runtime.task import run

    out = tmp_path / "run"
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["debug=smoke", f"paths.data_dir={tmp_path}",
                                          f"hydra.run.dir={out}", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
            del cfg.hydra
        return run(cfg, out)


@pytest.mark.parametrize("name,root_fixture,extra", [
    ("synapse", "btcv_root", []),
    ("synapse", "transunet_root", []),
    ("chaos_ct", "chaos_root", []),
    ("chaos_mr", "chaos_root", ["data.target_spacing=[null,1.4,1.8]"]),
    ("abdomenct1k", "ct1k_root", ["data.split.subset=5", "~data.split.train", "~data.split.val",
                                  "~data.split.test"]),
    ("nnunet", "nnunet_v2_root", []),
])
def test_short_training_run_from_each_dataset(name, root_fixture, extra, request, tmp_path):
    """``segbench-train debug=smoke data=<name> data.root=...`` starts, trains, tests and writes results."""
    root = request.getfixturevalue(root_fixture)
    summary = run_in_process(tmp_path, f"data={name}", f"data.root={root}", *extra)
    results = tmp_path / "run" / "results"
    assert (results / "per_case.csv").is_file() and (results / "summary.json").is_file()
    # TransUNet's npz/h5 carry no spacing: every HD of the run is in voxels, whatever the convention
    units = {c: s["hd_unit"] for c, s in summary["by_convention"].items()}
    assert units == ({"default": "voxels", "transunet": "voxels"} if root_fixture == "transunet_root"
                     else {"default": "mm", "transunet": "voxels"})
    with open(results / "per_case.csv") as fh:
        assert {(r["convention"], r["hd_unit"]) for r in csv.DictReader(fh)} == set(units.items())
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    if name == "abdomenct1k":   # the paper's subset protocol, shrunk: 5 drawn cases split 6:1:3 -> 3 / 1 / 1
        assert [len(splits[p]) for p in ("train", "val", "test")] == [3, 1, 1]
        drawn = resolve_split([f"Case_{n:05d}" for n in range(1, 13)], {"ratios": [6, 1, 3], "subset": 5,
                                                                        "seed": 1234})
        assert splits == drawn
    else:
        assert [len(splits[p]) for p in ("train", "val", "test")] == [1, 1, 1]
    assert list(summary["per_class"]) == {"synapse": ["spleen", "kidney_r", "kidney_l", "gallbladder", "liver",
                                                      "stomach", "aorta", "pancreas"],
                                          "chaos_ct": ["liver"], "chaos_mr": ["liver", "kidney_r", "kidney_l",
                                                                              "spleen"],
                                          "abdomenct1k": ["liver", "kidney", "spleen", "pancreas"],
                                          "nnunet": NNUNET_NAMES[1:]}[name]    # names from dataset.json
    assert list((tmp_path / "cache").rglob("COMPLETE"))


# -- bad data: one line naming the file and the problem, before training ----------------------------------------
def test_bad_data_is_reported_before_training(tmp_path, capsys):
    from segbench.errors import report_error, unwrap

    image, label = organ_volume()
    for n in (1, 2, 3):
        nifti(tmp_path / "data" / f"Case_{n:05d}_0000.nii.gz", image)
        nifti(tmp_path / "data" / f"Case_{n:05d}.nii.gz", np.where(label == 4, 7, label), dtype=np.uint8)
    with pytest.raises(Exception) as info:
        run_in_process(tmp_path, "data=abdomenct1k", f"data.root={tmp_path / 'data'}", "data.split.subset=null")
    err = unwrap(info.value)
    assert isinstance(err, DataError)
    assert re.search(r"Case_0000\d.nii.gz holds label value\(s\) 7 outside AbdomenCT-1K's 0..4", str(err))
    assert not (tmp_path / "run" / "checkpoints").exists()   # stopped before training
    report_error(err, "segbench-train")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segbench-train: error: ") and "Case_0000" in lines[0]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_bad_layouts_and_files(tmp_path, chaos_root, transunet_root, btcv_root):
    import shutil

    # missing root
    for src in (SynapseSource(tmp_path / "none"), ChaosSource(tmp_path / "none"), AbdomenCT1KSource(tmp_path / "none"),
                NnUNetSource(tmp_path / "none")):
        with pytest.raises(DataError, match=r"none not found; set data\.root"):
            src.cases()
    with pytest.raises(DataError, match="neither Synapse layout"):
        SynapseSource(tmp_path).cases()
    # TransUNet: a listed slice missing, a truncated npz, image/label shapes that differ, HU instead of [0, 1]
    tu = tmp_path / "tu"
    shutil.copytree(transunet_root, tu)
    (tu / "train_npz/case0005_slice003.npz").unlink()
    with pytest.raises(DataError, match=r"train.txt lists 1 slice\(s\) that are missing, e.g. .*case0005_slice003"):
        SynapseSource(tu).cases()
    (tu / "lists_Synapse/train.txt").write_text("case0006_slice000\ncase0006_slice001\n")
    src = SynapseSource(tu)
    refs = {r.case_id: r for r in src.cases()}
    _truncate(tu / "train_npz/case0006_slice001.npz")
    with pytest.raises(DataError, match="case0006_slice001.npz .*corrupt or truncated"):
        src.load(refs["0006"])
    with h5py.File(tu / "test_vol_h5/case0002.npy.h5", "w") as fh:
        fh["image"], fh["label"] = np.zeros((3, 8, 8), np.float32), np.zeros((3, 8, 7), np.float32)
    with pytest.raises(DataError, match=r"case0002.npy.h5: label shape \(3, 8, 7\) differs from image shape"):
        src.load(refs["0002"])
    with h5py.File(tu / "test_vol_h5/case0002.npy.h5", "w") as fh:
        fh["image"], fh["label"] = np.full((3, 8, 8), 120.0, np.float32), np.zeros((3, 8, 8), np.float32)
    with pytest.raises(DataError, match=r"case0002.npy.h5 holds image values in \[120, 120\]"):
        src.load(refs["0002"])
    _truncate(tu / "test_vol_h5/case0001.npy.h5")
    with pytest.raises(DataError, match="case0001.npy.h5 .*corrupt or truncated"):
        src.load(refs["0001"])
    # raw BTCV: an id beyond the 13 organs
    raw = tmp_path / "raw"
    shutil.copytree(btcv_root, raw)
    image, label = organ_volume()
    write_case(raw / "RawData/Training", "0001", image, np.where(label == 1, 14, label))
    src = SynapseSource(raw)
    with pytest.raises(DataError, match=r"label0001.nii.gz holds label value\(s\) 14 outside BTCV's ids 0..13"):
        src.load(src.cases()[0])
    # CHAOS: a truncated DICOM, a missing mask, a mask of the wrong size, an unknown grey level
    ch = tmp_path / "chaos"
    shutil.copytree(chaos_root / "Train_Sets/CT/1", ch / "CT/1")
    shutil.copytree(chaos_root / "Train_Sets/MR/2", ch / "MR/2")
    src = ChaosSource(ch)
    ref = src.cases()[0]
    _truncate(ch / "CT/1/DICOM_anon/i0003,0000b.dcm")
    with pytest.raises(DataError, match=r"i0003,0000b.dcm .*corrupt or truncated"):
        src.load(ref)
    shutil.copy(chaos_root / "Train_Sets/CT/1/DICOM_anon/i0003,0000b.dcm", ch / "CT/1/DICOM_anon/")
    Image.fromarray(np.zeros((40, 47), np.uint8)).save(ch / "CT/1/Ground/liver_GT_002.png")
    with pytest.raises(DataError, match=r"liver_GT_002.png has shape \(40, 47\) but its DICOM slice has \(40, 48\)"):
        src.load(ref)
    (ch / "CT/1/Ground/liver_GT_002.png").unlink()
    with pytest.raises(DataError, match="Ground holds 5 mask.* but .*DICOM_anon has 6 DICOM slices"):
        src.load(ref)
    mr = ChaosSource(ch, modality="MR")
    Image.fromarray(np.full((40, 48), 100, np.uint8)).save(ch / "MR/2/T2SPIR/Ground/IMG-0002-00001.png")
    with pytest.raises(DataError, match=r"T2SPIR/Ground holds mask grey level\(s\) \[100\] outside the dataset's set"):
        mr.load(mr.cases()[0])
    # AbdomenCT-1K: image/label affine mismatch; mask without image
    ab = tmp_path / "ct1k"
    nifti(ab / "Case_00001_0000.nii.gz", image)
    nifti(ab / "Case_00001.nii.gz", label, dtype=np.uint8, spacing=(2.5, 0.7, 0.8))
    src = AbdomenCT1KSource(ab)
    with pytest.raises(DataError, match="Case_00001.nii.gz and Case_00001_0000.nii.gz have different affines"):
        src.load(src.cases()[0])
    nifti(ab / "Case_00002.nii.gz", label, dtype=np.uint8)
    with pytest.raises(DataError, match="mask .*Case_00002.nii.gz has no image Case_00002_0000.nii.gz"):
        src.cases()
    # nnU-Net: labels outside dataset.json, a region label, a missing label file
    nn = tmp_path / "nn"
    nifti(nn / "imagesTr/x_0000.nii.gz", image)
    nifti(nn / "labelsTr/x.nii.gz", label, dtype=np.uint8)
    (nn / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
                                                 "file_ending": ".nii.gz"}))
    src = NnUNetSource(nn)
    with pytest.raises(DataError, match=r"x.nii.gz holds label value\(s\) 2, 3, 4 outside the ids 0..1 named in"):
        src.load(src.cases()[0])
    (nn / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "tumour": [1, 2]}}))
    with pytest.raises(DataError, match="region"):
        nnunet_class_names(str(nn))
    (nn / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background", "2": "x"}}))
    with pytest.raises(DataError, match=r"label ids \[0, 2\] are not 0..1"):
        nnunet_class_names(str(nn))
    (nn / "labelsTr/x.nii.gz").unlink()
    with pytest.raises(DataError, match=r"labelsTr/x.nii.gz not found"):
        NnUNetSource(nn).cases()
