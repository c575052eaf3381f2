"""The shifted PReLU after the binary units (ReActNet's LearnableBias -> PReLU [-> LearnableBias], arXiv
2003.03488): `binary.functional.shift_prelu` in its native kernels against the equations written out here and
against the PyTorch ops it replaces; the modules keep the released state-dict keys; the fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binary import native
from binary.functional import shift_prelu
from binary.layers import LearnableBias, RPReLU, ShiftPReLU


def _case(shape, dtype, out_shift):
    torch.manual_seed(3)
    c = shape[1]
    x = torch.randn(shape, dtype=dtype)
    x.view(-1)[:4] = torch.tensor([0.0, -0.0, 1.0, -1.0], dtype=dtype)  # t = x + b1 exactly 0 on channel 0
    b1 = 0.1 * torch.randn(c, dtype=dtype)
    b1[0] = 0.0
    params = [b1, 0.25 + 0.1 * torch.randn(c, dtype=dtype)]
    if out_shift:
        params.append(0.1 * torch.randn(c, dtype=dtype))
    return x.requires_grad_(), [p.requires_grad_() for p in params]


def _ops(x, b1, w, b2=None):
    """The released modules' ops: LearnableBias (x + b), PReLU, LearnableBias."""
    y = F.prelu(x + b1.view(1, -1, 1, 1), w)
    return y if b2 is None else y + b2.view(1, -1, 1, 1)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 2, 1, 1), (2, 4, 40, 40)])
@pytest.mark.parametrize("out_shift", [False, True], ids=["LearnableBias-PReLU", "RPReLU"])
def test_native_matches_the_equations_and_the_ops(shape, dtype, tol, out_shift, threads):
    """y = prelu(x + b1, w) [+ b2] and dL/dx = g where t = x + b1 > 0 else w g, bit for bit the ops'; dL/db1 =
    sum dL/dx, dL/dw = sum over t <= 0 of t g, dL/db2 = sum g (per channel, over samples and pixels), within
    rounding of the ops' sums. Rows of 1, 35 and 1600 elements (two sum blocks), one and two threads."""
    x, params = _case(shape, dtype, out_shift)
    y = shift_prelu(x, *params)
    assert type(y.grad_fn).__name__ == "_ShiftPReLUBackward"
    ref = _ops(x, *params)
    assert torch.equal(y, ref)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *params], g)
    ref_grads = torch.autograd.grad(ref, [x, *params], g)
    assert torch.equal(grads[0], ref_grads[0])
    for got, want in zip(grads[1:], ref_grads[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    b1, w = params[:2]
    t = x.detach() + b1.detach().view(1, -1, 1, 1)
    positive = t > 0
    slope = w.detach().view(1, -1, 1, 1)
    torch.testing.assert_close(grads[0], torch.where(positive, g, slope * g), rtol=0, atol=0)
    sums = [grads[0].sum((0, 2, 3)), torch.where(positive, torch.zeros_like(t), t * g).sum((0, 2, 3))]
    if out_shift:
        sums.append(g.sum((0, 2, 3)))
    for got, want in zip(grads[1:], sums, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_gradcheck_float64(threads):
    x, params = _case((2, 3, 4, 5), torch.float64, True)
    x = x.detach().add_(0.05).requires_grad_()  # away from the kink t = 0, where PReLU has no derivative
    assert torch.autograd.gradcheck(shift_prelu, (x, *params))


@pytest.mark.parametrize("variant", ["bfloat16", "channels_last", "autocast", "switched off"])
def test_fallback_runs_the_ops(variant, monkeypatch):
    """Where the kernels do not apply (half precision, a non-contiguous input, autocast, no library) the ops run:
    same values, and autograd through the ops."""
    dtype = torch.bfloat16 if variant == "bfloat16" else torch.float32
    x, params = _case((2, 3, 6, 6), dtype, True)
    if variant == "channels_last":
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    if variant == "switched off":
        monkeypatch.setattr(native, "library", lambda: None)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "autocast"):
        y = shift_prelu(x, *params)
        ref = _ops(x, *params)
    assert type(y.grad_fn).__name__ != "_ShiftPReLUBackward"
    assert y.dtype == ref.dtype and torch.equal(y, ref)


def test_modules_keep_the_released_keys_and_compute_the_ops(threads):
    """`ShiftPReLU` is the released ``nn.Sequential(LearnableBias, PReLU)`` (same keys, loads its state dict);
    `RPReLU` on NCHW and on tokens (channels last, the ops) gives the ops' values."""
    torch.manual_seed(0)
    released = nn.Sequential(LearnableBias(6), nn.PReLU(6))
    with torch.no_grad():
        released[0].bias.normal_()
        released[1].weight.normal_()
    act = ShiftPReLU(6)
    assert list(act.state_dict()) == list(released.state_dict()) == ["0.bias", "1.weight"]
    act.load_state_dict(released.state_dict())
    x = torch.randn(2, 6, 5, 5)
    assert torch.equal(act(x), released(x))
    rp = RPReLU(6)
    with torch.no_grad():
        for p in rp.parameters():
            p.normal_()
    assert list(rp.state_dict()) == ["shift_in.bias", "prelu.weight", "shift_out.bias"]
    assert torch.equal(rp(x), _ops(x, rp.shift_in.bias, rp.prelu.weight, rp.shift_out.bias))
    tokens = RPReLU(6, dim=-1)
    tokens.load_state_dict(rp.state_dict())
    seq = torch.randn(2, 7, 6)
    want = F.prelu((seq + rp.shift_in.bias).transpose(1, 2), rp.prelu.weight).transpose(1, 2) + rp.shift_out.bias
    assert torch.equal(tokens(seq), want)
