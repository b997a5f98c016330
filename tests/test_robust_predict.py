"""Predict / export: nothing a user owns is overwritten, nothing silently wrong, one line instead of
a traceback (the training / evaluation cases are in tests/test_robust_run.py).  Each test names its
case; models are untrained ``ci`` models saved with ``make_checkpoint`` (no training), or stand-in
scorers."""
import csv
import errno
import glob
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from destseg_lib.cli import main
from destseg_lib.errors import OutputError


# ----------------------------------------------------------------------------- helpers
def _checkpoint(path: Path, seed: int = 0, finished: bool = True, **extra) -> Path:
    from destseg_lib.checkpoint import atomic_torch_save, make_checkpoint
    from destseg_lib.config import get_preset
    from destseg_lib.models import DeSTSeg

    torch.manual_seed(seed)
    cfg = get_preset("ci")
    model = DeSTSeg.from_config(cfg, teacher_weights="checkpoint").eval()
    ckpt = make_checkpoint(model, cfg, finished=finished, **extra)
    ckpt["thresholds"] = {"image": 0.5, "pixel": 0.5, "rule": "best_f1"}
    atomic_torch_save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


def _image(path: Path, h: int = 40, w: int = 50, value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(h * 1000 + w + value)
    img = np.clip(rng.normal(value, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def _error_line(capsys) -> str:
    """The one error line of stderr (progress bars and notes aside), no traceback."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").split("\n") if ln.strip() and "image/s" not in ln
             and not ln.startswith(("predict:", "destseg: note:", "destseg: warning:"))]
    assert len(lines) == 1 and lines[0].startswith("destseg: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def _constant_scorer(calls=None, fail_on_call=None, exc=KeyboardInterrupt):
    """A stand-in model: map = mean image value, score = its max; ``fail_on_call``: raise ``exc``
    on that call (1-based)."""
    calls = [] if calls is None else calls

    def score(batch):
        calls.append(len(batch))
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise exc()
        maps = batch.mean(1).numpy().astype(np.float32)
        return maps, maps.reshape(len(batch), -1).max(1)
    return score


def _predict(inputs, out, scorer=None, **kw):
    from destseg_lib.scoring import predict_files

    kw.setdefault("progress", False)
    kw.setdefault("warn", lambda text: None)
    return predict_files([str(i) for i in inputs], scorer or _constant_scorer(), 64, out, **kw)


# ----------------------------------------------------------------------------- item 1
@pytest.mark.slow
def test_export_never_overwrites_the_checkpoint_nor_an_existing_file(model_pt, tmp_path, capsys):
    ck = tmp_path / "model.pt"
    ck.write_bytes(model_pt.read_bytes())
    before = ck.read_bytes()
    assert main(["export", "--checkpoint", str(ck), "--out", str(ck)]) == 2
    assert "checkpoint" in _error_line(capsys) and ck.read_bytes() == before
    link, hard = tmp_path / "link.onnx", tmp_path / "hard.onnx"
    link.symlink_to(ck)
    os.link(ck, hard)
    for alias in (link, hard):  # the same file under another name: refused even with --overwrite
        assert main(["export", "--checkpoint", str(ck), "--out", str(alias), "--overwrite"]) == 2
        assert str(alias) in _error_line(capsys) and ck.read_bytes() == before
    other = tmp_path / "mine.onnx"
    other.write_bytes(b"the user's file")
    assert main(["export", "--checkpoint", str(ck), "--out", str(other)]) == 2
    assert "--overwrite" in _error_line(capsys) and other.read_bytes() == b"the user's file"
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    assert main(["export", "--checkpoint", str(ck), "--out", str(other), "--overwrite"]) == 0
    assert other.read_bytes() != b"the user's file" and ck.read_bytes() == before


# ----------------------------------------------------------------------------- item 3
def test_images_one_or_three_pixels_tall_are_scored_with_the_rest(model_pt, tmp_path):
    from destseg_lib.checkpoint import load_model
    from destseg_lib.scoring import torch_scorer

    model, ckpt = load_model(model_pt)
    files = [_image(tmp_path / "in" / "a.png"), _image(tmp_path / "in" / "thin1.png", 1, 4000),
             _image(tmp_path / "in" / "thin3.png", 3, 4000), _image(tmp_path / "in" / "tall3.png", 4000, 3)]
    report = _predict(files, tmp_path / "out", torch_scorer(model, 100), pixel_threshold=0.5, batch_size=8)
    assert not report.failed
    rows = {Path(r["input"]).name: r for r in _rows(tmp_path / "out")}
    assert {n: rows[n]["status"] for n in rows} == {"a.png": "ok", "thin1.png": "ok", "thin3.png": "ok",
                                                    "tall3.png": "ok"}
    for name, hw in (("thin1.png", (1, 4000)), ("thin3.png", (3, 4000)), ("tall3.png", (4000, 3))):
        overlay = cv2.imread(str(tmp_path / "out" / rows[name]["overlay_png"]), cv2.IMREAD_UNCHANGED)
        assert overlay.shape == (*hw, 3)
        assert np.load(tmp_path / "out" / rows[name]["map_npy"]).shape == hw


def test_one_image_that_cannot_be_scored_is_a_row_and_the_batch_goes_on(tmp_path):
    """A batch whose scoring fails is scored image by image: only the bad image is lost."""
    files = [_image(tmp_path / "in" / f"{k}.png", value=100 + k) for k in range(4)]
    assert cv2.imwrite(str(files[2]), np.full((40, 50, 3), 255, np.uint8))  # the "poison" image
    base = _constant_scorer()

    def scorer(batch):
        if bool((batch.flatten(1).amin(1) == 1.0).any()):
            raise RuntimeError("kernel failed on this input")
        return base(batch)
    report = _predict(files, tmp_path / "out", scorer, batch_size=4)
    rows = {Path(r["input"]).name: r for r in _rows(tmp_path / "out")}
    assert [r["status"] for _, r in sorted(rows.items())] == ["ok", "ok", "error", "ok"]
    assert "kernel failed" in rows["2.png"]["error"] and [Path(p).name for p, _ in report.failed] == ["2.png"]


# ----------------------------------------------------------------------------- item 4
@pytest.mark.slow
def test_walks_and_recursive_globs_terminate_over_links_to_itself(tmp_path):
    root = tmp_path / "L"
    _image(root / "a.png")
    _image(root / "sub" / "b.png")
    (root / "self1").symlink_to(root, target_is_directory=True)
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)
    code = textwrap.dedent(f"""
        from destseg_lib.scoring import collect_inputs
        for item in ({str(root)!r}, {str(root / '**' / '*.png')!r}):
            files, problems = collect_inputs([item])
            print(sorted(str(f) for f in files), problems)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    expected = f"{sorted([str(root / 'a.png'), str(root / 'sub' / 'b.png')])} []"
    assert r.stdout.splitlines() == [expected, expected]


def test_recursive_glob_matches_what_glob_matches_without_links(tmp_path, monkeypatch):
    from destseg_lib.scoring import expand_glob

    for rel in ("a.png", "x/b.png", "x/y/c.png", "x/y/c.jpg", "z/d.png", ".hid/e.png", "x/.f.png"):
        _image(tmp_path / rel)
    monkeypatch.chdir(tmp_path)
    for pattern in ("**/*.png", "x/**/*.png", "**/y/*.png", "**", "x/**", "*/**/*.jpg", "**/*", "*.png",
                    str(tmp_path / "**" / "*.png")):
        reference = sorted(Path(q) for q in glob.glob(pattern, recursive=True) if Path(q).is_file())
        assert expand_glob(pattern) == reference, pattern


# ----------------------------------------------------------------------------- item 6 (predict side)
@pytest.mark.slow
def test_unfinished_checkpoint_needs_allow_unfinished_and_every_row_says_so(tmp_path, capsys):
    last = _checkpoint(tmp_path / "last.pt", finished=False, step=3)
    img = _image(tmp_path / "in" / "a.png")
    bad = tmp_path / "in" / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(last), "--out", str(out), "--device", "cpu", str(img)]) == 2
    assert "--allow-unfinished" in _error_line(capsys) and not out.exists()
    code = main(["predict", "--checkpoint", str(last), "--out", str(out), "--device", "cpu", "--allow-unfinished",
                 str(img), str(bad)])
    captured = capsys.readouterr()
    assert code == 1  # bad.png failed
    assert "UNFINISHED" in captured.err and "UNFINISHED" in captured.out
    rows = _rows(out)
    assert len(rows) == 2 and all("UNFINISHED" in r["note"] for r in rows)


# ----------------------------------------------------------------------------- item 7
@pytest.mark.parametrize("flag,value", [("--threshold", "nan"), ("--pixel-threshold", "nan"),
                                        ("--threshold", "inf"), ("--pixel-threshold", "-inf")])
def test_non_finite_thresholds_are_one_line_errors(model_pt, tmp_path, capsys, flag, value):
    img = _image(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(model_pt), "--out", str(out), "--device", "cpu",
                 f"{flag}={value}", str(img)]) == 2
    assert flag in _error_line(capsys) and not out.exists()


def test_non_finite_scores_or_maps_are_errors_never_normal(tmp_path):
    files = [_image(tmp_path / "in" / f"{k}.png", value=100 + 10 * k) for k in range(3)]
    base = _constant_scorer()

    def scorer(batch):  # image 1: NaN score; image 2: an infinite pixel in its map
        maps, scores = base(batch)
        means = batch.mean((1, 2, 3)).numpy()
        maps, scores = maps.copy(), scores.astype(np.float32).copy()
        for k, m in enumerate(means):  # images of mean ~100/255, ~110/255 and ~120/255
            if m > 0.45:
                maps[k, 3, 3] = np.inf
            elif m > 0.41:
                scores[k] = np.nan
        return maps, scores
    report = _predict(files, tmp_path / "out", scorer, image_threshold=0.5, pixel_threshold=0.5)
    rows = {Path(r["input"]).name: r for r in _rows(tmp_path / "out")}
    assert rows["0.png"]["status"] == "ok" and rows["0.png"]["decision"] in ("normal", "anomalous")
    for name in ("1.png", "2.png"):
        assert rows[name]["status"] == "error" and rows[name]["decision"] == ""
        assert "non-finite" in rows[name]["error"]
    assert sorted(Path(p).name for p, _ in report.failed) == ["1.png", "2.png"]


# ----------------------------------------------------------------------------- item 8
@pytest.mark.slow
def test_onnx_of_another_checkpoint_is_refused(model_pt, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    other = _checkpoint(tmp_path / "other.pt", seed=1)
    f = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(model_pt), "--out", str(f)]) == 0
    capsys.readouterr()
    img = _image(tmp_path / "in" / "a.png")
    assert main(["predict", "--checkpoint", str(other), "--onnx", str(f), "--out", str(tmp_path / "p1"),
                 "--device", "cpu", str(img)]) == 2
    err = _error_line(capsys)
    assert str(f) in err and str(other) in err and not (tmp_path / "p1").exists()
    assert main(["predict", "--checkpoint", str(model_pt), "--onnx", str(f), "--out", str(tmp_path / "p2"),
                 "--device", "cpu", str(img)]) == 0
    capsys.readouterr()
    # a file without a fingerprint (an older export) cannot be matched: refused too
    proto = onnx.load(str(f))
    keep = [p for p in proto.metadata_props if p.key != "destseg_fingerprint"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    assert main(["predict", "--checkpoint", str(model_pt), "--onnx", str(old), "--out", str(tmp_path / "p3"),
                 "--device", "cpu", str(img)]) == 2
    assert "fingerprint" in _error_line(capsys)


# ----------------------------------------------------------------------------- item 9
def test_out_inside_equal_to_or_containing_an_input_is_refused(tmp_path, model_pt, capsys):
    data = tmp_path / "data"
    _image(data / "a.png")
    _image(data / "sub" / "b.png")
    refused = [([data], data / "preds"), ([data], data), ([data], tmp_path), ([data / "sub"], data / "sub" / "x" / "y"),
               ([str(data / "**" / "*.png")], data / "preds"), ([str(data / "*" / "*.png")], data / "preds"),
               ([data / "a.png"], data)]
    for inputs, out in refused:
        existed = out.exists()
        with pytest.raises(OutputError, match="--out"):
            _predict(inputs, out, overwrite=True)
        assert out.exists() == existed and not (out / "predictions.csv").exists(), (inputs, out)
    link = tmp_path / "alias"  # through a link: the same folder
    link.symlink_to(data, target_is_directory=True)
    with pytest.raises(OutputError):
        _predict([data], link / "preds", overwrite=True)
    assert not (data / "preds").exists()
    # a glob that cannot reach the output folder is fine
    report = _predict([str(data / "*.png")], data / "preds")
    assert [Path(r["input"]).name for r in report.rows] == ["a.png"]
    # the command: one line, exit 2
    assert main(["predict", "--checkpoint", str(model_pt), "--out", str(data / "sub" / "p"), "--device", "cpu",
                 "--overwrite", str(data)]) == 2
    assert "inside the input folder" in _error_line(capsys) and not (data / "sub" / "p").exists()


# ----------------------------------------------------------------------------- item 15
def test_disk_full_is_one_line_naming_the_file_and_leaves_nothing_truncated(model_pt, tmp_path, monkeypatch,
                                                                            capsys):
    files = [_image(tmp_path / "in" / f"{k}.png") for k in range(3)]
    real_save, calls = np.save, []

    def full_disk_save(file, arr, *args, **kwargs):  # the second .npy hits ENOSPC half-way
        calls.append(1)
        if len(calls) == 2:
            buf = io.BytesIO()
            real_save(buf, arr)
            part = buf.getvalue()[:100]
            if hasattr(file, "write"):
                file.write(part)
            else:
                with open(file, "wb") as f:
                    f.write(part)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(file, arr, *args, **kwargs)
    monkeypatch.setattr(np, "save", full_disk_save)
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(model_pt), "--out", str(out), "--device", "cpu", "--batch-size", "1",
                 *map(str, files)])
    err = _error_line(capsys)
    assert code == 2 and str(out / "1_map.npy") in err and "no space left" in err and "--resume" in err
    assert not (out / "1_map.npy").exists() and not list(out.glob("*.tmp"))
    assert not (out / "1_map.png").exists()  # the image has all of its files or none
    for npy in out.glob("*.npy"):
        assert np.load(npy).shape == (40, 50)  # what is there is complete
    rows = _rows(out)  # the image done before the failure has its row
    assert [(Path(r["input"]).name, r["status"]) for r in rows] == [("0.png", "ok")]


# ----------------------------------------------------------------------------- item 17
@pytest.mark.slow
def test_interrupted_predict_keeps_its_rows_and_resumes(tmp_path, model_pt, capsys):
    files = [_image(tmp_path / "in" / f"{k}.png", value=90 + 10 * k) for k in range(5)]
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _predict(files, out, _constant_scorer(fail_on_call=2), batch_size=2, image_threshold=0.5)
    rows = _rows(out)  # streamed: the first batch is in the CSV
    assert sorted(Path(r["input"]).name for r in rows) == ["0.png", "1.png"]
    assert all(r["status"] == "ok" for r in rows)
    done = {f: (out / f).stat().st_mtime_ns for f in ("0_map.npy", "1_map.npy")}
    with open(out / "predictions.csv", "a") as f:
        f.write(f"{files[2]},ok,,0.4")  # a row cut short by the interruption
    with pytest.raises(OutputError, match="--resume"):  # not without --resume
        _predict(files, out, batch_size=2, image_threshold=0.5)
    calls = []
    report = _predict(files, out, _constant_scorer(calls), batch_size=2, image_threshold=0.5, resume=True)
    assert sum(calls) == 3 and report.resumed == 2
    rows = _rows(out)
    assert [Path(r["input"]).name for r in rows] == [f"{k}.png" for k in range(5)]
    assert all(r["status"] == "ok" and r["decision"] for r in rows)
    assert {f: (out / f).stat().st_mtime_ns for f in done} == done  # kept, not rewritten
    # another threshold: the kept rows would be wrong, so everything is scored again
    calls.clear()
    _predict(files, out, _constant_scorer(calls), batch_size=2, image_threshold=0.7, resume=True)
    assert sum(calls) == 5 and all(r["image_threshold"] == "0.7" for r in _rows(out))
    # the command: --resume, a deleted output is made again
    cli_out = tmp_path / "cli"
    args = ["predict", "--checkpoint", str(model_pt), "--out", str(cli_out), "--device", "cpu", *map(str, files[:3])]
    assert main(args) == 0
    (cli_out / "1_overlay.png").unlink()
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert "2 kept" in capsys.readouterr().out and (cli_out / "1_overlay.png").is_file()
    assert len(_rows(cli_out)) == 3


def test_a_short_write_without_errno_reads_as_a_full_disk(tmp_path):
    """numpy's np.save on a full disk raises OSError("65536 requested and 62432 written"), no errno."""
    from destseg_lib.files import output_error

    e = output_error(tmp_path / "x_map.npy", OSError("65536 requested and 62432 written"))
    assert str(tmp_path / "x_map.npy") in str(e) and "disk is full" in str(e)
