"""Mixed precision: every BiDense layer under CPU autocast (bfloat16) against float32, forward and backward.

bfloat16 keeps 8 significant bits, so the binary input and weights (+-alpha, +-gamma) are rounded by up to 2^-9
and the convolution's output by 2^-9 again; the statistics stay float32.  Tolerance: the largest deviation within
3% of the float32 tensor's largest magnitude (values and gradients).
"""

import pytest
import torch
from torch import nn

from binary.layers import DAB, BiDenseConv2d, BiDenseConvTranspose2d, BiDenseLinear, BypassDown, BypassUp

TOL = 0.03

LAYERS = {
    "conv 3x3": (lambda: BiDenseConv2d(8, 12, 3, padding=1), (2, 8, 9, 9)),
    "conv 1x1 bias": (lambda: BiDenseConv2d(12, 8, 1, bias=True), (2, 12, 9, 9)),
    "depthwise 7x7": (lambda: BiDenseConv2d(8, 8, 7, padding=3, groups=8), (2, 8, 9, 9)),
    "transposed 3x3": (lambda: BiDenseConvTranspose2d(8, 6, 3, padding=1), (2, 8, 7, 7)),
    "down": (lambda: BypassDown(6, 12, 2, 2), (2, 6, 8, 8)),
    "up": (lambda: BypassUp(8, 6, 2), (2, 8, 5, 5)),
    "linear": (lambda: BiDenseLinear(8, 12), (2, 10, 8)),
    "dab tokens": (lambda: DAB(8, dim=-1), (2, 10, 8)),
    "dab nchw": (lambda: DAB(8), (2, 8, 5, 5)),
}


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.dtype == want.dtype or got.dtype == torch.bfloat16, what
    err = (got.float() - want).abs().max().item()
    assert err <= TOL * want.abs().max().item(), f"{what}: max error {err} vs max |value| {want.abs().max().item()}"


def _run(layer: nn.Module, x: torch.Tensor, bf16: bool):
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = layer(x)
    (y.float() * torch.linspace(0.1, 1.0, y.numel()).view(y.shape)).sum().backward()
    return y, x.grad, {name: p.grad for name, p in layer.named_parameters()}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("train", [True, False])
def test_layer_under_bf16_autocast_matches_float32(name, train):
    build, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = build()
    for p in layer.parameters():  # away from the initial values (weights 1e-3 next to a bias would sit below
        nn.init.normal_(p, std=0.3)  # bfloat16's resolution of the conv output, whatever the layer)
    x = torch.randn(shape)
    layer.train()(x)
    layer.train(train)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    y32, gx32, gp32 = _run(layer, x, bf16=False)
    layer.load_state_dict(state)
    y16, gx16, gp16 = _run(layer, x, bf16=True)
    _close(y16, y32, "output")
    _close(gx16, gx32, "input gradient")
    assert gx16.dtype == torch.float32
    for key, want in gp32.items():
        assert gp16[key].dtype == want.dtype == torch.float32, key
        if key == "conv.bias" and train:
            continue  # zero but for rounding: BatchNorm with batch statistics cancels a per-channel offset
        _close(gp16[key], want, f"gradient of {key}")
    if not train:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(layer(x), y16.detach())  # the cached eval path under autocast


def test_fused_conv_runs_in_the_autocast_dtype_with_float32_statistics():
    unit = BiDenseConv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = unit(x)
    assert y.dtype == torch.bfloat16
    assert unit.norm.running_mean.dtype == torch.float32
