"""The procedural CT phantom: determinism, anatomy, Hounsfield units, NIfTI files and the cache.

Cases are generated at 96 px with 8 mm slices (~4 mm voxels), ~0.3 s each. The anatomy is defined
in mm and its random draws do not depend on the resolution, so these are the same patients as the
default 448 px cases, only coarser.
"""

from __future__ import annotations

import json
import re
import threading
import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from segbench import SYNAPSE_ORGANS
from segbench.data.phantom import PhantomSpec, Tissue, case_seed, ensure_phantom, generate_case, synthesize_case
from segbench.data.phantom import cache as phantom_cache

SMALL = PhantomSpec(num_cases=3, size=96, slice_thickness=(8.0,))
ORGAN_ID = {name: label for label, name in SYNAPSE_ORGANS.items()}

# Volume ranges (mL). Each case draws a patient scale s in [0.92, 1.08] (volumes x s**3 = 0.78-1.26)
# and a per-organ factor in [0.9, 1.1], and grows each organ to nominal x both (to one voxel, less the
# few voxels of any stray island it drops), so a volume lies in nominal x [0.70, 1.39]:
#   liver 1500 -> 1053-2079, spleen 200 -> 140-277, kidneys 150 -> 105-208, stomach 300 -> 211-416,
#   pancreas 70 -> 49-97, gallbladder 30 -> 21-42.
# The bounds below are the realistic ranges asked for (they contain those).
VOLUME_RANGE_ML = {"liver": (1000, 2200), "spleen": (100, 350), "kidney_r": (90, 250), "kidney_l": (90, 250),
                   "stomach": (150, 600), "pancreas": (40, 120), "gallbladder": (15, 60)}


@pytest.fixture(scope="module")
def cases():
    return [synthesize_case(case_seed(SMALL.seed, number), SMALL) for number in (1, 2, 3)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One generated cache (2 cases) shared by the file and dataset.json tests."""
    spec = PhantomSpec(num_cases=2, size=96, slice_thickness=(8.0,), seed=5)
    root = tmp_path_factory.mktemp("phantom")
    return spec, ensure_phantom(root, spec, progress=False)


def centroid(mask: np.ndarray) -> np.ndarray:
    """(z, y, x) voxel centroid."""
    return np.array(np.nonzero(mask)).mean(axis=1)


# ----------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_arrays_and_another_seed_differs(cases):
    image, label, spacing = generate_case(case_seed(SMALL.seed, 1), SMALL)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert np.array_equal(image, cases[0].image) and np.array_equal(label, cases[0].label)
    assert spacing == cases[0].spacing
    other = cases[1]
    assert image.shape != other.image.shape or not np.array_equal(image, other.image)
    assert label.shape != other.label.shape or not np.array_equal(label, other.label)


def test_case_seed_depends_on_dataset_seed_and_case_number_only():
    seeds = {case_seed(dataset, number) for dataset in (0, 1) for number in (1, 2, 3)}
    assert len(seeds) == 6
    # pinned: the value of SeedSequence([0, 3]).generate_state(1, uint64)[0] >> 1; a change of the formula would
    # silently change every phantom (and the README's numbers), so it must fail here
    assert case_seed(0, 3) == 3291213472928352369
    assert case_seed(3, 0) != case_seed(0, 3)  # (dataset, case) is ordered, not a set


def test_case_is_the_same_patient_at_another_resolution(cases):
    # the random draws are resolution independent: same field of view, slice count and volumes
    fine = synthesize_case(case_seed(SMALL.seed, 1), PhantomSpec(size=160, slice_thickness=(8.0,)))
    assert fine.params == cases[0].params
    assert fine.image.shape == (cases[0].image.shape[0], 160, 160)


# ----------------------------------------------------------------------------------- labels and volumes


def test_label_set_is_exactly_the_eight_synapse_organs_plus_background(cases):
    for case in cases:
        assert set(np.unique(case.label).tolist()) == set(range(9))


def test_organ_volumes_are_realistic(cases):
    for case in cases:
        voxel_ml = np.prod(case.spacing) / 1000.0
        for organ, (low, high) in VOLUME_RANGE_ML.items():
            volume = np.count_nonzero(case.label == ORGAN_ID[organ]) * voxel_ml
            assert low <= volume <= high, (organ, volume)


def test_organs_have_no_stray_islands(cases):
    # a speck of a few voxels away from its organ would be label noise that ruins HD95; an organ may
    # fall into big pieces (a thin pancreas crossed by a vessel, or cut by thick slices), but every
    # piece (26-connected) holds at least 5 % of the largest one
    for case in cases:
        for label in range(1, 9):
            pieces, count = ndimage.label(case.label == label, structure=np.ones((3, 3, 3), bool))
            sizes = np.bincount(pieces.ravel())[1:]
            assert count >= 1 and sizes.min() >= 0.05 * sizes.max(), (SYNAPSE_ORGANS[label], sizes)


def test_aorta_is_a_two_centimetre_tube(cases):
    # diameter 21 mm x scale [0.92, 1.08] x [0.95, 1.05] = 18.4-23.8 mm; the equivalent diameter of the
    # mean cross-section over the slices it crosses is a little larger (the tube is oblique at the top)
    for case in cases:
        aorta = case.label == ORGAN_ID["aorta"]
        slices = np.count_nonzero(aorta.any(axis=(1, 2)))
        assert slices == aorta.shape[0]  # it runs through the whole scan
        mean_area = np.count_nonzero(aorta) * case.spacing[1] * case.spacing[2] / slices
        assert 18.0 <= 2 * np.sqrt(mean_area / np.pi) <= 26.0


def test_small_organs_and_background_fractions_are_those_of_real_ct(cases):
    # organs fill ~8 % of the scan (the field of view and coverage grow with the patient as the organs do)
    for case in cases:
        fraction = np.bincount(case.label.ravel(), minlength=9) / case.label.size
        assert fraction[0] > 0.90
        assert fraction[ORGAN_ID["gallbladder"]] < 0.005
        assert fraction[ORGAN_ID["pancreas"]] < 0.005


def test_spacing_is_anisotropic_and_follows_the_spec(cases):
    for case in cases:
        sz, sy, sx = case.spacing
        assert sz == 8.0 and sy == sx
        # field of view: 380 mm (mid-range) x scale [0.92, 1.08] x [1, 1.04], clipped to the spec's 340-420 mm
        # (the spacing is rounded to float32, hence the 1e-3 mm)
        assert 349.0 < sx * SMALL.size < 420.0 + 1e-3
        # coverage: 205 mm x the same factors = 188.6-230 mm, rounded to whole 8 mm slices: 192-232 mm
        assert 192.0 <= case.image.shape[0] * sz <= 232.0


# ----------------------------------------------------------------------------------- anatomy


def test_organs_sit_where_they_belong(cases):
    for case in cases:
        centre_x = case.label.shape[2] / 2
        c = {organ: centroid(case.label == label) for organ, label in ORGAN_ID.items()}
        spine = centroid(case.tissue == Tissue.CANCELLOUS_BONE)
        # radiological convention: patient's right on the image's left (small column index)
        for organ in ("liver", "kidney_r", "gallbladder"):
            assert c[organ][2] < centre_x, organ
        for organ in ("spleen", "kidney_l", "stomach"):
            assert c[organ][2] > centre_x, organ
        # the aorta: near the midline (within 30 mm), just in front of the vertebral bodies
        assert abs(c["aorta"][2] - spine[2]) * case.spacing[2] < 30.0
        assert 0 < (spine[1] - c["aorta"][1]) * case.spacing[1] < 60.0
        # the pancreas lies in front of the aorta, the stomach in front of the kidneys
        assert c["pancreas"][1] < c["aorta"][1]
        assert c["stomach"][1] < c["kidney_l"][1]
        # the liver reaches higher than the kidneys, the gallbladder hangs under the liver
        top = {organ: np.nonzero((case.label == ORGAN_ID[organ]).any(axis=(1, 2)))[0].max() for organ in c}
        assert top["liver"] > top["kidney_r"] and top["liver"] > top["gallbladder"]
        # anterior at the top of the image: the body wall in front of the liver, the spine behind
        assert c["liver"][1] < spine[1]


def test_body_outline_air_fat_muscle_and_bone_are_present(cases):
    for case in cases:
        corner = case.image[:, :4, :4]
        assert abs(corner.mean() + 1000) < 15  # air outside the body, -1000 HU plus noise
        for tissue in (Tissue.SUBCUTANEOUS_FAT, Tissue.MUSCLE, Tissue.CANCELLOUS_BONE, Tissue.RIB, Tissue.IVC,
                       Tissue.BOWEL_WALL):
            assert np.any(case.tissue == tissue), tissue.name
        assert np.all(case.label[case.tissue == Tissue.AIR] == 0)


def test_hounsfield_units_follow_the_portal_venous_table(cases):
    for case in cases:
        image = case.image.astype(float)
        mean = {organ: image[case.label == label].mean() for organ, label in ORGAN_ID.items()}
        # PROTOCOL.md section E: liver 100-130, spleen 110-130, pancreas 80-120, aorta 150-250, bile 0-20;
        # blur mixes in neighbours at the organ borders, hence a margin of ~20 HU
        assert 80 <= mean["liver"] <= 150 and 90 <= mean["spleen"] <= 150
        assert 60 <= mean["pancreas"] <= 135 and 130 <= mean["aorta"] <= 250
        assert -20 <= mean["gallbladder"] <= 70
        # the IVC beside the aorta is a darker look-alike (drawn 95-130 vs 160-230)
        assert image[case.tissue == Tissue.IVC].mean() < mean["aorta"] - 20
        # fat vs liver: high contrast
        assert mean["liver"] - image[case.tissue == Tissue.SUBCUTANEOUS_FAT].mean() > 150


def test_pancreas_has_low_contrast_to_its_soft_tissue_neighbours(cases):
    # neighbours: every non-fat voxel (> -30 HU) within ~10 mm in-plane of the pancreas (duodenum, jejunum,
    # splenic vein, stomach wall, ...). They differ from it by less than 40 HU on average, while the
    # liver and the fat around it differ by > 150 HU: the pancreas is found by shape and place, not intensity.
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    for case in cases:
        image = case.image.astype(float)
        pancreas = case.label == ORGAN_ID["pancreas"]
        ring = ndimage.binary_dilation(pancreas, in_plane, iterations=round(10 / case.spacing[2])) & ~pancreas
        neighbours = ring & (image > -30)
        assert neighbours.sum() > 0.2 * ring.sum()
        assert abs(image[pancreas].mean() - image[neighbours].mean()) < 40
        # collapsed loops (duodenum, jejunum) are drawn 30 HU darker to 10 HU brighter than the pancreas
        assert -30 <= case.hu["bowel_collapsed"] - case.hu["pancreas"] <= 10
        assert 80 <= case.hu["pancreas"] <= 120


def test_noise_has_the_drawn_standard_deviation(cases):
    # deep inside the visceral fat (2 voxels from anything else) the image is fat HU + noise only
    for case in cases:
        fat = ndimage.binary_erosion(case.tissue == Tissue.VISCERAL_FAT, iterations=2)
        measured = case.image[fat].std()
        assert 10 <= case.params["noise_sigma_hu"] <= 25
        assert measured == pytest.approx(case.params["noise_sigma_hu"], rel=0.1)


# ----------------------------------------------------------------------------------- NIfTI files


def test_nifti_files_read_back_exactly_with_the_documented_transpose(cache):
    spec, folder = cache
    for number in (1, 2):
        image, label, spacing = generate_case(case_seed(spec.seed, number), spec)
        img = nib.load(folder / "img" / f"img{number:04d}.nii.gz")
        lbl = nib.load(folder / "label" / f"label{number:04d}.nii.gz")
        assert img.get_data_dtype() == np.int16 and lbl.get_data_dtype() == np.uint8
        assert np.array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), image)
        assert np.array_equal(np.asarray(lbl.dataobj).transpose(2, 1, 0), label)
        assert tuple(float(z) for z in img.header.get_zooms()[::-1]) == spacing
        sz, sy, sx = spacing
        for nifti in (img, lbl):
            affine = nifti.affine
            assert np.allclose(np.diag(affine)[:3], [-sx, -sy, sz])
            assert np.count_nonzero(affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))) == 0
            assert nib.aff2axcodes(affine) == ("L", "P", "S")  # columns to the patient's left, rows back, slices up
            assert int(nifti.header["qform_code"]) == 1 and int(nifti.header["sform_code"]) == 1
        assert np.allclose(img.affine, lbl.affine)


def test_dataset_json_describes_every_case(cache):
    spec, folder = cache
    record = json.loads((folder / "dataset.json").read_text())
    assert record["name"] == "segbench-phantom"
    assert record["spec"] == spec.as_dict()
    assert record["labels"] == {"0": "background", "1": "spleen", "2": "kidney_r", "3": "kidney_l",
                                "4": "gallbladder", "5": "liver", "6": "stomach", "7": "aorta", "8": "pancreas"}
    assert [c["id"] for c in record["cases"]] == ["0001", "0002"]
    for entry in record["cases"]:
        image, _, spacing = generate_case(case_seed(spec.seed, int(entry["id"])), spec)
        assert entry["image"] == f"img/img{entry['id']}.nii.gz" and entry["label"] == f"label/label{entry['id']}.nii.gz"
        assert (folder / entry["image"]).is_file() and (folder / entry["label"]).is_file()
        assert entry["spacing"] == list(spacing) and entry["shape"] == list(image.shape)
    assert folder.name == spec.key()


# ----------------------------------------------------------------------------------- the cache


def counting(monkeypatch, fail: bool = False, delay_s: float = 0.0) -> list[int]:
    """Replace generate_case, where ensure_phantom calls it, by a wrapper that records each call (and
    fails or waits if asked)."""
    calls, original = [], phantom_cache.generate_case

    def wrapper(seed, spec):
        calls.append(seed)
        if fail:
            raise AssertionError("generate_case must not be called: the cache is complete")
        time.sleep(delay_s)
        return original(seed, spec)

    monkeypatch.setattr(phantom_cache, "generate_case", wrapper)
    return calls


def test_second_call_generates_nothing(tmp_path, monkeypatch):
    spec = PhantomSpec(num_cases=2, size=64, slice_thickness=(10.0,))
    folder = ensure_phantom(tmp_path, spec, progress=False)
    counting(monkeypatch, fail=True)
    assert ensure_phantom(tmp_path, spec, progress=False) == folder


def test_deleted_case_file_is_regenerated_and_stale_temporary_ignored(tmp_path, monkeypatch):
    spec = PhantomSpec(num_cases=2, size=64, slice_thickness=(10.0,))
    folder = ensure_phantom(tmp_path, spec, progress=False)
    original = (folder / "label" / "label0002.nii.gz").read_bytes()
    (folder / "label" / "label0002.nii.gz").unlink()
    # what a killed generator leaves behind: a half-written temporary next to the real files
    stale = folder / "label" / ".tmp-99999-deadbeef-label0002.nii.gz"
    stale.write_bytes(b"truncated")
    calls = counting(monkeypatch)
    ensure_phantom(tmp_path, spec, progress=False)
    assert calls == [case_seed(spec.seed, 2)]  # only the missing case
    assert (folder / "label" / "label0002.nii.gz").read_bytes() == original  # deterministic
    assert not stale.exists()
    assert sorted(p.name for p in (folder / "label").iterdir()) == ["label0001.nii.gz", "label0002.nii.gz"]


def test_interrupted_run_without_dataset_json_is_completed_without_regenerating(tmp_path, monkeypatch):
    spec = PhantomSpec(num_cases=2, size=64, slice_thickness=(10.0,))
    folder = ensure_phantom(tmp_path, spec, progress=False)
    (folder / "dataset.json").unlink()  # killed after the last case, before the json
    (folder / "img" / "img0001.nii.gz").unlink()
    calls = counting(monkeypatch)
    ensure_phantom(tmp_path, spec, progress=False)
    assert calls == [case_seed(spec.seed, 1)]
    assert json.loads((folder / "dataset.json").read_text())["spec"] == spec.as_dict()


def test_dataset_json_for_another_spec_means_incomplete(tmp_path, monkeypatch):
    spec = PhantomSpec(num_cases=2, size=64, slice_thickness=(10.0,))
    folder = ensure_phantom(tmp_path, spec, progress=False)
    record = json.loads((folder / "dataset.json").read_text())
    record["spec"]["seed"] = 99
    (folder / "dataset.json").write_text(json.dumps(record))
    calls = counting(monkeypatch)
    ensure_phantom(tmp_path, spec, progress=False)
    assert calls == []  # every case file exists: only the json is rewritten
    assert json.loads((folder / "dataset.json").read_text())["spec"]["seed"] == spec.seed


def test_case_files_do_not_depend_on_the_number_of_cases(tmp_path):
    two = ensure_phantom(tmp_path, PhantomSpec(num_cases=2, size=64, slice_thickness=(10.0,)), progress=False)
    three = ensure_phantom(tmp_path, PhantomSpec(num_cases=3, size=64, slice_thickness=(10.0,)), progress=False)
    assert two != three
    for name in ("img/img0002.nii.gz", "label/label0002.nii.gz"):
        assert np.array_equal(np.asarray(nib.load(two / name).dataobj), np.asarray(nib.load(three / name).dataobj))


def test_concurrent_callers_generate_each_case_once(tmp_path, monkeypatch):
    # two sweep jobs start together; the lock makes the second wait and then find the cache complete.
    # generate_case is slowed down so that without the lock both would be generating at the same time.
    spec = PhantomSpec(num_cases=2, size=64, slice_thickness=(10.0,))
    calls = counting(monkeypatch, delay_s=0.3)
    folders, errors = [], []

    def job():
        try:
            folders.append(ensure_phantom(tmp_path, spec, progress=False))
        except Exception as exc:  # noqa: BLE001 - any error of a concurrent generator is collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(calls) == sorted(case_seed(spec.seed, n) for n in (1, 2))
    assert folders[0] == folders[1] == tmp_path / spec.key()
    assert (tmp_path / f"{spec.key()}.lock").exists()


# ----------------------------------------------------------------------------------- the spec


def test_key_is_short_stable_and_changes_with_every_field():
    spec = PhantomSpec()
    assert re.fullmatch(r"n20_s448_[0-9a-f]{8}", spec.key())
    assert PhantomSpec().key() == spec.key()
    assert PhantomSpec(slice_thickness=[2.5, 3.0, 5.0]).key() == spec.key()  # lists from configs are normalised
    variants = [PhantomSpec(num_cases=5), PhantomSpec(size=256), PhantomSpec(fov_mm=(350.0, 420.0)),
                PhantomSpec(slice_thickness=(10.0,)), PhantomSpec(z_extent_mm=(200.0, 230.0)), PhantomSpec(seed=1)]
    assert len({v.key() for v in variants} | {spec.key()}) == len(variants) + 1


@pytest.mark.parametrize("field, value", [
    ("num_cases", 0), ("num_cases", 2.5), ("size", 16), ("size", 4096), ("fov_mm", (420.0, 340.0)),
    ("fov_mm", (100.0, 200.0)), ("slice_thickness", ()), ("slice_thickness", (0.0,)), ("slice_thickness", (-3.0,)),
    ("z_extent_mm", (50.0, 120.0)), ("z_extent_mm", (200.0,)), ("z_extent_mm", (230.0, 180.0)), ("seed", -1),
])
def test_bad_spec_raises_value_error_naming_the_field_and_range(field, value):
    with pytest.raises(ValueError, match=rf"PhantomSpec\.{field} must be .*\d"):
        PhantomSpec(**{field: value})
