"""The binary functions and BiDense layers on CUDA against the CPU: forward values and every gradient.

Each case builds its inputs and parameters on the CPU (float32, fixed seed), runs forward and backward on the CPU
in float32 (the reference), then on the GPU in float32 and under bfloat16 autocast, with the same values. TF32 is
switched off. Tolerances, as the largest absolute deviation over the largest magnitude of the CPU tensor:

* float32: 1e-4 (the GPU sums in another order; the signs of the DAB and of the weights are the same unless an
  element sits within rounding of its threshold, which the random inputs here make improbable);
* bfloat16: 3e-2 (8 significant bits on the binary input, the weights and the convolution output; the DAB
  statistics stay float32; README, "Speed": mixed precision).

    python -m benchmarks.gpu_equivalence [--device cuda]

Prints one line per case and check; exits 1 if any check fails, with one line when no GPU is visible.
``--device cpu`` runs the same checks on the CPU against itself (a dry run of this script).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable

import torch
from torch import nn

from binary.functional import (
    APPROX_SIGN,
    ClippedSTE,
    ErrorDecaySTE,
    add_channel_adaptive_bypass_,
    binarize_weight,
    binarize_weight_centered,
    channel_adaptive_bypass,
    dab,
    sign_ste,
)
from binary.layers import (
    BiDenseConv2d,
    BiDenseConvTranspose2d,
    BiDenseLinear,
    BypassDown,
    BypassUp,
    RPReLU,
    ShiftPReLU,
)
from binary.transformer_layers import BiViTAttention, BiViTLinear

TOLERANCE = {"float32": 1e-4, "bf16": 3e-2}


def _function_case(fn: Callable[..., torch.Tensor], *shapes: tuple[int, ...], scale: float = 1.0):
    """A case of a function of fresh random tensors (all requiring grad)."""

    def build():
        return None, [torch.randn(s) * scale for s in shapes], fn

    return build


def _layer_case(make: Callable[[], nn.Module], shape: tuple[int, ...], train: bool = True):
    """A case of a layer (its parameters re-drawn N(0, 0.3^2)) on a random input, in train or eval mode."""

    def build():
        layer = make()
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_(std=0.3)
        layer.train()(torch.randn(shape))
        layer.train(train)
        return layer, [torch.randn(shape)], None

    return build


CASES: dict[str, Callable] = {
    "sign_ste clipped": _function_case(lambda x: sign_ste(x, ClippedSTE(True)), (64, 33), scale=0.8),
    "sign_ste unsigned open": _function_case(lambda x: sign_ste(x, ClippedSTE(False), unsigned=True), (64, 33)),
    "sign_ste approx_sign": _function_case(lambda x: sign_ste(x, APPROX_SIGN), (64, 33), scale=0.8),
    "sign_ste error decay": _function_case(lambda x: sign_ste(x, ErrorDecaySTE(10.0, 0.1)), (64, 33)),
    "dab nchw": _function_case(lambda x, k, b, a: dab(x, k, b, a, (2, 3)), (2, 8, 9, 9), (1, 8, 1, 1),
                               (1, 8, 1, 1), (1, 8, 1, 1)),
    "dab tokens": _function_case(lambda x, k, b, a: dab(x, k, b, a, 1), (2, 17, 8), (1, 1, 8), (1, 1, 8),
                                 (1, 1, 8)),
    "binarize_weight": _function_case(binarize_weight, (12, 8, 3, 3), scale=0.7),
    "binarize_weight_centered": _function_case(binarize_weight_centered, (12, 20), scale=0.7),
    "cfb 6->16": _function_case(lambda x: channel_adaptive_bypass(x, 16), (2, 6, 5, 5)),
    "cfb tokens 8->5": _function_case(lambda x: channel_adaptive_bypass(x, 5, -1), (2, 7, 8)),
    "add cfb 6->9": _function_case(lambda y, x: add_channel_adaptive_bypass_(y * 1.0, x), (2, 9, 5, 5),
                                   (2, 6, 5, 5)),
    "BiDenseConv2d 3x3 train": _layer_case(lambda: BiDenseConv2d(16, 24, 3, padding=1), (2, 16, 12, 12)),
    "BiDenseConv2d 3x3 eval": _layer_case(lambda: BiDenseConv2d(16, 24, 3, padding=1), (2, 16, 12, 12), False),
    "BiDenseConv2d 1x1 bias eval": _layer_case(lambda: BiDenseConv2d(24, 16, 1, bias=True), (2, 24, 12, 12), False),
    "BiDenseConv2d dw 7x7": _layer_case(lambda: BiDenseConv2d(16, 16, 7, padding=3, groups=16), (2, 16, 12, 12)),
    "BiDenseConvTranspose2d": _layer_case(lambda: BiDenseConvTranspose2d(16, 12, 3, padding=1), (2, 16, 9, 9)),
    "BypassDown 2x2 s2": _layer_case(lambda: BypassDown(12, 24, 2, 2), (2, 12, 12, 12)),
    "BypassUp x2": _layer_case(lambda: BypassUp(16, 12, 2), (2, 16, 6, 6)),
    "BiDenseLinear": _layer_case(lambda: BiDenseLinear(16, 24), (2, 19, 16)),
    "BiViTLinear": _layer_case(lambda: BiViTLinear(16, 24), (2, 19, 16)),
    "ShiftPReLU": _layer_case(lambda: ShiftPReLU(16), (2, 16, 9, 9)),
    "RPReLU": _layer_case(lambda: RPReLU(16), (2, 16, 9, 9)),
}


def _attention_case(head_dim: int):
    def build():
        return None, [torch.randn(2, 2, 11, head_dim) for _ in range(3)], BiViTAttention(head_dim, 2)
    return build


CASES["BiViTAttention"] = _attention_case(16)  # power-of-two scale: applied to sign(Q), as in ViT-S/14
CASES["BiViTAttention head 8"] = _attention_case(8)  # other scales: applied to the scores


def _run(build: Callable, device: torch.device, bf16: bool) -> dict[str, torch.Tensor]:
    """Forward and backward of one case on ``device``; returns the output and every gradient, on the CPU."""
    torch.manual_seed(0)
    layer, inputs, fn = build()
    if layer is not None:
        layer = layer.to(device)
        fn = layer
    inputs = [t.to(device).requires_grad_(True) for t in inputs]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        out = fn(*inputs)
    weights = torch.linspace(0.1, 1.0, out.numel(), device=device).view(out.shape)
    (out.float() * weights).sum().backward()
    result = {"output": out.detach().float().cpu()}
    result.update({f"grad input {i}": t.grad.float().cpu() for i, t in enumerate(inputs) if t.grad is not None})
    if layer is not None:
        result.update({f"grad {n}": p.grad.float().cpu() for n, p in layer.named_parameters() if p.grad is not None})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_equivalence: no CUDA GPU is visible on this machine (torch.cuda.is_available() is False)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    failures = 0
    for name, build in CASES.items():
        want = _run(build, torch.device("cpu"), bf16=False)
        for mode, bf16 in (("float32", False), ("bf16", True)):
            got = _run(build, device, bf16)
            worst, where = 0.0, ""
            for key, ref in want.items():
                if key not in got:
                    worst, where = float("inf"), f"{key} missing"
                    break
                scale = max(ref.abs().max().item(), 1e-12)
                err = (got[key] - ref).abs().max().item() / scale
                if err > worst:
                    worst, where = err, key
            ok = worst <= TOLERANCE[mode]
            failures += not ok
            at = f"{where}; " if where else ""
            print(f"{'ok  ' if ok else 'FAIL'} {name:28s} {mode:8s} worst {worst:.2e} ({at}tolerance "
                  f"{TOLERANCE[mode]:.0e})")
    print(f"gpu_equivalence: {failures} check(s) failed" if failures else "gpu_equivalence: all checks passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
