"""Training losses. Segmentation uses ``torch.nn.CrossEntropyLoss`` with the ignore slot as ignore index (in
`train_segmentation`); depth uses `silog_loss`."""

from __future__ import annotations

import torch
from torch import Tensor

SILOG_EPS = 1e-12


def silog_loss(pred: Tensor, target: Tensor, variance_focus: float = 0.85, min_depth: float = 0.1) -> Tensor:
    """Scale-invariant log loss (README, Training recipe), the training loss of every depth model.

    Over the valid pixels ``target > min_depth`` (0.1 m for NYUv2, 1.0 m for KITTI: pass it; the default is
    NYUv2's)::

        d = ln(pred + 1e-7) - ln(target + 1e-7)
        L = 10 * sqrt(mean(d^2) - variance_focus * mean(d)^2 + eps),  argument clamped at 0 before adding eps

    For ``variance_focus <= 1`` the argument is a variance plus a non-negative term, so it is >= 0 in exact
    arithmetic; rounding can make it slightly negative for a near-perfect prediction, which would give nan.
    Clamping at 0 and adding ``eps`` = `SILOG_EPS` (1e-12) keeps the value finite and the gradient bounded
    (``d sqrt(a)/da`` is infinite at 0) while shifting L by at most ``10 * sqrt(eps)`` = 1e-5.  Computed in
    float32 whatever the input precision (bf16 logarithms are too coarse).  With no valid pixel the loss is 0,
    still connected to ``pred`` (zero gradient), so every DDP process runs the same backward.

    Args:
        pred: predicted depth in metres, any shape (``[B, 1, H, W]``), positive.
        target: ground-truth depth of the same shape, 0 where there is none.
        variance_focus: lambda, 0.85 (``TRAINING.VARIANCE_FOCUS``).
        min_depth: smallest ground-truth depth used.
    """
    if pred.shape != target.shape:
        raise ValueError(f"silog_loss: pred shape {tuple(pred.shape)} does not match target shape "
                         f"{tuple(target.shape)}")
    valid = target > min_depth
    if not valid.any():
        return pred.sum() * 0.0
    d = torch.log(pred[valid].float() + 1e-7) - torch.log(target[valid].float() + 1e-7)
    return 10.0 * torch.sqrt(((d**2).mean() - variance_focus * d.mean() ** 2).clamp_min(0) + SILOG_EPS)
