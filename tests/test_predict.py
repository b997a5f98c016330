"""``destseg predict`` as an engineer runs it: a subprocess on a trained ci model whose thresholds were
chosen on a validation split; every output file, decisions at the stored thresholds, failures
reported while the rest is scored, distinct names for same-named inputs, no silent overwrite."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from destseg_lib.checkpoint import read_checkpoint

from destseg_lib.scoring import collect_inputs, map_to_png16, output_names, png16_to_map


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "destseg_lib.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from destseg_lib.toy import make_toy_dataset

    tmp = tmp_path_factory.mktemp("predict")
    data = make_toy_dataset(tmp / "toy", n_train=8, n_test_good=4, n_per_defect=2, size=80)
    out = tmp / "run"
    r = _cli("run", "--preset", "ci", "--data-root", data, "--out", out, "--device", "cpu",
             "--set", "val_fraction=0.5")
    assert r.returncode == 0, r.stderr[-2000:]
    return data, out


@pytest.mark.slow
def test_thresholds_chosen_on_the_validation_split_and_stored(trained):
    data, out = trained
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_validation"] == 6 and m["n_test"] == 6  # 2 good + 1 per defect type held out
    assert m["results"]["DeSTSeg"]["n_images"] == 6  # metrics on the other half only
    ckpt = read_checkpoint(out / "model.pt")  # the thresholds live beside the model, tied to its weights
    assert torch.load(out / "model.pt", weights_only=True)["thresholds"] == {}  # model.pt is not rewritten
    assert ckpt["thresholds_file"] == str(out / "model.thresholds.json")
    t = ckpt["thresholds"]
    assert t["rule"] == "best_f1" and t["method"] == "DeSTSeg" and "validation split" in t["chosen_on"]
    assert isinstance(t["image"], float) and isinstance(t["pixel"], float)
    # the stored image threshold is the best-F1 score of the validation images, not of the test ones
    scored = {r["path"] for r in csv.DictReader(open(out / "per_image.csv"))}
    assert len(scored) == 6
    assert set(m["decisions_on_test"]) >= {"image_f1", "pixel_f1"}


@pytest.mark.slow
def test_predict_subprocess_writes_every_file_and_reports_failures(trained, tmp_path):
    data, out = trained
    test_dir = data / "toy_part" / "test"
    bad = tmp_path / "inputs" / "corrupt.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    wide = tmp_path / "inputs" / "wide.png"
    cv2.imwrite(str(wide), np.full((40, 120), 90, np.uint8))  # another size and mode
    res = tmp_path / "res"
    r = _cli("predict", "--checkpoint", out / "model.pt", "--out", res, "--device", "cpu", "--batch-size", 3,
             test_dir, bad, wide, tmp_path / "missing_folder", str(tmp_path / "none_*.png"))
    assert r.returncode == 1, r.stderr[-2000:]  # some inputs failed
    assert "corrupt.png" in r.stderr and "missing_folder" in r.stderr and "none_*.png" in r.stderr
    rows = list(csv.DictReader(open(res / "predictions.csv")))
    ok = [x for x in rows if x["status"] == "ok"]
    failed = [x for x in rows if x["status"] == "error"]
    n_test = sum(1 for _ in test_dir.rglob("*.png"))
    assert len(ok) == n_test + 1 and len(failed) == 3
    assert all(x["error"] for x in failed)
    ckpt = read_checkpoint(out / "model.pt")
    t_img, t_pix = ckpt["thresholds"]["image"], ckpt["thresholds"]["pixel"]
    names = set()
    for row in ok:
        src = cv2.imread(row["input"], cv2.IMREAD_UNCHANGED)
        h, w = src.shape[:2]
        assert (int(row["height"]), int(row["width"])) == (h, w)
        amap = np.load(res / row["map_npy"])
        png = cv2.imread(str(res / row["map_png"]), cv2.IMREAD_UNCHANGED)
        assert amap.shape == (h, w) and amap.dtype == np.float32
        assert png.dtype == np.uint16 and png.shape == (h, w)
        assert np.abs(png16_to_map(png) - np.clip(amap, 0, 1)).max() <= 0.5 / 65535 + 1e-7
        overlay = cv2.imread(str(res / row["overlay_png"]), cv2.IMREAD_UNCHANGED)
        assert overlay.shape == (h, w, 3)
        mask = cv2.imread(str(res / row["mask_png"]), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask > 0, amap >= t_pix)
        assert float(row["image_threshold"]) == t_img and float(row["pixel_threshold"]) == t_pix
        assert row["decision"] == ("anomalous" if float(row["score"]) >= t_img else "normal")
        names.add(row["map_npy"])
    assert len(names) == len(ok)  # test/{good,hole,...}/000.png never share an output
    assert {"good/000_map.npy", "hole/000_map.npy"} <= {n.split("test/")[-1] for n in names}

    # an existing output folder is not overwritten without --overwrite
    r2 = _cli("predict", "--checkpoint", out / "model.pt", "--out", res, "--device", "cpu", wide)
    assert r2.returncode == 2 and "--overwrite" in r2.stderr
    r3 = _cli("predict", "--checkpoint", out / "model.pt", "--out", res, "--device", "cpu", "--overwrite",
              "--threshold", "0", wide)
    assert r3.returncode == 0, r3.stderr[-2000:]
    rows = list(csv.DictReader(open(res / "predictions.csv")))
    assert len(rows) == 1 and rows[0]["decision"] == "anomalous"  # --threshold overrides the stored one


@pytest.mark.slow
def test_predict_scores_equal_the_evaluation_scores(trained, tmp_path):
    """The maps of predict (BN-folded graph, per-image resizing) are the evaluation's (infer.predict)."""
    data, out = trained
    r = _cli("predict", "--checkpoint", out / "model.pt", "--out", tmp_path / "p", "--device", "cpu",
             data / "toy_part" / "test")
    assert r.returncode == 0, r.stderr[-2000:]
    pred = {Path(x["input"]).resolve(): float(x["score"]) for x in csv.DictReader(open(tmp_path / "p" / "predictions.csv"))}
    evals = {Path(x["path"]).resolve(): float(x["score"]) for x in csv.DictReader(open(out / "per_image.csv"))}
    assert evals and all(abs(pred[p] - s) < 1e-4 for p, s in evals.items())


@pytest.mark.slow
def test_checkpoint_without_thresholds_gives_scores_and_says_so(tmp_path):
    from destseg_lib.toy import make_toy_dataset

    data = make_toy_dataset(tmp_path / "toy", n_train=4, n_test_good=2, n_per_defect=1, size=64)
    out = tmp_path / "run"
    assert _cli("train", "--preset", "ci", "--data-root", data, "--out", out, "--device", "cpu").returncode == 0
    img = next((data / "toy_part" / "test" / "good").glob("*.png"))
    r = _cli("predict", "--checkpoint", out / "model.pt", "--out", tmp_path / "p", "--device", "cpu", img)
    assert r.returncode == 0 and "no image and pixel threshold" in r.stderr and "val_fraction" in r.stderr
    row = next(csv.DictReader(open(tmp_path / "p" / "predictions.csv")))
    assert row["score"] and row["decision"] == "" and row["mask_png"] == ""


def test_output_names_mirror_folders_and_keep_colliding_extensions(tmp_path):
    files = [tmp_path / "t" / "hole" / "000.png", tmp_path / "t" / "good" / "000.png",
             tmp_path / "t" / "good" / "001.png", tmp_path / "t" / "good" / "001.jpg"]
    assert output_names(files) == ["hole/000", "good/000", "good/001_png", "good/001_jpg"]
    assert output_names([tmp_path / "a.png"]) == ["a"]
    assert len(set(output_names([tmp_path / "x" / "a_png.png", tmp_path / "x" / "a.png", tmp_path / "x" / "a.jpg"]))) == 3


def test_collect_inputs_files_folders_globs_and_problems(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for p in ("d/a.png", "d/sub/b.JPG", "d/notes.txt", "c.bmp"):
        (tmp_path / p).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    files, problems = collect_inputs([tmp_path / "d", str(tmp_path / "*.bmp"), tmp_path / "d" / "a.png",
                                      tmp_path / "empty", tmp_path / "nope.png", str(tmp_path / "z*.png")])
    assert [f.name for f in files] == ["a.png", "b.JPG", "c.bmp"]  # de-duplicated, .txt ignored
    assert [Path(p).name for p, _ in problems] == ["empty", "nope.png", "z*.png"]


def test_png16_round_trip():
    a = np.array([[0.0, 0.5, 1.0, 1.7, -0.2]], np.float32)
    assert np.allclose(png16_to_map(map_to_png16(a)), np.clip(a, 0, 1), atol=1 / 65535)


@pytest.mark.slow
def test_evaluating_again_without_a_validation_split_keeps_the_validated_thresholds(trained, tmp_path):
    import shutil

    data, out = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = read_checkpoint(copy / "model.pt")["thresholds"]
    model_bytes = (copy / "model.pt").read_bytes()
    r = _cli("run", "--preset", "ci", "--data-root", data, "--out", copy, "--device", "cpu")  # val_fraction=0
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((copy / "metrics.json").read_text())["n_test"] == 12  # loaded, evaluated on all
    assert read_checkpoint(copy / "model.pt")["thresholds"] == before
    assert (copy / "model.pt").read_bytes() == model_bytes  # evaluations never rewrite the trained model
