"""The `paper` preset is the official DeSTSeg graph and recipe (facts in shared/paper/official_recipe.md),
and every ablation switch of Tables 4-6 changes what it says it changes."""
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from destseg_lib.config import PRESETS, DeSTSegConfig, get_preset
from destseg_lib.data import GREY_FILL, resize_array, resize_image, resize_mask, rotate_augment
from destseg_lib.models import DeSTSeg, DenoisingStudent, PlainStudent, SegmentationNet, de_st_map
from destseg_lib.textures import FolderTextures
from destseg_lib.train import build_model, make_optimizers, train_model, training_step


def _n(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_model():
    with warnings.catch_warnings():  # torchvision's ImageNet weights would need a download: random
        warnings.simplefilter("ignore")
        return DeSTSeg.from_config(PRESETS["paper"], teacher_weights=None)


# ---------------------------------------------------------------- graph: the official parameter counts
def test_paper_preset_has_the_official_parameter_counts(paper_model):
    assert _n(paper_model.teacher) == 2_782_784
    assert _n(paper_model.student) == 24_665_024
    assert _n(paper_model.segmentation) == 7_706_369
    assert _n(paper_model.segmentation.head[0]) == 4_196_864  # the ASPP


def test_paper_model_has_no_dropout(paper_model):
    assert not [m for m in paper_model.modules() if isinstance(m, nn.Dropout)]


def test_torchvision_aspp_is_the_old_graph():
    net = SegmentationNet(448, 256, aspp="torchvision")
    assert _n(net) == 5_740_801 and _n(net.head[0]) == 2_231_296
    assert any(isinstance(m, nn.Dropout) for m in net.modules())


# ---------------------------------------------------------------- init
def _kaiming_fan_out_std(conv: nn.Conv2d) -> float:
    return math.sqrt(2.0 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]))


def test_official_init_statistics(paper_model):
    for conv in (paper_model.student.decoder[1][0].conv1, paper_model.student.decoder[3][1].conv2,
                 paper_model.segmentation.res[0].conv1, paper_model.segmentation.res[1].conv2):
        assert abs(conv.weight.std().item() / _kaiming_fan_out_std(conv) - 1) < 0.10
    # zero-init residual: the last BN of every encoder block starts at 0; decoder BNs at 1
    enc_last_bns = [block.bn2.weight for layer in paper_model.student.encoder for block in layer]
    assert all(torch.count_nonzero(w) == 0 for w in enc_last_bns)
    assert torch.equal(paper_model.student.decoder[0][0].bn2.weight, torch.ones(512))


def test_pytorch_init_differs_and_is_smaller():
    student = DenoisingStudent(init="pytorch")
    conv = student.decoder[1][0].conv1
    assert conv.weight.std().item() < 0.5 * _kaiming_fan_out_std(conv)  # PyTorch's default is 2.5-3.5x smaller
    assert all(torch.count_nonzero(b.bn2.weight) > 0 for layer in student.encoder for b in layer)


# ---------------------------------------------------------------- DeST map
def test_de_st_map_multiplies_at_quarter_resolution_then_upsamples():
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(1, 1, 8, 8, generator=g), torch.rand(1, 1, 4, 4, generator=g),
            torch.rand(1, 1, 2, 2, generator=g)]
    up = lambda m, s: nn.functional.interpolate(m, size=s, mode="bilinear", align_corners=False)
    expected = up(maps[0] * up(maps[1], (8, 8)) * up(maps[2], (8, 8)), (32, 32))
    assert torch.allclose(de_st_map(maps, (32, 32)), expected, atol=1e-6)
    upsample_first = up(maps[0], (32, 32)) * up(maps[1], (32, 32)) * up(maps[2], (32, 32))
    assert not torch.allclose(de_st_map(maps, (32, 32)), upsample_first, atol=1e-3)


# ---------------------------------------------------------------- data pipeline
def test_antialiased_resize_turns_a_one_pixel_checkerboard_grey():
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    rgb = np.repeat(board[..., None], 3, axis=2)
    out = resize_image(rgb, 16)  # shrink 4x
    assert abs(out.mean().item() - 0.5) < 0.01 and out.std().item() < 0.01  # uniform grey
    # shrunk 3x, cv2.INTER_LINEAR samples one source pixel per output pixel: the pattern aliases
    board3 = np.repeat((((np.indices((63, 63)).sum(0) % 2) * 255).astype(np.uint8))[..., None], 3, axis=2)
    assert resize_image(board3, 21, "cv2").std().item() > 0.3
    assert resize_image(board3, 21).std().item() < 0.1


def test_antialiased_mask_resize_keeps_a_thin_defect_the_way_pil_does():
    mask = np.zeros((256, 256), bool)
    mask[:, 100:104] = True  # a 4-px-wide crack, shrunk 4x: 1 px of coverage 1.0
    assert resize_mask(mask, 64).sum() == 64
    with pytest.raises(ValueError, match="resize"):
        resize_array(mask.astype(np.float32), (8, 8), "nearest")


def test_rotation_fill_grey_is_official_reflect_is_the_old_way():
    img = torch.ones(3, 128, 128)
    assert abs(np.random.default_rng(0).uniform(-5, 5)) > 1  # the angle this seed draws
    grey = rotate_augment(img, "small", np.random.default_rng(0), "grey")
    refl = rotate_augment(img, "small", np.random.default_rng(0), "reflect")
    corners = grey[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners - GREY_FILL).abs().min() < 1e-6 and GREY_FILL == 114 / 255  # uncovered corners: grey
    assert torch.allclose(refl, img)


def test_textures_are_not_augmented_in_the_official_recipe(tmp_path):
    import cv2
    rgb = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])
    plain = FolderTextures(tmp_path).sample(np.random.default_rng(1), (20, 15))
    assert np.allclose(plain, resize_array(rgb, (20, 15)) / 255.0, atol=1e-6)  # the image, resized: nothing else
    augmented = FolderTextures(tmp_path, augment=True).sample(np.random.default_rng(1), (20, 15))
    assert not np.allclose(augmented, plain, atol=1e-2)


def test_paper_preset_values_are_the_official_recipe():
    cfg = PRESETS["paper"]
    assert (cfg.aspp, cfg.init, cfg.texture_augment, cfg.empty_masks, cfg.resize, cfg.rotation_fill) == \
        ("official", "official", False, "allow", "antialias", "grey")
    assert (cfg.denoising, cfg.student_arch, cfg.segmentation, cfg.l1_loss, cfg.seg_input) == \
        (True, "encoder_decoder", True, True, "product")
    assert (cfg.image_size, cfg.batch_size, cfg.student_steps, cfg.seg_steps, cfg.lr_student, cfg.lr_seg_res,
            cfg.lr_seg_head, cfg.top_t, cfg.focal_gamma) == (256, 32, 1000, 4000, 0.4, 0.1, 0.01, 100, 4.0)


def test_a_config_saved_before_the_switches_loads_as_the_old_behaviour():
    old = {k: v for k, v in PRESETS["ci"].to_dict().items()
           if k not in ("aspp", "init", "texture_augment", "empty_masks", "resize", "rotation_fill")}
    cfg = DeSTSegConfig.from_dict(old)
    assert (cfg.aspp, cfg.init, cfg.texture_augment, cfg.empty_masks, cfg.resize, cfg.rotation_fill) == \
        ("torchvision", "pytorch", True, "redraw", "cv2", "reflect")


# ---------------------------------------------------------------- ablation switches: each one does something
def _batch(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(2, 3, cfg.image_size, cfg.image_size, generator=g)
    aug = clean.clone()
    aug[:, :, 8:24, 8:24] = torch.rand(2, 3, 16, 16, generator=g)
    mask = torch.zeros(2, 1, cfg.image_size, cfg.image_size)
    mask[:, :, 8:24, 8:24] = 1
    return clean, aug, mask


@pytest.mark.parametrize("denoising", [True, False])
def test_den_switch_decides_what_the_student_sees(ci_cfg, denoising):
    cfg = ci_cfg.replace(denoising=denoising)
    model = build_model(cfg)
    seen = []
    model.student.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    clean, aug, mask = _batch(cfg)
    training_step(model, (clean, aug, mask), cfg, stage=1)
    expected = model.normalize(aug if denoising else clean)
    assert torch.equal(seen[0], expected)


def test_ed_switch_builds_the_plain_resnet18_student():
    cfg = get_preset("paper", student_arch="plain", teacher_weights=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DeSTSeg.from_config(cfg)
    assert isinstance(model.student, PlainStudent) and _n(model.student) == 2_782_784
    t, s = model.features(torch.rand(1, 3, 64, 64))
    assert [f.shape for f in t] == [f.shape for f in s]
    # random init, not the teacher's weights
    assert not torch.equal(model.student.stem[0].weight, model.teacher.stem[0].weight)


@pytest.mark.slow
def test_seg_switch_off_skips_stage_two(ci_cfg, toy_split, tmp_path):
    cfg = ci_cfg.replace(segmentation=False, student_steps=2)
    assert cfg.total_steps == 2
    model = build_model(cfg)
    assert model.segmentation is None and make_optimizers(model, cfg)[1] is None
    res = train_model(cfg, toy_split, tmp_path, progress=False)
    assert [h["stage"] for h in res.history] == [1, 1]
    from destseg_lib.experiment import evaluate_predictions, primary_method
    from destseg_lib.data import TestImages
    from destseg_lib.infer import predict_dataset
    preds = predict_dataset(res.model, TestImages(toy_split.test, cfg.image_size), progress=False,
                            top_t=cfg.top_t)
    assert np.array_equal(preds.maps, preds.de_st_maps)
    assert list(evaluate_predictions(preds)) == ["DeST"] and primary_method(cfg) == "DeST"


@pytest.mark.parametrize("l1", [True, False])
def test_l1_switch_changes_the_stage_two_loss(ci_cfg, l1):
    cfg = ci_cfg.replace(l1_loss=l1)
    row = training_step(build_model(cfg), _batch(cfg), cfg, stage=2)
    if l1:
        assert row["loss"] == pytest.approx(row["focal"] + row["l1"], rel=1e-6)
    else:
        assert row["loss"] == pytest.approx(row["focal"], rel=1e-6) and row["l1"] > 0


def test_the_same_config_builds_the_same_weights(ci_cfg):
    """The control of the next test: building twice gives identical weights (seeded init)."""
    sa, sb = build_model(ci_cfg).state_dict(), build_model(ci_cfg).state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("field,value", [("aspp", "torchvision"), ("init", "pytorch"), ("student_arch", "plain"),
                                         ("seg_input", "concat")])
def test_model_switches_change_the_graph_or_weights(ci_cfg, field, value):
    """Each switch changes what it names, and only that: the ASPP's and the student's graphs (other
    parameter names), the init of the student decoder and the segmentation net's residual blocks
    (same names and shapes, other values; the pretrained teacher identical), the segmentation input
    (the first conv of the segmentation net takes twice the channels)."""
    sa, sb = build_model(ci_cfg).state_dict(), build_model(ci_cfg.replace(**{field: value})).state_dict()
    if field == "aspp":
        assert {k for k in sa if "head.0." in k} != {k for k in sb if "head.0." in k}
        assert {k for k in sa if "head.0." not in k} == {k for k in sb if "head.0." not in k}
    elif field == "student_arch":
        assert {k for k in sa if k.startswith("student.")} != {k for k in sb if k.startswith("student.")}
    elif field == "init":
        assert sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
        changed = {k.split(".")[0] + "." + k.split(".")[1] for k in sa if not torch.equal(sa[k], sb[k])}
        # the re-initialised parts differ (later inits draw other numbers too: the RNG stream moves on)
        assert {"student.decoder", "segmentation.res"} <= changed, changed
        assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith("teacher."))  # pretrained, frozen
    else:
        first = next(k for k in sa if k.startswith("segmentation.res.") and k.endswith("weight") and sa[k].ndim == 4)
        assert sb[first].shape[1] == 2 * sa[first].shape[1], (sa[first].shape, sb[first].shape)


def test_training_step_raises_a_kit_error_when_the_loss_is_not_finite(ci_cfg):
    from destseg_lib.errors import DestSegError, TrainingDivergedError
    cfg = ci_cfg
    model = build_model(cfg)
    with torch.no_grad():
        model.segmentation.head[-1].bias.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="stage 2") as e:
        training_step(model, _batch(cfg), cfg, stage=2)
    assert isinstance(e.value, DestSegError)
