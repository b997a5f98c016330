"""Nothing a user owns is overwritten, nothing silently wrong, no traceback: the training /
evaluation / checkpoint cases of a 181-case probe of bad input, faults and interruptions
(the predict / export cases are in tests/test_robust_predict.py).  Each test names its case."""
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from destseg_lib.checkpoint import FORMAT, atomic_torch_save, load_model, read_checkpoint
from destseg_lib.cli import main
from destseg_lib.config import get_preset
from destseg_lib.errors import CheckpointError, OutputError
from destseg_lib.files import atomic_write_text

SCRIPT = Path(__file__).resolve().parents[1] / "data_download.sh"


def _error_line(capsys) -> str:
    """The one error line of a failed command (progress bars and notes aside); no traceback."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").split("\n")
             if ln.strip() and not any(u in ln for u in ("it/s", "step/s", "image/s", "s/it", "s/step"))
             and not ln.startswith(("train:", "predict:", "destseg: note:", "destseg: warning:"))]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("destseg: error: "), err
    return lines[0]


def _tree(root: Path) -> dict:
    """{relative path: bytes} of every file below ``root`` (to show that nothing changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_root):
    """A ci model trained once on the toy data, and the unfinished checkpoint of a second run."""
    from destseg_lib.data import mvtec_split
    from destseg_lib.train import train_model

    split = mvtec_split(toy_root, "toy_part")
    out = tmp_path_factory.mktemp("trained")
    train_model(get_preset("ci"), split, out, progress=False)
    part = tmp_path_factory.mktemp("unfinished")
    train_model(get_preset("ci"), split, part, progress=False, stop_after=7)  # stage 2 barely begun
    return out / "model.pt", part / "checkpoints" / "last.pt"


def _copy_run(tmp_path, model: Path, name="run") -> Path:
    out = tmp_path / name
    out.mkdir()
    shutil.copy(model, out / "model.pt")
    return out


def _evaluate(ckpt, data, *extra):
    return main(["evaluate", "--checkpoint", str(ckpt), "--data-root", str(data), "--device", "cpu", *extra])


# ------------------------------------------------------------------ 2: the toy set and the user's data root
@pytest.mark.slow
def test_2_toy_set_is_never_generated_into_a_users_data_root(tmp_path, capsys):
    user = tmp_path / "u"
    mine = user / "toy_part" / "train" / "good" / "000.png"
    mine.parent.mkdir(parents=True)
    cv2.imwrite(str(mine), np.full((8, 8, 3), 7, np.uint8))
    before = _tree(user)
    code = main(["train", "--preset", "ci", "--data-root", str(user), "--out", str(tmp_path / "r"), "--device", "cpu"])
    assert code == 2 and "holds no toy dataset" in _error_line(capsys)
    assert _tree(user) == before  # the user's 000.png as it was, nothing added
    # the toy generator itself refuses a folder of someone else's files
    from destseg_lib.toy import make_toy_dataset

    with pytest.raises(Exception, match="not a toy dataset made by the kit"):
        make_toy_dataset(user, n_train=2, n_test_good=1, n_per_defect=1, size=32)
    assert _tree(user) == before


def test_2_category_of_real_data_with_the_toy_dataset_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bottle = tmp_path / "mvtec" / "bottle" / "train" / "good"
    bottle.mkdir(parents=True)
    before = _tree(tmp_path / "mvtec")
    code = main(["train", "--preset", "ci", "--data-root", str(tmp_path / "mvtec"), "--category", "bottle",
                 "--out", str(tmp_path / "r"), "--device", "cpu"])
    line = _error_line(capsys)
    assert code == 2 and "--dataset mvtec" in line and "toy" in line
    assert _tree(tmp_path / "mvtec") == before and not (tmp_path / "mvtec" / "toy_part").exists()
    assert not (tmp_path / "data").exists() and not (tmp_path / "r").exists()


def test_18_typo_in_data_root_creates_nothing(tmp_path, capsys):
    typo = tmp_path / "dtaa"
    code = main(["train", "--preset", "ci", "--data-root", str(typo), "--out", str(tmp_path / "r"), "--device", "cpu"])
    assert code == 2 and str(typo) in _error_line(capsys)
    assert not typo.exists() and not (tmp_path / "r").exists()


# ------------------------------------------------------------------ 5: a model of another dataset
@pytest.mark.slow
def test_5_existing_run_of_another_dataset_is_not_reused(trained, toy_root, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(toy_root / "toy_part", other / "cat")
    out = _copy_run(tmp_path, trained[0])
    before = _tree(out)
    code = main(["run", "--preset", "ci", "--dataset", "mvtec", "--data-root", str(other), "--category", "cat",
                 "--out", str(out), "--device", "cpu"])
    line = _error_line(capsys)
    assert code == 2 and "trained on mvtec/toy_part, not on mvtec/cat" in line and "--retrain" in line
    assert _tree(out) == before and not (out / "metrics.json").exists()


# ------------------------------------------------------------------ 6: an unfinished run's checkpoint
@pytest.mark.slow
def test_6_unfinished_checkpoint_is_refused_by_evaluate_unless_allowed(trained, toy_root, capsys, tmp_path):
    model, last = trained
    assert read_checkpoint(model)["finished"] is True and read_checkpoint(last)["finished"] is False
    assert _evaluate(last, toy_root) == 2
    line = _error_line(capsys)
    assert "unfinished training run (step 7)" in line and "--allow-unfinished" in line
    assert _evaluate(last, toy_root, "--allow-unfinished", "--json", str(tmp_path / "m.json")) == 0
    assert "UNFINISHED" in capsys.readouterr().err
    import json
    saved = json.loads((tmp_path / "m.json").read_text())
    assert all("step 7" in res["unfinished_checkpoint"] for res in saved.values())  # the file says so too
    with pytest.raises(CheckpointError, match="unfinished"):
        load_model(last)
    assert load_model(last, allow_unfinished=True)[1]["step"] == 7


def test_6_format_1_checkpoints_tell_finished_from_the_step(tmp_path):
    cfg = get_preset("ci").to_dict()
    atomic_torch_save({"format": "destseg-kit/1", "config": cfg, "model": {}, "step": 12}, tmp_path / "m.pt")
    atomic_torch_save({"format": "destseg-kit/1", "config": cfg, "model": {}, "step": 7,
                       "optim_student": {}}, tmp_path / "l.pt")
    assert read_checkpoint(tmp_path / "m.pt")["finished"] is True
    assert read_checkpoint(tmp_path / "l.pt")["finished"] is False
    assert FORMAT == "destseg-kit/2"


# ------------------------------------------------------------------ 7: non-finite weights
@pytest.mark.slow
def test_7_checkpoint_with_nan_weights_is_refused(trained, toy_root, tmp_path, capsys):
    ckpt = read_checkpoint(trained[0])
    key = next(k for k, v in ckpt["model"].items() if k.startswith("seg") and v.is_floating_point())
    ckpt["model"][key] = torch.full_like(ckpt["model"][key], float("nan"))
    atomic_torch_save(ckpt, tmp_path / "nan.pt")
    assert _evaluate(tmp_path / "nan.pt", toy_root) == 2
    line = _error_line(capsys)
    assert "NaN or infinite" in line and key in line


# ------------------------------------------------------------------ 10: validation split chosen later
@pytest.mark.slow
def test_10_evaluate_leaves_out_a_validation_split_chosen_after_training(trained, toy_root, tmp_path, capsys):
    out = _copy_run(tmp_path, trained[0])
    assert read_checkpoint(out / "model.pt")["config"]["val_fraction"] == 0
    model_bytes = (out / "model.pt").read_bytes()
    assert main(["run", "--preset", "ci", "--data-root", str(toy_root), "--out", str(out), "--device", "cpu",
                 "--set", "val_fraction=0.5"]) == 0
    assert (out / "model.pt").read_bytes() == model_bytes  # thresholds go beside the model, not into it
    stored = read_checkpoint(out / "model.pt")["thresholds"]
    assert stored["val_fraction"] == 0.5 and stored["n_validation"] > 0
    capsys.readouterr()
    assert _evaluate(out / "model.pt", toy_root) == 0
    text = capsys.readouterr().out
    n_test = 4 + 2 * 4  # toy_root: 4 good + 2 per defect type
    assert (f"evaluating {n_test - stored['n_validation']} of {n_test} test images" in text
            and "val_fraction=0.5" in text), text


# ------------------------------------------------------------------ 11: disk full while saving a checkpoint
def _fake_full_disk(*args, **kwargs):
    raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                       "data/3: file write failed")


@pytest.mark.slow
def test_11_disk_full_while_saving_a_checkpoint_is_one_line(toy_root, tmp_path, capsys, monkeypatch):
    import destseg_lib.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint.torch, "save", _fake_full_disk)
    out = tmp_path / "r"
    code = main(["train", "--preset", "ci", "--data-root", str(toy_root), "--out", str(out), "--device", "cpu"])
    line = _error_line(capsys)
    assert code == 2 and str(out / "checkpoints" / "last.pt") in line and "no space left" in line
    assert not [p for p in out.rglob("*.tmp")]  # no truncated file left behind
    assert not out.exists()  # 18: nor the empty run folder and checkpoints/ it made


def test_11_os_errors_of_a_write_name_the_file(tmp_path, monkeypatch):
    for code, words in ((errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                        (errno.EACCES, "permission denied"), (errno.ENAMETOOLONG, "too long")):
        def fail(f, code=code):
            raise OSError(code, os.strerror(code))
        with pytest.raises(OutputError, match=words) as e:
            from destseg_lib.files import atomic_write

            atomic_write(tmp_path / "x.json", fail)
        assert str(tmp_path / "x.json") in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_11_a_really_full_disk_while_training(toy_root, small_tmpfs, capsys):
    out = small_tmpfs / "r"
    code = main(["train", "--preset", "ci", "--data-root", str(toy_root), "--out", str(out), "--device", "cpu"])
    line = _error_line(capsys)
    assert code == 2 and "cannot write" in line and str(out) in line
    assert not [p for p in small_tmpfs.rglob("*") if p.is_file()]  # nothing truncated left
    assert not out.exists()  # no empty run folder either


def test_11_config_json_is_written_atomically(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "config.json", "{}")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OutputError):
        atomic_write_text(tmp_path / "config.json", '{"a": 1}')
    assert (tmp_path / "config.json").read_text() == "{}"
    src = (Path(__file__).resolve().parents[1] / "destseg_lib" / "train.py").read_text()
    assert 'open(out_dir / "config.json", "w")' not in src and 'atomic_write_text(out_dir / "config.json"' in src


# ------------------------------------------------------------------ 12: weights that do not fit the config
@pytest.mark.slow
@pytest.mark.parametrize("edit", ["seg_width", "teacher", "no_model"])
def test_12_checkpoint_whose_config_does_not_fit_its_weights(trained, toy_root, tmp_path, capsys, edit):
    ckpt = read_checkpoint(trained[0])
    if edit == "seg_width":
        ckpt["config"]["seg_width"] *= 2
    elif edit == "teacher":
        ckpt["config"]["teacher"] = "resnet18"
    else:
        del ckpt["model"]
    atomic_torch_save(ckpt, tmp_path / "edited.pt")
    assert _evaluate(tmp_path / "edited.pt", toy_root) == 2
    line = _error_line(capsys)
    assert str(tmp_path / "edited.pt") in line
    assert ("no 'model' entry" if edit == "no_model" else "do not fit its config") in line
    assert len(line) < 600


# ------------------------------------------------------------------ 13: teacher_weights files
class _Boom:
    def __reduce__(self):
        return (os.system, ("touch BOOM",))


@pytest.mark.parametrize("kind", ["corrupt", "pickled_code", "wrong_net"])
def test_13_bad_teacher_weights_file_is_one_line(toy_root, tmp_path, capsys, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "teacher.pth"
    if kind == "corrupt":
        bad.write_bytes(b"\x80\x02not really a torch file")
    elif kind == "pickled_code":
        torch.save({"w": _Boom()}, bad)
    else:
        torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    code = main(["train", "--preset", "ci", "--data-root", str(toy_root), "--out", str(tmp_path / "r"),
                 "--device", "cpu", "--set", f"teacher_weights={bad}"])
    line = _error_line(capsys)
    assert code == 2 and f"teacher_weights file {bad}" in line
    assert not (tmp_path / "BOOM").exists()
    assert not (tmp_path / "r").exists()  # 18: an early failure leaves no empty run folder


# ------------------------------------------------------------------ 14: YAML grid with a python tag
def test_14_yaml_grid_with_a_python_tag_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("yaml")
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: x\nseeds: !!python/object/apply:os.system ['touch BOOM']\n")
    code = main(["reproduce", str(grid), "--out", str(tmp_path / "b")])
    line = _error_line(capsys)
    assert code == 2 and str(grid) in line and "!!python/object" in line
    assert not (tmp_path / "BOOM").exists()


# ------------------------------------------------------------------ 16: transactional re-evaluation
@pytest.mark.slow
def test_16_interrupted_reevaluation_keeps_the_last_and_leaves_no_litter(trained, toy_root, tmp_path,
                                                                          capsys, monkeypatch):
    import destseg_lib.experiment as experiment

    out = _copy_run(tmp_path, trained[0])
    args = ["run", "--preset", "ci", "--data-root", str(toy_root), "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    good = _tree(out)
    real_figures = experiment._figures

    def interrupted(*a, **k):
        real_figures(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "_figures", interrupted)
    assert main(args) == 130
    assert _tree(out) == good  # the last complete evaluation, untouched
    monkeypatch.setattr(experiment, "_figures", real_figures)
    # litter of older kit versions and of killed runs is cleared by the next good run
    (out / "metrics.previous.json").write_text("{}")
    (out / ".incoming-dead").mkdir()
    (out / ".incoming-dead" / "metrics.json").write_text("{}")
    assert main(args) == 0
    assert not [p for p in out.rglob("*") if ".previous" in p.name or ".incoming-" in str(p)]
    import json

    assert json.loads((out / "metrics.json").read_text())["results"] == json.loads(good["metrics.json"])["results"]


@pytest.mark.slow
def test_16_a_refused_run_touches_nothing(trained, toy_root, tmp_path, capsys):
    out = _copy_run(tmp_path, trained[0])
    args = ["run", "--preset", "ci", "--data-root", str(toy_root), "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    before = _tree(out)
    capsys.readouterr()
    assert main(args + ["--set", "lr_seg_head=0.02"]) == 2
    assert "another config" in _error_line(capsys)
    assert _tree(out) == before


# ------------------------------------------------------------------ 18: unclear messages and litter
def test_18_bad_seeds_name_the_option(tmp_path, capsys):
    code = main(["reproduce", "--out", str(tmp_path / "b"), "--seeds", "a"])
    line = _error_line(capsys)
    assert code == 2 and "--seeds a" in line


@pytest.mark.slow
def test_18_truncated_checkpoint_message_is_whole(trained, tmp_path, capsys, toy_root):
    data = trained[0].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert _evaluate(tmp_path / "cut.pt", toy_root) == 2
    line = _error_line(capsys)
    assert str(tmp_path / "cut.pt") in line and line.endswith("retrain or restore it")
    reason = line.split(" cannot be read (", 1)[1].rsplit(");", 1)[0]
    assert reason.endswith((".", " ...")), reason  # whole sentences (torch's first sentence), not cut mid-word


def test_18_download_to_an_unwritable_target_is_one_line(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESTSEG_")}
    env["DESTSEG_PYTHON"] = sys.executable
    run = subprocess.run(["bash", str(SCRIPT), "dtd", str(blocker / "data")], env=env, capture_output=True,
                         text=True, timeout=60)
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert run.returncode != 0 and len(lines) == 1, run.stderr
    assert lines[0].startswith("data_download.sh: error: cannot create the target folder") and "mkdir:" not in lines[0]
