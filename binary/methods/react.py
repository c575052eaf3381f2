"""ReActNet (Liu et al., ECCV 2020, arXiv 2003.03488) as the authors' baseline code builds it.

RSign(x) = ApproxSign(x + b_c) with a learnable per-input-channel shift b_c (init 0; `binary.layers.ShiftSign`);
weights sign(W) * mean|W| (detached), clipped STE, init N(0, 1e-3^2); no bias; activation BN -> LearnableBias ->
PReLU (the BN is the unit's), the full RPReLU LB -> PReLU -> LB after the FPN fusion, ReLU in the head.  No
distillation and no two-step schedule, as in the authors' code.  The layer choices are
`binary.methods.base.ReActConvMethod`, which `bisrnet` and the ViT baselines' decoder share.
"""

from __future__ import annotations

from binary.methods.base import ReActConvMethod
from binary.methods.registry import register


@register("react")
class ReAct(ReActConvMethod):
    """ReActNet baseline: RSign + ApproxSign, sign * mean|W| weights, LB -> PReLU activations."""
