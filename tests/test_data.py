"""Tests for destseg_lib.data: splits, readers, resizing, augmentation, datasets."""
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from destseg_lib.data import (
    ROTATION_POLICY, DataError, Sample, TestImages, TrainImages, folder_split,
    is_grayscale_image, mtd_split, mvtec_split, open_dataset, read_image, read_mask,
    resize_image, resize_mask, rotate_augment,
)

RNG = np.random.default_rng(123)


def _img(path, h=12, w=10, gray=False, fmt=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = RNG.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
    Image.fromarray(a).save(path, format=fmt)
    return path


def _mask(path, h=12, w=10, values=(0, 255), box=(2, 6, 3, 7)):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((h, w), values[0], np.uint8)
    a[box[0]:box[1], box[2]:box[3]] = values[1]
    Image.fromarray(a).save(path)
    return path


def _mvtec_tree(root, cat="widget", n_train=3, gray=False, defects=("crack", "scratch")):
    c = root / cat
    for i in range(n_train):
        _img(c / "train" / "good" / f"{i:03d}.png", gray=gray)
    _img(c / "test" / "good" / "000.png", gray=gray)
    _img(c / "test" / "good" / "001.JPG", gray=gray, fmt="JPEG")  # case-insensitive ext
    for d in defects:
        for i in range(2):
            _img(c / "test" / d / f"{i:03d}.png", gray=gray)
            _mask(c / "ground_truth" / d / f"{i:03d}_mask.png")
    (c / "test" / "good" / "notes.txt").write_text("not an image")
    return c


# ----------------------------------------------------------------------------- splits
def test_mvtec_split_synthetic_tree(tmp_path):
    _mvtec_tree(tmp_path, "bottle")
    s = mvtec_split(tmp_path, "bottle")
    assert s.name == "mvtec/bottle" and s.rotation == "quarter" and s.grayscale is False
    assert [Path(x.path).name for x in s.train] == ["000.png", "001.png", "002.png"]
    assert all(x.label == 0 and x.mask_path is None for x in s.train)
    types = [x.defect_type for x in s.test]
    assert types == ["crack", "crack", "good", "good", "scratch", "scratch"]
    for x in s.test:
        assert x.label == (x.defect_type != "good")
        if x.label:
            assert x.mask_path.endswith(f"ground_truth/{x.defect_type}/{Path(x.path).stem}_mask.png")
    assert mvtec_split(tmp_path, "bottle") == s  # deterministic
    assert mvtec_split(tmp_path, "bottle", rotation="none").rotation == "none"


def test_mvtec_rotation_policy_and_grayscale(tmp_path):
    _mvtec_tree(tmp_path, "somethingnew", gray=True)
    s = mvtec_split(tmp_path, "somethingnew")
    assert s.rotation == "none" and s.grayscale is True
    assert ROTATION_POLICY["wood"] == "small" and ROTATION_POLICY["pill"] == "none"
    assert ROTATION_POLICY["carpet"] == "quarter" and len(ROTATION_POLICY) == 15
    with pytest.raises(DataError, match="rotation"):
        mvtec_split(tmp_path, "somethingnew", rotation="sideways")


def test_missing_root_mentions_download_and_env(tmp_path):
    missing = tmp_path / "nope"
    for fn in (lambda: mvtec_split(missing, "bottle"), lambda: mtd_split(missing)):
        with pytest.raises(DataError) as e:
            fn()
        msg = str(e.value)
        assert str(missing) in msg and "data_download.sh" in msg and "DESTSEG_DATA" in msg


def test_missing_category_lists_found(tmp_path):
    _mvtec_tree(tmp_path, "bottle")
    _mvtec_tree(tmp_path, "cable")
    with pytest.raises(DataError) as e:
        mvtec_split(tmp_path, "bottel")
    assert "bottel" in str(e.value) and "'bottle'" in str(e.value) and "'cable'" in str(e.value)
    # the data_download.sh target (holding mvtec/) works as a root too
    (tmp_path / "dl").mkdir()
    with pytest.raises(DataError, match="categories found there: none"):
        mvtec_split(tmp_path / "dl", "bottle")
    _mvtec_tree(tmp_path / "dl" / "mvtec", "bottle")
    assert len(mvtec_split(tmp_path / "dl", "bottle").train) == 3


def test_empty_train_folder(tmp_path):
    c = _mvtec_tree(tmp_path, "bottle", n_train=0)
    (c / "train" / "good").mkdir(parents=True, exist_ok=True)
    with pytest.raises(DataError, match="no images") as e:
        mvtec_split(tmp_path, "bottle")
    assert str(c / "train" / "good") in str(e.value)


def test_defect_without_mask_names_expected_path(tmp_path):
    c = _mvtec_tree(tmp_path, "bottle")
    (c / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DataError) as e:
        mvtec_split(tmp_path, "bottle")
    assert str(c / "ground_truth" / "crack" / "001_mask.png") in str(e.value)


def test_warnings_for_one_sided_test_sets(tmp_path):
    _mvtec_tree(tmp_path, "a", defects=())
    with pytest.warns(UserWarning, match="no anomalous images.*skipped"):
        mvtec_split(tmp_path, "a")
    c = _mvtec_tree(tmp_path, "b")
    for p in (c / "test" / "good").iterdir():
        p.unlink()
    with pytest.warns(UserWarning, match="no normal images"):
        mvtec_split(tmp_path, "b")
    _mvtec_tree(tmp_path, "c")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mvtec_split(tmp_path, "c")  # both kinds present: silent


def test_folder_split_subfolders_and_flat(tmp_path):
    for i in range(2):
        _img(tmp_path / "good" / f"g{i}.png", gray=True)
    _img(tmp_path / "test" / "ok" / "n0.png")
    _img(tmp_path / "test" / "dent" / "d0.png")
    _mask(tmp_path / "masks" / "dent" / "d0_mask.png")
    _img(tmp_path / "test" / "f_anom.png")
    _mask(tmp_path / "masks" / "f_anom.png")
    _img(tmp_path / "test" / "f_zero.png")
    _mask(tmp_path / "masks" / "f_zero.png", values=(0, 0))
    _img(tmp_path / "test" / "f_none.png")
    s = folder_split(tmp_path / "good", tmp_path / "test", tmp_path / "masks",
                     good_test_subdir="ok", name="mine")
    assert s.name == "mine" and s.grayscale is True and s.rotation == "none" and len(s.train) == 2
    got = {Path(x.path).stem: (x.label, x.defect_type, x.mask_path is not None) for x in s.test}
    assert got == {"f_anom": (1, "anomaly", True), "f_zero": (0, "good", False),
                   "f_none": (0, "good", False), "n0": (0, "good", False),
                   "d0": (1, "dent", True)}
    with pytest.raises(DataError, match="d0"):  # defect subfolder but no masks at all
        folder_split(tmp_path / "good", tmp_path / "test", None, good_test_subdir="ok")
    ds = open_dataset("folder", tmp_path, good_dir=tmp_path / "good", test_dir=tmp_path / "test",
                      mask_dir=tmp_path / "masks", good_test_subdir="ok")
    assert ds.test == s.test


def test_open_dataset_dispatch(tmp_path):
    _mvtec_tree(tmp_path, "bottle")
    assert open_dataset("mvtec", tmp_path, "bottle").test == mvtec_split(tmp_path, "bottle").test
    s = open_dataset("folder", tmp_path, "bottle")  # MVTec-like layout works as a folder too
    assert len(s.train) == 3 and sum(x.label for x in s.test) == 4
    with pytest.raises(DataError, match="category"):
        open_dataset("mvtec", tmp_path)
    with pytest.raises(DataError, match="'mvtec', 'mtd' or 'folder'"):
        open_dataset("visa", tmp_path)


# ----------------------------------------------------------------------------- reading
@pytest.mark.parametrize("ext,fmt", [("jpg", "JPEG"), ("png", "PNG")])
def test_truncated_image(tmp_path, ext, fmt):
    p = _img(tmp_path / f"x.{ext}", 64, 64, fmt=fmt)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DataError) as e:
        read_image(p)
    assert str(p) in str(e.value) and "re-download" in str(e.value)
    q = tmp_path / "garbage.png"
    q.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="garbage.png"):
        read_image(q)


def test_read_image_modes(tmp_path):
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(g, "L").save(tmp_path / "l.png")
    Image.fromarray(np.dstack([g, np.full_like(g, 7)]), "LA").save(tmp_path / "la.png")
    rgba = np.dstack([g, g // 2, 255 - g, np.zeros_like(g)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(g, "L").convert("P").save(tmp_path / "p.png")
    Image.fromarray((g.astype(np.uint16) * 257)).save(tmp_path / "s16.png")
    assert Image.open(tmp_path / "s16.png").mode.startswith("I")
    for name in ("l", "la", "p", "s16"):
        a = read_image(tmp_path / f"{name}.png")
        assert a.dtype == np.uint8 and a.shape == (3, 4, 3) and is_grayscale_image(a), name
        np.testing.assert_array_equal(a[..., 0], g, err_msg=name)
    a = read_image(tmp_path / "rgba.png")  # alpha 0 everywhere: dropped, colour kept
    np.testing.assert_array_equal(a, rgba[..., :3])
    assert not is_grayscale_image(a)


def test_read_mask_levels_and_errors(tmp_path):
    assert read_mask(_mask(tmp_path / "a.png")).sum() == 16
    assert read_mask(_mask(tmp_path / "b.png", values=(0, 1))).sum() == 16
    rgb = np.zeros((12, 10, 3), np.uint8)
    rgb[2:6, 3:7, 0] = 200
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png").sum() == 16
    bad = np.zeros((12, 10), np.uint8)
    bad[:4], bad[4:8] = 1, 2
    Image.fromarray(bad).save(tmp_path / "label_map.png")
    with pytest.raises(DataError) as e:
        read_mask(tmp_path / "label_map.png")
    assert "label_map.png" in str(e.value) and "0 (" in str(e.value) and "2 (" in str(e.value)
    photo = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    with pytest.raises(DataError, match="not binary"):
        read_mask(tmp_path / "photo.png")
    # anti-aliased edge (as in the published MTD masks): few soft pixels -> half-range cut
    soft = np.zeros((40, 40), np.uint8)
    soft[10:20, 10:20], soft[9, 10:20], soft[20, 10:20] = 255, 200, 60
    Image.fromarray(soft).save(tmp_path / "soft.png")
    m = read_mask(tmp_path / "soft.png")
    assert m.sum() == 110 and m[9].any() and not m[20].any()
    with pytest.raises(DataError):
        read_mask(tmp_path / "soft.png", soft_tolerance=0.0)


def test_mask_size_mismatch_raised_on_read(tmp_path):
    img = _img(tmp_path / "t" / "d.png", 12, 10)
    msk = _mask(tmp_path / "m" / "d.png", 11, 10)
    ds = TestImages([Sample(str(img), 1, "dent", str(msk))], 8)
    with pytest.raises(DataError) as e:
        ds[0]
    msg = str(e.value)
    assert str(img) in msg and str(msk) in msg and "11x10" in msg and "12x10" in msg
    with pytest.raises(DataError, match="11x10"):
        ds.native_mask(0)


# ----------------------------------------------------------------------------- transforms
def test_resize_mask_threshold_hand_example_cv2():
    # resize="cv2": 1x4 -> 1x2 bilinear (half-pixel centres): outputs at source x=0.5 and 2.5
    m = np.array([[1, 0, 1, 1]] * 4, bool)
    out = resize_mask(m, 2, "cv2")
    assert out.shape == (1, 2, 2) and out.dtype == torch.float32
    # x=0.5 -> (1+0)/2 = 0.5 -> kept (>= 0.5); x=2.5 -> 1 -> kept
    assert out[0, 0].tolist() == [1.0, 1.0]
    m2 = np.array([[1, 0, 0, 0]] * 4, bool)  # x=0.5 -> 0.5 kept, x=2.5 -> 0
    assert resize_mask(m2, 2, "cv2")[0, 0].tolist() == [1.0, 0.0]
    m3 = np.zeros((3, 3), bool)
    m3[1, 1] = True  # 3->2: each output mixes it with weight 0.25*... < 0.5 -> vanishes
    assert resize_mask(m3, 2, "cv2").sum() == 0
    assert set(resize_mask(RNG.random((9, 7)) > 0.5, 16, "cv2").unique().tolist()) <= {0.0, 1.0}


def test_resize_mask_threshold_hand_example_antialiased():
    # official (PIL bilinear, antialiased): shrinking 4 -> 2 widens the triangle filter to 2 source
    # pixels on each side; output 0 (centre x=1.0) weighs pixels 0, 1, 2 by 0.75, 0.75, 0.25 (/1.75)
    m = np.array([[1, 0, 1, 1]] * 4, bool)  # (0.75 + 0.25) / 1.75 = 0.57 -> 1; (0.75 + 0.75) / 1.75 -> 1
    assert resize_mask(m, 2)[0, 0].tolist() == [1.0, 1.0]
    m2 = np.array([[1, 0, 0, 0]] * 4, bool)  # 0.75 / 1.75 = 0.43 -> 0 (cv2 kept it: 0.5)
    assert resize_mask(m2, 2)[0, 0].tolist() == [0.0, 0.0]
    m4 = np.array([[1, 1, 0, 0]] * 4, bool)  # 1.5 / 1.75 -> 1; 0.25 / 1.75 -> 0
    assert resize_mask(m4, 2)[0, 0].tolist() == [1.0, 0.0]
    assert set(resize_mask(RNG.random((9, 7)) > 0.5, 16).unique().tolist()) <= {0.0, 1.0}


def test_resize_image_range():
    a = RNG.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    t = resize_image(a, 5)
    assert t.shape == (3, 5, 5) and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
    flat = resize_image(np.full((4, 6, 3), 255, np.uint8), 8)
    assert torch.all(flat == 1.0)


def test_rotate_augment():
    img = torch.rand(3, 16, 16)
    assert rotate_augment(img, "none", np.random.default_rng(0)) is img
    for pol in ("small", "quarter"):
        a = rotate_augment(img, pol, np.random.default_rng(7))
        b = rotate_augment(img, pol, np.random.default_rng(7))
        assert a.shape == img.shape and a.dtype == img.dtype and torch.equal(a, b)
        assert not torch.equal(a, img)
        assert 0 <= a.min() and a.max() <= 1
    # the centre pixel stays put under a small rotation about the centre
    c = torch.zeros(3, 17, 17)
    c[:, 8, 8] = 1.0
    assert rotate_augment(c, "small", np.random.default_rng(1))[:, 8, 8].min() > 0.9
    # quarter = k quarter turns (drawn first), then the "small" rotation
    rng = np.random.default_rng(3)
    k = int(rng.integers(4))
    expected = rotate_augment(torch.rot90(img, k, (1, 2)), "small", rng)
    assert torch.equal(rotate_augment(img, "quarter", np.random.default_rng(3)), expected)
    with pytest.raises(DataError):
        rotate_augment(img, "tilt", np.random.default_rng(0))


# ----------------------------------------------------------------------------- datasets
def test_train_and_test_images(tmp_path):
    _mvtec_tree(tmp_path, "bottle")
    s = mvtec_split(tmp_path, "bottle")
    a, b = TrainImages(s.train, 8, cache=True), TrainImages(s.train, 8, cache=False)
    assert len(a) == 3 and torch.equal(a[1], b[1]) and torch.equal(a[1], a[1])
    assert a[0].shape == (3, 8, 8)
    t = TestImages(s.test, 8, cache=True)
    for i in range(len(t)):
        it = t[i]
        assert set(it) == {"image", "mask", "label", "defect_type", "path", "index"}
        assert it["image"].shape == (3, 8, 8) and it["mask"].shape == (1, 8, 8)
        assert it["index"] == i and it["path"] == s.test[i].path
        assert (it["mask"].sum() > 0) == bool(it["label"])
        assert t.native_size(i) == (12, 10)
        nm = t.native_mask(i)
        assert nm.dtype == bool and nm.shape == (12, 10) and nm.sum() == 16 * it["label"]
    assert torch.equal(t[0]["image"], TestImages(s.test, 8)[0]["image"])
    with pytest.raises(DataError):
        TrainImages([], 8)


# ----------------------------------------------------------------------------- real MTD
@pytest.fixture(scope="module")
def mtd_root():
    root = os.environ.get("DESTSEG_DATA")
    if not root:
        pytest.skip("DESTSEG_DATA is not set (folder holding mtd/ and dtd_subset/)")
    if not (Path(root) / "mtd").is_dir():
        pytest.skip(f"DESTSEG_DATA={root} has no mtd/ folder")
    return Path(root) / "mtd"


def test_mtd_real_counts_and_split(mtd_root):
    s = mtd_split(mtd_root)
    counts = {}
    for x in s.test:
        counts[x.defect_type] = counts.get(x.defect_type, 0) + 1
    n_free = len(list((mtd_root / "MT_Free" / "Imgs").glob("*.jpg")))
    expected = {d.name[3:].lower(): len(list((d / "Imgs").glob("*.jpg")))
                for d in mtd_root.glob("MT_*") if d.name != "MT_Free"}
    assert {k: v for k, v in counts.items() if k != "good"} == expected
    assert len(s.train) == round(0.8 * n_free) and len(s.train) + counts["good"] == n_free
    assert s.grayscale is True and s.rotation == "none" and s.name == "mtd"
    assert sum(x.label for x in s.test) == sum(expected.values())
    assert not {x.path for x in s.train} & {x.path for x in s.test}
    assert mtd_split(mtd_root) == s and mtd_split(mtd_root.parent) == s  # parent holds mtd/
    other = mtd_split(mtd_root, seed=1)
    assert {x.path for x in other.train} != {x.path for x in s.train}
    assert len(mtd_split(mtd_root, train_fraction=0.5).train) == round(0.5 * n_free)


def test_mtd_real_masks_match_images(mtd_root):
    s = mtd_split(mtd_root)
    defects = [i for i, x in enumerate(s.test) if x.label == 1]
    t = TestImages(s.test, 64)
    for i in defects[:: max(1, len(defects) // 6)]:
        assert t.native_mask(i).shape == t.native_size(i) == read_image(s.test[i].path).shape[:2]
        it = t[i]
        assert it["mask"].shape == (1, 64, 64) and it["image"].shape == (3, 64, 64)
    good = next(i for i, x in enumerate(s.test) if x.label == 0)
    assert not t.native_mask(good).any()


# ----------------------------------------------------------------------------- validation
def _truncate(path, keep=0.5):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


def test_validate_split_lists_every_problem_at_once(tmp_path):
    from destseg_lib.data_checks import validate_split

    c = _mvtec_tree(tmp_path, "widget", n_train=4)
    assert validate_split(mvtec_split(tmp_path, "widget")).name == "mvtec/widget"  # intact: passes
    _img(c / "train" / "good" / "003.png", h=64, w=64)  # big enough that half of it is truncated data
    _truncate(c / "train" / "good" / "003.png")
    _img(c / "test" / "good" / "000.png", h=64, w=64)
    _truncate(c / "test" / "good" / "000.png")
    (c / "test" / "good" / "001.JPG").write_bytes(b"<html>not an image</html>")
    _mask(c / "ground_truth" / "crack" / "000_mask.png", h=11, w=10)  # image is 12x10
    _mask(c / "ground_truth" / "scratch" / "001_mask.png", values=(0, 255), box=(0, 12, 0, 5))
    a = np.asarray(Image.open(c / "ground_truth" / "scratch" / "001_mask.png")).copy()
    a[:, 5:] = 90  # a third level over half of the mask: not binary
    Image.fromarray(a).save(c / "ground_truth" / "scratch" / "001_mask.png")
    split = mvtec_split(tmp_path, "widget")
    with pytest.raises(DataError) as e:
        validate_split(split)
    msg = str(e.value)
    assert "5 problem(s)" in msg
    for bad in ("train/good/003.png", "test/good/000.png", "test/good/001.JPG",
                "ground_truth/crack/000_mask.png", "ground_truth/scratch/001_mask.png"):
        assert bad in msg, bad
    assert "11x10" in msg and "not binary" in msg
    for ok in ("train/good/000.png", "test/crack/001.png", "ground_truth/crack/001_mask.png"):
        assert ok not in msg


def test_mask_check_agrees_with_read_mask(tmp_path):
    """The validator's quick mask check gives read_mask's verdict on every kind of mask."""
    from destseg_lib.data_checks import _mask_problem

    cases = {
        "bin255": np.where(np.arange(120).reshape(12, 10) % 7 == 0, 255, 0).astype(np.uint8),
        "bin1": (np.arange(120).reshape(12, 10) % 5 == 0).astype(np.uint8),
        "empty": np.zeros((12, 10), np.uint8), "full": np.full((12, 10), 255, np.uint8),
        "two_nonzero": np.where(np.arange(120).reshape(12, 10) % 2 == 0, 100, 255).astype(np.uint8),
        "soft_edges": np.where(np.arange(120).reshape(12, 10) < 60, 0, 255).astype(np.uint8),
        "grey_blob": np.where(np.arange(120).reshape(12, 10) < 60, 0, 90).astype(np.uint8),
        "many_levels": (np.arange(120).reshape(12, 10) * 2).astype(np.uint8),
    }
    cases["soft_edges"][5, 0:3] = (60, 128, 200)  # 3 of 120 px anti-aliased: within tolerance
    paths = {}
    for name, a in cases.items():
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(a).save(paths[name])
    paths["mode1"] = tmp_path / "mode1.png"
    Image.fromarray(cases["bin1"].astype(bool)).save(paths["mode1"])
    paths["rgb"] = tmp_path / "rgb.png"
    Image.fromarray(np.stack([cases["bin255"]] * 3, -1)).save(paths["rgb"])
    paths["i16"] = tmp_path / "i16.png"
    Image.fromarray(cases["bin1"].astype(np.uint16) * 65535).save(paths["i16"])
    verdicts = {}
    for name, p in paths.items():
        try:
            read_mask(p, (12, 10))
            ref = None
        except DataError:
            ref = "bad"
        got = _mask_problem(str(p), (12, 10), "img.png")
        assert (got is None) == (ref is None), (name, got)
        verdicts[name] = ref
    assert verdicts["bin255"] is None and verdicts["many_levels"] == "bad"  # both kinds were exercised


def test_training_refuses_bad_test_data_before_the_first_step(toy_root, tmp_path, ci_cfg):
    """A corrupt test image / wrong-size or non-binary mask is reported before training, not after."""
    import shutil

    from destseg_lib.train import train_model

    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    img = sorted((root / "toy_part" / "test" / "good").glob("*.png"))[0]
    _truncate(img)
    mask = sorted((root / "toy_part" / "ground_truth" / "hole").glob("*.png"))[0]
    _mask(mask, h=17, w=9)
    split = mvtec_split(root, "toy_part")
    steps = []
    with pytest.raises(DataError) as e:
        train_model(ci_cfg, split, tmp_path / "out", progress=False, callback=steps.append)
    assert str(img) in str(e.value) and str(mask) in str(e.value)
    assert steps == [] and not (tmp_path / "out" / "checkpoints" / "last.pt").exists()


def test_run_refuses_an_empty_test_set_before_training(toy_split, tmp_path, ci_cfg):
    import dataclasses

    from destseg_lib.experiment import run

    empty = dataclasses.replace(toy_split, test=[])
    with pytest.raises(DataError, match="test set is empty"):
        run(ci_cfg, empty, tmp_path / "out", progress=False, figures=False)
    assert not (tmp_path / "out" / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "out" / "model.pt").exists()
