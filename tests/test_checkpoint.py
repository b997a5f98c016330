"""destseg_lib.checkpoint: what a checkpoint holds, how it is read back, what is refused."""
import pytest
import torch

from destseg_lib.checkpoint import (FORMAT, atomic_torch_save, load_model, make_checkpoint, read_checkpoint,
                                    remove_stale_temporaries, weights_fingerprint)
from destseg_lib.errors import CheckpointError
from destseg_lib.train import build_model


@pytest.mark.slow
def test_round_trip_keeps_weights_config_and_fingerprint(ci_cfg, tmp_path):
    model = build_model(ci_cfg)
    ckpt = make_checkpoint(model, ci_cfg, finished=True, dataset="toy/toy_part")
    path = atomic_torch_save(ckpt, tmp_path / "model.pt")
    back = read_checkpoint(path)
    assert back["format"] == FORMAT and back["finished"] is True and back["dataset"] == "toy/toy_part"
    assert back["config"] == ci_cfg.to_record()  # the fields and their config_format
    assert back["fingerprint"] == weights_fingerprint(model.state_dict())
    loaded, _ = load_model(path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not loaded.training  # loaded for inference


def test_fingerprint_changes_with_any_weight_and_not_with_order(ci_cfg):
    sd = build_model(ci_cfg).state_dict()
    fp = weights_fingerprint(sd)
    assert weights_fingerprint(dict(reversed(list(sd.items())))) == fp  # keys are sorted
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)
    changed = dict(sd)
    changed[key] = sd[key].clone()
    changed[key].view(-1)[0] += 1e-3
    assert weights_fingerprint(changed) != fp and len(fp) == 16


@pytest.mark.slow
def test_unfinished_nan_and_mismatched_checkpoints_are_refused(ci_cfg, tmp_path):
    model = build_model(ci_cfg)
    last = atomic_torch_save(make_checkpoint(model, ci_cfg, finished=False, step=3), tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="unfinished"):
        load_model(last)
    assert load_model(last, allow_unfinished=True)[1]["step"] == 3
    bad = make_checkpoint(model, ci_cfg, finished=True)
    key = next(k for k, v in bad["model"].items() if v.is_floating_point())
    bad["model"][key] = bad["model"][key].clone().fill_(float("nan"))
    with pytest.raises(CheckpointError, match="NaN"):
        load_model(atomic_torch_save(bad, tmp_path / "nan.pt"))
    edited = make_checkpoint(model, ci_cfg, finished=True)
    edited["config"]["seg_width"] = 2 * ci_cfg.seg_width  # weights of another graph than the config says
    with pytest.raises(CheckpointError):
        load_model(atomic_torch_save(edited, tmp_path / "edited.pt"))


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a destseg-kit checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(tmp_path / "cut.pt")


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / "model.pt.a1b2c3d4e5f6.tmp", tmp_path / "checkpoints" / "last.pt.0f9e8d7c6b5a.tmp"]
    keep = [tmp_path / "model.pt", tmp_path / "notes.tmp.txt", tmp_path / "checkpoints" / "last.pt"]
    for p in stale + keep:
        p.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


@pytest.mark.slow
def test_thresholds_live_beside_the_model_for_its_weights_only(ci_cfg, tmp_path):
    from destseg_lib.checkpoint import thresholds_path, write_thresholds

    model = build_model(ci_cfg)
    ckpt = make_checkpoint(model, ci_cfg, finished=True)
    path = atomic_torch_save(ckpt, tmp_path / "model.pt")
    before = path.read_bytes()
    t = {"image": 0.4, "pixel": 0.6, "rule": "best_f1", "chosen_on": "validation split"}
    side = write_thresholds(path, read_checkpoint(path), t)
    assert side == thresholds_path(path) == tmp_path / "model.thresholds.json"
    assert read_checkpoint(path)["thresholds"] == t and path.read_bytes() == before
    retrained = build_model(ci_cfg.replace(seed=1))  # a new model in the same place: other weights
    atomic_torch_save(make_checkpoint(retrained, ci_cfg, finished=True), path)
    assert read_checkpoint(path)["thresholds"] == {}  # the old model's thresholds are not its own
    side.write_text("{not json")
    with pytest.raises(CheckpointError, match="model.thresholds.json"):
        read_checkpoint(path)
