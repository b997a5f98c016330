import numpy as np
import pytest
import torch

from destseg_lib.checkpoint import atomic_torch_save, load_model, read_checkpoint
from destseg_lib.data import TestImages
from destseg_lib.infer import predict, predict_dataset, top_t_score
from destseg_lib.train import train_model
from destseg_lib.errors import CheckpointError


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_training_changes_weights_and_logs(ci_cfg, toy_split, tmp_path):
    res = train_model(ci_cfg, toy_split, tmp_path, progress=False)
    assert [h["stage"] for h in res.history] == [1] * 6 + [2] * 6
    assert all(np.isfinite(h["loss"]) for h in res.history)
    assert (tmp_path / "model.pt").exists() and (tmp_path / "train_log.csv").exists()
    # the seconds each step waited for its batch, a part of the elapsed time
    waits = [h["data_wait"] for h in res.history]
    assert all(w >= 0 for w in waits) and sum(waits) <= res.history[-1]["seconds"]
    assert "data_wait" in (tmp_path / "train_log.csv").read_text().splitlines()[0]
    from destseg_lib.train import build_model
    init = build_model(ci_cfg)
    assert not torch.equal(init.student.stem[0].weight, res.model.student.stem[0].weight)
    assert torch.equal(init.teacher.stem[0].weight, res.model.teacher.stem[0].weight)  # frozen


@pytest.mark.slow
def test_same_seed_identical_weights_other_seed_differs(ci_cfg, toy_split, tmp_path):
    cfg = ci_cfg.replace(student_steps=3, seg_steps=3)
    a = train_model(cfg, toy_split, tmp_path / "a", progress=False).model
    b = train_model(cfg, toy_split, tmp_path / "b", progress=False).model
    c = train_model(cfg.replace(seed=1), toy_split, tmp_path / "c", progress=False).model
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [4, 9])  # interrupted in stage 1, and in stage 2
def test_resume_reaches_the_same_weights(ci_cfg, toy_split, tmp_path, stop):
    full = train_model(ci_cfg, toy_split, tmp_path / "full", progress=False)
    part = train_model(ci_cfg, toy_split, tmp_path / "part", progress=False, stop_after=stop)
    assert len(part.history) == stop and not (tmp_path / "part" / "model.pt").exists()
    resumed = train_model(ci_cfg, toy_split, tmp_path / "part", progress=False, resume=True)
    assert _same_weights(full.model, resumed.model)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


@pytest.mark.slow
def test_a_longer_run_stopped_early_has_the_shorter_runs_weights(ci_cfg, toy_split, tmp_path):
    """Constant learning rates and batches that are a function of (seed, step): a run configured for
    9 segmentation steps, stopped after 3 of them, holds the weights of a run configured for 3.
    bench/budget.py scores a whole budget curve from one training on the strength of this."""
    short = train_model(ci_cfg.replace(seg_steps=3), toy_split, tmp_path / "short", progress=False)
    long = train_model(ci_cfg.replace(seg_steps=9), toy_split, tmp_path / "long", progress=False,
                       stop_after=ci_cfg.student_steps + 3)
    assert _same_weights(short.model, long.model)
    assert [h["loss"] for h in long.history] == [h["loss"] for h in short.history]
    more = train_model(ci_cfg.replace(seg_steps=9), toy_split, tmp_path / "long", progress=False,
                       resume=True, stop_after=ci_cfg.student_steps + 5)  # and it goes on from there
    assert len(more.history) == ci_cfg.student_steps + 5 and not _same_weights(short.model, more.model)


@pytest.mark.slow
def test_resume_refuses_a_different_config(ci_cfg, toy_split, tmp_path):
    train_model(ci_cfg, toy_split, tmp_path, progress=False, stop_after=2)
    with pytest.raises(ValueError, match="config differs"):
        train_model(ci_cfg.replace(lr_student=0.1), toy_split, tmp_path, progress=False, resume=True)


@pytest.mark.slow
def test_num_workers_do_not_change_results(ci_cfg, toy_split, tmp_path):
    cfg = ci_cfg.replace(student_steps=2, seg_steps=2)
    a = train_model(cfg, toy_split, tmp_path / "a", progress=False).model
    b = train_model(cfg.replace(num_workers=2), toy_split, tmp_path / "b", progress=False).model
    assert _same_weights(a, b)


@pytest.mark.slow
def test_channels_last_training_is_the_same_maths(ci_cfg, toy_split, tmp_path):
    """channels_last=True trains NHWC weights on NHWC batches: the same losses and weights as the
    default layout up to float summation order; a run may switch layout when resumed, and its
    model.pt loads into a default-layout model with the same predictions."""
    cfg = ci_cfg.replace(student_steps=3, seg_steps=3)
    a = train_model(cfg, toy_split, tmp_path / "a", progress=False)
    b = train_model(cfg.replace(channels_last=True), toy_split, tmp_path / "b", progress=False)
    assert b.model.student.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not a.model.student.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    # float32 sums in another order, amplified by a few steps of SGD on a randomly initialised student
    assert [h["loss"] for h in b.history] == pytest.approx([h["loss"] for h in a.history], rel=1e-2)
    # the weights: apart by < 2 % of the way they moved in training (measured 0.4 %; the other
    # way round, a layout bug, would be ~100 %).  Not per tensor: BN biases start at 0 and their
    # gradients are sums that nearly cancel, so their own relative error is large.
    from destseg_lib.train import build_model
    s0, sa, sb = build_model(cfg).state_dict(), a.model.state_dict(), b.model.state_dict()
    keys = [k for k in sa if sa[k].is_floating_point()]
    flat = [torch.cat([s[k].flatten() for k in keys]) for s in (s0, sa, sb)]
    assert (flat[2] - flat[1]).norm() < 0.02 * (flat[1] - flat[0]).norm()
    train_model(cfg, toy_split, tmp_path / "c", progress=False, stop_after=4)  # NCHW, stopped in stage 2
    c = train_model(cfg.replace(channels_last=True), toy_split, tmp_path / "c", progress=False, resume=True)
    assert [h["loss"] for h in c.history] == pytest.approx([h["loss"] for h in a.history], rel=1e-2)
    loaded, _ = load_model(tmp_path / "b" / "model.pt")
    assert not loaded.student.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    test = TestImages(toy_split.test, cfg.image_size)
    p1 = predict_dataset(b.model, test, progress=False, top_t=cfg.top_t)
    p2 = predict_dataset(loaded, test, progress=False, top_t=cfg.top_t)
    np.testing.assert_allclose(p2.maps, p1.maps, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_save_load_identical_predictions(ci_cfg, toy_split, tmp_path):
    res = train_model(ci_cfg, toy_split, tmp_path, progress=False)
    loaded, ckpt = load_model(tmp_path / "model.pt")
    assert ckpt["config"]["teacher"] == ci_cfg.teacher and "torch" in ckpt["versions"]
    assert ckpt["model"]["mean"].flatten().tolist() == pytest.approx([127 / 255] * 3)  # in the weights, once
    test = TestImages(toy_split.test, ci_cfg.image_size)
    p1 = predict_dataset(res.model, test, progress=False, top_t=ci_cfg.top_t)
    p2 = predict_dataset(loaded, test, progress=False, top_t=ci_cfg.top_t)
    assert np.array_equal(p1.maps, p2.maps) and np.array_equal(p1.scores, p2.scores)
    assert np.array_equal(p1.de_st_maps, p2.de_st_maps)
    assert p1.maps.shape == (len(test), ci_cfg.image_size, ci_cfg.image_size)


def test_damaged_checkpoint_gives_a_clear_error(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="cannot be read"):
        read_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="train one first"):
        read_checkpoint(tmp_path / "missing.pt")


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "x.pt"
    atomic_torch_save({"ok": 1}, target)

    class Boom:
        pass

    # an object a checkpoint cannot hold is refused before anything is written
    with pytest.raises(CheckpointError, match="cannot store"):
        atomic_torch_save({"bad": Boom()}, target)
    # a failure half-way through the write leaves the old file and no temporary
    real_save = torch.save

    def half_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"ok": 2}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(target) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_top_t_score_against_sorting():
    maps = torch.rand(3, 10, 10)
    ref = torch.stack([m.flatten().sort(descending=True).values[:7].mean() for m in maps])
    assert torch.allclose(top_t_score(maps, 7), ref)
    assert torch.allclose(top_t_score(maps, 1000), maps.flatten(1).mean(1))  # capped at map size


def test_predict_upsamples_to_input(ci_cfg, toy_split, tmp_path):
    from destseg_lib.train import build_model
    model = build_model(ci_cfg)
    out = predict(model, torch.rand(2, 3, 64, 64), top_t=10)
    assert out["anomaly_map"].shape == (2, 64, 64) and out["score"].shape == (2,)


def test_config_comparison_ignores_the_preset_label_not_the_fields():
    """``preset`` names where a config started; the fields say what it is: a ``paper`` config with
    ``quick``'s values is the same run, a ``quick`` config with one field changed is not."""
    from destseg_lib.config import get_preset
    from destseg_lib.train import config_differences

    quick = get_preset("quick")
    relabelled = get_preset("paper", **{k: v for k, v in quick.to_dict().items() if k != "preset"})
    assert relabelled.preset == "paper" and config_differences(quick.to_dict(), relabelled) == []
    assert config_differences(quick.to_dict(), quick.replace(seg_steps=101)) == ["seg_steps"]
