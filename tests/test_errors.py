"""Bad input, faults and interruptions: a clear one-line message and exit code 2 every
time, nothing lost, nothing stuck; checkpoints never execute code when loaded."""
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from destseg_lib.checkpoint import FORMAT, atomic_torch_save, read_checkpoint
from destseg_lib.cli import main
from destseg_lib.config import get_preset
from destseg_lib.errors import (CheckpointError, ConfigError, DataError, DestSegError, DeviceError,
                                OutputError, TrainingDivergedError)


def _one_line_error(capsys) -> str:
    """The error line (stderr may also hold progress bars, which redraw with carriage returns)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").split("\n") if ln.strip() and "it/s" not in ln
             and "step/s" not in ln and "batch/s" not in ln and "image/s" not in ln
             and not ln.startswith(("train:", "predict:", "destseg: note:"))]
    assert len(lines) == 1 and lines[0].startswith("destseg: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_root):
    """A model trained once with the ci preset on the toy data (copied into each test's out dir)."""
    from destseg_lib.data import mvtec_split
    from destseg_lib.train import train_model

    out = tmp_path_factory.mktemp("trained")
    train_model(get_preset("ci"), mvtec_split(toy_root, "toy_part"), out, progress=False)
    return out / "model.pt"


def _out_with_model(tmp_path, trained, name="out") -> Path:
    out = tmp_path / name
    out.mkdir()
    shutil.copy(trained, out / "model.pt")
    return out


def _toy_copy(toy_root, dest, keep_defects=True) -> Path:
    shutil.copytree(toy_root, dest)
    if not keep_defects:
        cat = dest / "toy_part"
        for d in (cat / "test").iterdir():
            if d.name != "good":
                shutil.rmtree(d)
        shutil.rmtree(cat / "ground_truth", ignore_errors=True)
    return dest


def test_errors_share_one_base_and_keep_their_old_types():
    from destseg_lib import data, textures

    assert data.DataError is DataError and issubclass(textures.TextureError, DestSegError)
    for cls, old in ((ConfigError, ValueError), (DataError, ValueError), (textures.TextureError, ValueError),
                     (CheckpointError, ValueError), (TrainingDivergedError, FloatingPointError),
                     (OutputError, OSError), (DeviceError, ValueError)):
        assert issubclass(cls, DestSegError) and issubclass(cls, old)


# ------------------------------------------------------------------ tracebacks -> one line
@pytest.mark.slow
@pytest.mark.parametrize("overrides, stage, lr", [
    (["lr_student=1e30"], 1, "lr_student"),  # NaN loss in stage 1 (was: FloatingPointError traceback)
    # stage 2 straight away, diverging (was: "all elements of input should be between 0 and 1")
    (["student_steps=0", "lr_seg_res=1e30", "lr_seg_head=1e30"], 2, "lr_seg_res"),
])
def test_diverging_training_is_one_line(toy_root, tmp_path, capsys, overrides, stage, lr):
    sets = [a for o in overrides for a in ("--set", o)]
    code = main(["train", "--preset", "ci", "--data-root", str(toy_root), *sets,
                 "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = _one_line_error(capsys)
    assert code == 2 and f"stage {stage}" in err and lr in err


def test_cuda_without_a_gpu_is_one_line(toy_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["train", "--preset", "ci", "--data-root", str(toy_root), "--out", str(tmp_path / "o"),
                 "--device", "cuda"])
    err = _one_line_error(capsys)
    assert code == 2 and "CUDA" in err and "--device cpu" in err
    assert not (tmp_path / "o" / "checkpoints" / "last.pt").exists()
    assert main(["train", "--preset", "ci", "--data-root", str(toy_root), "--out", str(tmp_path / "o"),
                 "--device", "gpu"]) == 2
    assert "'gpu'" in _one_line_error(capsys)


@pytest.mark.slow
def test_output_folder_that_cannot_be_created_is_one_line(toy_root, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = main(["train", "--preset", "ci", "--data-root", str(toy_root), "--out", str(blocker / "run"),
                 "--device", "cpu"])
    err = _one_line_error(capsys)
    assert code == 2 and str(blocker) in err and "Not a directory" in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_output_folder_without_write_permission_is_one_line(toy_root, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        code = main(["train", "--preset", "ci", "--data-root", str(toy_root), "--out", str(ro / "run"),
                     "--device", "cpu"])
    finally:
        ro.chmod(stat.S_IRWXU)
    err = _one_line_error(capsys)
    assert code == 2 and "Permission denied" in err and str(ro) in err


@pytest.mark.slow
def test_predict_reports_a_map_it_could_not_write(trained, tmp_path, capsys):
    import cv2

    img = tmp_path / "part.png"
    cv2.imwrite(str(img), np.full((40, 50, 3), 120, np.uint8))
    out = tmp_path / "pred"
    (out / "part_map.png").mkdir(parents=True)  # a folder where the map should go: imwrite fails
    code = main(["predict", "--checkpoint", str(trained), "--out", str(out), "--device", "cpu", str(img)])
    err = _one_line_error(capsys)
    assert code == 2 and "not empty" in err and "--overwrite" in err  # never written into silently
    code = main(["predict", "--checkpoint", str(trained), "--out", str(out), "--device", "cpu", "--overwrite",
                 str(img)])
    err = _one_line_error(capsys)
    assert code == 2 and "part_map.png" in err


def test_debug_flag_shows_the_traceback(toy_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError):
        main(["train", "--preset", "ci", "--data-root", str(toy_root), "--out", str(tmp_path / "o"),
              "--device", "cuda", "--debug"])


# ------------------------------------------------------------------ item 5: litter
@pytest.mark.slow
def test_stale_temporary_checkpoints_are_removed_on_the_next_start(toy_split, tmp_path):
    from destseg_lib.train import train_model

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / "checkpoints" / "last.pt.k2j4_x9q.tmp", out / "model.pt.a1b2c3d4e5f6.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)  # what a kill during atomic_torch_save leaves
    keep = [out / "checkpoints" / "notes.txt", out / "my.tmp", out / "checkpoints" / "draft.tmp"]
    for p in keep:
        p.write_text("user file")
    train_model(get_preset("ci"), toy_split, out, progress=False, stop_after=1)
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "user file" for p in keep)
    assert not list(out.rglob("*.pt.*.tmp"))


# ------------------------------------------------------------------ item 6: metrics.json and outputs
def _strict_json(path):
    def refuse(const):
        raise AssertionError(f"{path} holds {const}: not valid JSON")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_metrics_json_is_strict_json_when_a_class_is_missing(trained, toy_root, tmp_path, capsys):
    data = _toy_copy(toy_root, tmp_path / "toy", keep_defects=False)  # normal test images only
    out = _out_with_model(tmp_path, trained)
    assert main(["demo", "--preset", "ci", "--data-root", str(data), "--out", str(out), "--device", "cpu"]) == 0
    summary = capsys.readouterr().out
    res = _strict_json(out / "metrics.json")["results"]["DeSTSeg"]
    assert res["image_auroc"] is None and res["pixel_auroc"] is None  # undefined -> null
    # the summary names only files that exist: no per_defect.csv without defects
    assert not (out / "per_defect.csv").exists() and "per_defect.csv" not in summary
    named = [w.strip(",()") for line in summary.splitlines() if line.startswith(("numbers:", "checkpoint:"))
             for w in line.split()[1:]]
    assert named and all(Path(w).is_file() for w in named), named
    assert "per_image.csv" in summary and "metrics.json" in summary


@pytest.mark.slow
def test_evaluate_json_is_strict_too(trained, toy_root, tmp_path):
    data = _toy_copy(toy_root, tmp_path / "toy", keep_defects=False)
    assert main(["evaluate", "--checkpoint", str(trained), "--data-root", str(data), "--device", "cpu",
                 "--json", str(tmp_path / "m.json")]) == 0
    assert _strict_json(tmp_path / "m.json")["DeSTSeg"]["image_auroc"] is None


@pytest.mark.slow
def test_failed_reevaluation_leaves_the_last_complete_one(trained, toy_root, tmp_path, capsys):
    data = _toy_copy(toy_root, tmp_path / "toy")
    out = _out_with_model(tmp_path, trained)
    args = ["demo", "--preset", "ci", "--data-root", str(data), "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    first = (out / "metrics.json").read_text()
    assert (out / "per_defect.csv").is_file() and (out / "figures" / "curves.png").is_file()
    capsys.readouterr()
    img = sorted((data / "toy_part" / "test" / "good").glob("*.png"))[0]
    img.write_bytes(img.read_bytes()[:100])  # the test data broke since
    assert main(args) == 2
    assert str(img) in capsys.readouterr().err
    # transactional: the failed evaluation swapped nothing in, the last complete one is as it was
    assert (out / "metrics.json").read_text() == first
    for name in ("per_defect.csv", "per_image.csv", "figures/curves.png"):
        assert (out / name).is_file(), name
    assert not [p for p in out.rglob("*") if ".previous" in p.name or p.name.startswith(".incoming-")]


# ------------------------------------------------------------------ item 7: file modes
@pytest.mark.slow
def test_checkpoints_get_the_users_normal_file_mode(trained, tmp_path):
    old = os.umask(0o022)
    try:
        atomic_torch_save({"format": FORMAT}, tmp_path / "x.pt")
        assert stat.S_IMODE((tmp_path / "x.pt").stat().st_mode) == 0o644
        os.umask(0o027)
        atomic_torch_save({"format": FORMAT}, tmp_path / "y.pt")
        assert stat.S_IMODE((tmp_path / "y.pt").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    # the trained model of the fixture (written under the test run's umask) is as readable as a new file
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    assert stat.S_IMODE(trained.stat().st_mode) == stat.S_IMODE(probe.stat().st_mode)


# ------------------------------------------------------------------ loading never executes code
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _OpenPayload(_Payload):
    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload", [_Payload, _OpenPayload])
def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, capsys, payload):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"format": FORMAT, "config": {}, "model": {}, "x": payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused") as e:
        read_checkpoint(evil)
    assert str(evil) in str(e.value) and not marker.exists()
    img = tmp_path / "a.png"
    import cv2
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    code = main(["predict", "--checkpoint", str(evil), "--out", str(tmp_path / "p"), "--device", "cpu", str(img)])
    assert code == 2 and "refused" in _one_line_error(capsys) and not marker.exists()


@pytest.mark.slow
def test_everything_the_kit_stores_loads_with_weights_only(trained, toy_split, tmp_path):
    from destseg_lib.train import train_model

    train_model(get_preset("ci"), toy_split, tmp_path, progress=False, stop_after=7)  # optimiser state, history
    for p in (tmp_path / "checkpoints" / "last.pt", trained):
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        assert ckpt["format"] == FORMAT
    # numpy values are converted when written, not refused when read
    atomic_torch_save({"format": FORMAT, "t": np.float64(0.25), "n": np.int64(3), "a": np.arange(3),
                       "flag": np.bool_(True), "nested": [{"v": np.float32(1.5)}]}, tmp_path / "np.pt")
    ckpt = read_checkpoint(tmp_path / "np.pt")
    assert type(ckpt["t"]) is float and type(ckpt["n"]) is int and ckpt["flag"] is True
    assert torch.equal(ckpt["a"], torch.arange(3)) and type(ckpt["nested"][0]["v"]) is float
    # anything else is refused when writing, and the previous file is left as it was
    with pytest.raises(CheckpointError, match="cannot store"):
        atomic_torch_save({"format": FORMAT, "x": object()}, tmp_path / "np.pt")
    assert read_checkpoint(tmp_path / "np.pt")["n"] == 3
    assert sorted(p.name for p in tmp_path.glob("np.pt*")) == ["np.pt"]


def test_checkpoints_written_by_earlier_versions_still_load(tmp_path):
    """Earlier versions stored torch.__version__ itself (a TorchVersion, a str subclass): still allowed."""
    assert type(torch.__version__) is not str
    torch.save({"format": FORMAT, "versions": {"torch": torch.__version__}, "step": 3}, tmp_path / "old.pt")
    ckpt = read_checkpoint(tmp_path / "old.pt")
    assert ckpt["versions"]["torch"] == str(torch.__version__) and ckpt["step"] == 3
    atomic_torch_save(ckpt, tmp_path / "new.pt")  # and is written back as a plain str
    assert type(torch.load(tmp_path / "new.pt", weights_only=True)["versions"]["torch"]) is str
