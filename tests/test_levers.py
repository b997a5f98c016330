"""Optimiser and learning-rate schedule levers (config ``optimizer``, ``lr_schedule``,
``warmup_steps``): hand-computed rates, what training logs, exact resume, clear errors."""
import math

import pytest
import torch

from destseg_lib.config import ADAMW_RATES, get_preset
from destseg_lib.errors import ConfigError
from destseg_lib.train import build_model, lr_factor, make_optimizers, train_model


def test_paper_recipe_is_sgd_at_constant_rates():
    cfg = get_preset("paper")
    assert (cfg.optimizer, cfg.lr_schedule, cfg.warmup_steps) == ("sgd", "constant", 0)
    assert [lr_factor(cfg, s) for s in (0, 999, 1000, 4999)] == [1.0] * 4


def test_warmup_and_cosine_by_hand():
    cfg = get_preset("ci", student_steps=4, seg_steps=6, lr_schedule="cosine", warmup_steps=2)
    c = math.cos
    stage1 = [1 / 2, 2 / 2, 0.5 * (1 + c(0)), 0.5 * (1 + c(math.pi / 2))]
    # stage 2 starts its own warm-up, then decays over its 4 remaining steps
    stage2 = [1 / 2, 2 / 2, 1.0, 0.5 * (1 + c(math.pi / 4)), 0.5 * (1 + c(math.pi / 2)),
              0.5 * (1 + c(3 * math.pi / 4))]
    assert [lr_factor(cfg, s) for s in range(10)] == pytest.approx(stage1 + stage2, abs=1e-12)
    # warm-up only: constant after it; a warm-up longer than the stage ramps over the whole stage
    cfg = get_preset("ci", student_steps=3, seg_steps=2, warmup_steps=4)
    assert [lr_factor(cfg, s) for s in range(5)] == pytest.approx([1 / 3, 2 / 3, 1, 1 / 2, 1])


def test_adamw_needs_adamw_sized_rates():
    with pytest.raises(ConfigError, match="SGD-sized.*--set lr_student=0.001"):
        get_preset("ci", optimizer="adamw")
    cfg = get_preset("ci", optimizer="adamw", **ADAMW_RATES)
    student, seg = make_optimizers(build_model(cfg), cfg)
    assert isinstance(student, torch.optim.AdamW) and isinstance(seg, torch.optim.AdamW)
    assert [g["lr"] for g in seg.param_groups] == [ADAMW_RATES["lr_seg_res"], ADAMW_RATES["lr_seg_head"]]
    with pytest.raises(ConfigError, match="warmup_steps=-1"):
        get_preset("ci", warmup_steps=-1)
    with pytest.raises(ConfigError, match="choose one of"):
        get_preset("ci", lr_schedule="linear")


@pytest.mark.slow
def test_schedule_is_what_training_uses_and_resumes_exactly(ci_cfg, toy_split, tmp_path):
    cfg = ci_cfg.replace(optimizer="adamw", lr_schedule="cosine", warmup_steps=2, **ADAMW_RATES)
    full = train_model(cfg, toy_split, tmp_path / "full", progress=False)
    base = [cfg.lr_student] * cfg.student_steps + [cfg.lr_seg_res] * cfg.seg_steps
    expected = [b * lr_factor(cfg, s) for s, b in enumerate(base)]
    assert [h["lr"] for h in full.history] == pytest.approx(expected, rel=1e-5)
    assert "lr" in (tmp_path / "full" / "train_log.csv").read_text().splitlines()[0]
    part = train_model(cfg, toy_split, tmp_path / "part", progress=False, stop_after=cfg.student_steps + 2)
    resumed = train_model(cfg, toy_split, tmp_path / "part", progress=False, resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    sgd = train_model(ci_cfg, toy_split, tmp_path / "sgd", progress=False)  # the lever changes the weights
    assert not torch.equal(sgd.model.student.stem[0].weight, full.model.student.stem[0].weight)
