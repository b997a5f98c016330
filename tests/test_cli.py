import json

import cv2
import numpy as np
import pytest
import torch

from destseg_lib.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One end-to-end `destseg demo --preset ci` run on a small toy dataset, made here (each test
    that uses it can run alone): (data root, run folder, what the command printed)."""
    import contextlib
    import io

    from destseg_lib.toy import make_toy_dataset

    tmp = tmp_path_factory.mktemp("cli")
    data = make_toy_dataset(tmp / "toy", n_train=8, n_test_good=4, n_per_defect=2, size=80)
    out = tmp / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", "--preset", "ci", "--data-root", str(data), "--out", str(out), "--device", "cpu"])
    assert code == 0
    return data, out, buf.getvalue()


@pytest.mark.slow
def test_demo_end_to_end_writes_numbers_and_figures(demo_run):
    import csv

    from sklearn.metrics import roc_auc_score

    data, out, text = demo_run
    assert "image_auroc" in text and "DeSTSeg" in text and "DeST" in text
    metrics = json.loads((out / "metrics.json").read_text())
    res = metrics["results"]["DeSTSeg"]
    assert res["n_images"] == 12
    for f in ("model.pt", "train_log.csv", "per_image.csv", "per_defect.csv", "figures/losses.png",
              "figures/curves.png", "figures/examples.png"):
        assert (out / f).is_file(), f
    # the image AUROC of metrics.json is sklearn's on the scores and labels of per_image.csv
    images = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(images) == 12
    labels = [int(r["label"]) for r in images]
    assert res["image_auroc"] == pytest.approx(roc_auc_score(labels, [float(r["score"]) for r in images]), abs=1e-9)
    assert metrics["results"]["DeST"]["image_auroc"] == pytest.approx(
        roc_auc_score(labels, [float(r["de_st_score"]) for r in images]), abs=1e-9)
    rows = list(csv.DictReader(open(out / "per_defect.csv")))
    assert {r["defect_type"] for r in rows} == {"hole", "missing", "scratch", "stain"}
    assert all(r["n_defect_images"] == "2" and r["n_images"] == "6" for r in rows)  # 4 good + 2 defective
    ckpt = torch.load(out / "model.pt", weights_only=False)
    assert ckpt["thresholds"] == {}  # no validation split: no threshold chosen (never on the test set)
    assert "optim_student" not in ckpt  # the final model carries no optimiser state


@pytest.mark.slow
def test_second_demo_loads_instead_of_training(demo_run, capsys):
    from destseg_lib.checkpoint import read_checkpoint, weights_fingerprint

    data, out, _ = demo_run
    before = weights_fingerprint(read_checkpoint(out / "model.pt")["model"])
    log = (out / "train_log.csv").read_text()
    first = json.loads((out / "metrics.json").read_text())["results"]
    assert main(["demo", "--preset", "ci", "--data-root", str(data), "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "train_log.csv").read_text() == log  # not retrained
    assert weights_fingerprint(read_checkpoint(out / "model.pt")["model"]) == before  # the same weights
    again = json.loads((out / "metrics.json").read_text())["results"]
    assert again == first  # the same model on the same images: the same numbers


@pytest.mark.slow
def test_predict_scores_own_images(demo_run, tmp_path, capsys):
    data, out, _ = demo_run
    img = next((data / "toy_part" / "test" / "hole").glob("*.png"))
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), np.full((50, 70), 128, np.uint8))  # another size and mode work too
    assert main(["predict", "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path / "p"),
                 "--device", "cpu", str(img), str(gray)]) == 0
    import csv
    rows = list(csv.DictReader(open(tmp_path / "p" / "predictions.csv")))
    assert len(rows) == 2 and all(r["status"] == "ok" and r["score"] for r in rows)
    gray_row = next(r for r in rows if r["input"].endswith("gray.png"))
    assert np.load(tmp_path / "p" / gray_row["map_npy"]).shape == (50, 70)


@pytest.mark.slow
def test_evaluate_command(demo_run, tmp_path, capsys):
    data, out, _ = demo_run
    assert main(["evaluate", "--checkpoint", str(out / "model.pt"), "--data-root", str(data),
                 "--device", "cpu", "--json", str(tmp_path / "m.json")]) == 0
    text = capsys.readouterr().out
    assert "pixel_ap" in text and "NN-baseline" in text and "256 x 256" in text
    got = json.loads((tmp_path / "m.json").read_text())
    assert set(got) == {"DeSTSeg", "DeST", "NN-baseline"} and got["DeST"]["eval_size"] == 256
    ran = json.loads((out / "metrics.json").read_text())["results"]  # the run's own evaluation agrees
    assert all(got[m]["pixel_ap"] == pytest.approx(ran[m]["pixel_ap"]) for m in got)


def test_bad_data_root_is_a_clear_error(tmp_path, capsys):
    code = main(["demo", "--preset", "ci", "--dataset", "mvtec", "--data-root", str(tmp_path / "nope"),
                 "--category", "bottle", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and "data_download.sh" in err


def test_bad_override_is_a_clear_error(tmp_path, capsys):
    code = main(["demo", "--preset", "ci", "--set", "no_such_field=3", "--out", str(tmp_path)])
    assert code == 2 and "no_such_field" in capsys.readouterr().err


@pytest.mark.slow
def test_existing_model_with_another_config_is_refused(demo_run, capsys):
    data, out, _ = demo_run
    assert main(["demo", "--preset", "ci", "--data-root", str(data), "--out", str(out), "--device", "cpu"]) == 0
    code = main(["demo", "--preset", "ci", "--set", "seg_steps=7", "--data-root", str(data), "--out", str(out),
                 "--device", "cpu"])
    assert code == 2 and "seg_steps" in capsys.readouterr().err


def _parsed(argv):
    from destseg_lib.cli import _config, build_parser

    return _config(build_parser().parse_args(argv))


def test_run_train_and_demo_default_to_the_quick_preset():
    for command in ("run", "demo", "train"):
        assert _parsed([command]).preset == "quick", command
    assert _parsed(["run", "--preset", "ci", "--set", "seg_steps=3"]).seg_steps == 3


@pytest.mark.slow
def test_config_file_repeats_a_run_and_refuses_typos(demo_run, tmp_path, capsys):
    from destseg_lib.config import DeSTSegConfig

    data, out, _ = demo_run
    saved = DeSTSegConfig.from_file(out / "config.json")
    assert saved == DeSTSegConfig.from_dict(json.loads((out / "metrics.json").read_text())["config"])
    assert _parsed(["run", "--config", str(out / "config.json")]) == saved
    assert _parsed(["run", "--config", str(out / "config.json"), "--seed", "5"]) == saved.replace(seed=5)
    yaml = pytest.importorskip("yaml")
    good = tmp_path / "small.yaml"
    good.write_text(yaml.safe_dump({"image_size": 64, "seg_width": 32, "teacher": "efficientnet_lite0"}))
    cfg = _parsed(["train", "--config", str(good)])
    assert (cfg.image_size, cfg.seg_width, cfg.batch_size) == (64, 32, 32)  # the rest: the paper defaults
    typo = tmp_path / "typo.yaml"
    typo.write_text("image_size: 64\nseg_widht: 32\n")
    assert main(["run", "--config", str(typo), "--data-root", str(data)]) == 2
    err = capsys.readouterr().err
    assert "'seg_widht'" in err and "did you mean 'seg_width'" in err and "Traceback" not in err
    assert main(["run", "--config", str(good), "--preset", "ci"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    code = tmp_path / "evil.yaml"
    code.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    assert main(["run", "--config", str(code)]) == 2  # safe_load: a tag that would run code is an error
    assert "not valid YAML" in capsys.readouterr().err


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "destseg run --config" in text and "{run,demo,train," in text
