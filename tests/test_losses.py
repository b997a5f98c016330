import math

import torch

from destseg_lib.losses import cosine_loss, downsample_mask, focal_loss, l1_loss, segmentation_loss


def test_focal_loss_hand_computed():
    p = torch.tensor([[0.9, 0.2], [0.6, 0.01]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # p_t = 0.9, 0.8, 0.4, 0.01 ; loss = -(1-p_t)^4 log p_t, mean
    terms = [-(0.1 ** 4) * math.log(0.9), -(0.2 ** 4) * math.log(0.8), -(0.6 ** 4) * math.log(0.4),
             -(0.99 ** 4) * math.log(0.01)]
    assert math.isclose(focal_loss(p, y, 4.0).item(), sum(terms) / 4, rel_tol=1e-6)
    # gamma = 0 is plain binary cross-entropy
    bce = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.01)) / 4
    assert math.isclose(focal_loss(p, y, 0.0).item(), bce, rel_tol=1e-6)


def test_l1_loss_hand_computed():
    p = torch.tensor([0.9, 0.2, 0.6, 0.01])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert math.isclose(l1_loss(p, y).item(), (0.1 + 0.2 + 0.6 + 0.99) / 4, rel_tol=1e-6)


def test_cosine_loss_sums_batch_and_levels_means_pixels():
    a = torch.full((2, 1, 4, 4), 0.5)
    b = torch.full((2, 1, 2, 2), 0.25)
    # level a: per image mean 0.5, summed over 2 images -> 1.0; level b: 0.5 -> total 1.5
    assert math.isclose(cosine_loss([a, b]).item(), 1.5, rel_tol=1e-7)


def test_downsample_mask_bilinear_then_threshold():
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, :2, :2] = 1  # exactly one 2x2 cell -> 1 at 2x2 output
    m[0, 0, 2, 2] = 1  # a quarter of a cell -> 0.25 < 0.5 -> 0
    out = downsample_mask(m, (2, 2))
    assert out[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_segmentation_loss_is_focal_plus_l1():
    p = torch.rand(2, 1, 4, 4) * 0.98 + 0.01
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    parts = segmentation_loss(p, mask)
    assert torch.isclose(parts["loss"], parts["focal"] + parts["l1"])
