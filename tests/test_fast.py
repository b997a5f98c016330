"""destseg_lib.fast: the faster inference path computes the same maps and scores as
``infer.predict`` (BatchNorm folded into the convolutions, inference_mode, channels-last).

Tolerance: 1e-4 absolute on maps in [0, 1] and on scores — folding reorders float32 operations
(``w * g / sqrt(v + eps)`` once instead of per call), nothing more."""
import pytest
import torch

from destseg_lib.config import get_preset
from destseg_lib.fast import FastPredictor, fold_batchnorm, unfolded_batchnorms
from destseg_lib.infer import predict
from destseg_lib.models import DeSTSeg

TOL = 1e-4
VARIANTS = [
    {},  # DeSTSeg, official ASPP, EfficientNet-Lite0 teacher
    {"teacher": "resnet18", "aspp": "torchvision"},
    {"student_arch": "teacher_decoder", "seg_fusion": "adaptive"},  # PFADSeg
    {"student_arch": "plain", "segmentation": False},
]


def _model(over):
    torch.manual_seed(0)
    cfg = get_preset("ci", **over)
    model = DeSTSeg.from_config(cfg, teacher_weights="checkpoint")  # random weights: no download
    # non-trivial BatchNorm statistics, so that folding them matters
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 3, 64, 64))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval(), cfg


@pytest.mark.slow
@pytest.mark.parametrize("over", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "destseg")
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_predictor_equals_plain_predict(over, channels_last):
    model, cfg = _model(over)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = predict(model, x, cfg.top_t)
    fast = FastPredictor(model, cfg.top_t, channels_last=channels_last)
    assert unfolded_batchnorms(fast.graph) == []  # every BN of every variant folds
    out = fast(x)
    for k in ("anomaly_map", "score", "de_st_map", "de_st_score"):
        assert out[k].shape == ref[k].shape, k
        assert torch.allclose(out[k], ref[k], atol=TOL, rtol=0), (k, (out[k] - ref[k]).abs().max())


def test_folding_leaves_the_original_model_untouched():
    model, _ = _model({})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert unfolded_batchnorms(model)  # still has its BatchNorms
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in folded.parameters())
