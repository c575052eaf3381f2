"""The training optimiser (README, Training recipe)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw(params: Iterable[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The training optimiser: torch's AdamW, through its fused kernel where every parameter's device has one (CPU,
    CUDA). The fused update passes over each parameter once instead of once per elementwise op (on the CPU about
    six times faster for UPerNet-ConvNeXt-T's 40 M weights, a third of a demo training step) and equals the
    per-op update up to rounding (README, Training recipe)."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
