"""PFADSeg (Song et al., 2025) as config values of the one model: teacher-encoder / student-decoder
denoising with multi-scale fusion, and adaptive feature fusion before the segmentation net."""
import warnings

import pytest
import torch

from destseg_lib.config import VARIANTS, get_preset
from destseg_lib.models import (TEACHER_CHANNELS, AdaptiveFeatureFusion, DeSTSeg, TeacherDecoderStudent)
from destseg_lib.train import build_model, training_step


def _model(teacher):
    cfg = get_preset("ci", teacher=teacher, teacher_weights=None if teacher == "resnet18" else "imagenet",
                     **VARIANTS["pfadseg"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random ResNet18 teacher: no download in tests
        return cfg, DeSTSeg.from_config(cfg)


@pytest.mark.parametrize("teacher", ["resnet18", "efficientnet_lite0"])
def test_shapes_for_both_teachers(teacher):
    cfg, model = _model(teacher)
    assert isinstance(model.student, TeacherDecoderStudent) and model.segmentation.fusion is not None
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
        t, s = model.features(torch.rand(2, 3, 64, 64))
    expected = [(2, c, 64 // st, 64 // st) for c, st in zip(TEACHER_CHANNELS[teacher], (4, 8, 16))]
    assert [tuple(f.shape) for f in s] == [tuple(f.shape) for f in t] == expected
    assert out["seg"].shape == (2, 1, 16, 16) and out["de_st"].shape == (2, 1, 64, 64)


def test_student_decodes_the_teachers_features_of_the_corrupted_image():
    cfg, model = _model("efficientnet_lite0")
    seen = []
    model.student.register_forward_pre_hook(lambda m, args: seen.append([f.clone() for f in args[0]]))
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 64, 64, generator=g)
    aug = clean.clone()
    aug[:, :, 16:48, 16:48] = torch.rand(2, 3, 32, 32, generator=g)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 16:48, 16:48] = 1
    training_step(model, (clean, aug, mask), cfg, stage=1)
    with torch.no_grad():
        t_aug, t_clean = model.teacher(model.normalize(aug)), model.teacher(model.normalize(clean))
    assert len(seen) == 1 and len(seen[0]) == 3  # three feature maps, not an image
    assert all(torch.equal(a, b) for a, b in zip(seen[0], t_aug))
    assert not all(torch.allclose(a, b) for a, b in zip(seen[0], t_clean))


def test_fusion_weights_depend_on_the_input_and_learn():
    torch.manual_seed(0)
    fusion = AdaptiveFeatureFusion([8, 4, 2])
    x1, x2 = torch.randn(1, 14, 6, 6), torch.randn(1, 14, 6, 6)
    (c1, l1), (c2, l2) = fusion.weights(x1), fusion.weights(x2)
    assert not torch.allclose(l1, l2) and not all(torch.allclose(a, b) for a, b in zip(c1, c2))
    assert torch.allclose(l1.sum(1), torch.full((1, 6, 6), 3.0))  # softmax x number of levels
    fusion(torch.randn(8, 14, 6, 6)).pow(2).mean().backward()  # a batch: no gate unit is dead for all
    grads = [p.grad for p in fusion.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.slow
def test_pfadseg_trains_end_to_end_with_the_same_loop(ci_cfg, toy_split, tmp_path):
    from destseg_lib.train import train_model
    cfg = ci_cfg.replace(student_steps=2, seg_steps=2, **VARIANTS["pfadseg"])
    res = train_model(cfg, toy_split, tmp_path, progress=False)
    assert [h["stage"] for h in res.history] == [1, 1, 2, 2]
    init = build_model(cfg)
    assert not torch.equal(init.segmentation.fusion.level_gate.weight, res.model.segmentation.fusion.level_gate.weight)
