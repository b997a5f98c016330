"""Training losses (DeSTSeg Sec. 3.2 Eq. 3-4, Sec. 3.3 Eq. 5-7)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_loss(cosine_maps: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 3/4: per level the map 1 - cos(T(I), S(I_a)) averaged over its h x w pixels, then SUMMED
    over the batch and the levels.

    Summing over the batch (not averaging) is what the official code does, and it is what makes its
    student learning rate of 0.4 work: with batch 32 the gradient is 32x that of a batch mean.
    Keep both together if you change either.
    """
    return sum(m.sum() / (m.shape[-2] * m.shape[-1]) for m in cosine_maps)


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """Eq. 5: mean over pixels of -(1 - p_t)^gamma log(p_t), p_t = p if y = 1 else 1 - p (gamma = 4).

    ``probs`` are sigmoid outputs (the segmentation net ends in a sigmoid, as in the official code).
    """
    probs, target = probs.float(), target.float()
    ce = F.binary_cross_entropy(probs, target, reduction="none")
    p_t = probs * target + (1 - probs) * (1 - target)
    return (ce * (1 - p_t) ** gamma).mean()


def l1_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 6: mean absolute difference between the predicted map and the mask (sparsity)."""
    return F.l1_loss(probs.float(), target.float())


def downsample_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """Sec. 3.3: the synthetic mask downsampled to the segmentation output (bilinear, then >= 0.5)."""
    return (F.interpolate(mask, size=size, mode="bilinear", align_corners=False) >= 0.5).float()


def segmentation_loss(probs: torch.Tensor, mask: torch.Tensor, gamma: float = 4.0, l1: bool = True) -> dict:
    """Eq. 7: focal + L1 against the mask downsampled to the output size.  ``l1=False`` is Table 5's
    "w/o L1 loss" (the L1 term is still reported, but not added to the loss)."""
    target = downsample_mask(mask, probs.shape[-2:])
    focal, l1_term = focal_loss(probs, target, gamma), l1_loss(probs, target)
    return {"loss": focal + l1_term if l1 else focal, "focal": focal, "l1": l1_term}
