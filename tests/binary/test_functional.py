"""binary.functional against formulas written out here (arXiv 2411.10346: the DAB equations and the CFB; the
released code's granularity, weight binarizer and channel mapping)."""

import pytest
import torch

from binary.functional import (
    APPROX_SIGN,
    CLIPPED,
    CLIPPED_OPEN,
    ClippedSTE,
    ErrorDecaySTE,
    add_channel_adaptive_bypass_,
    approx_sign,
    binarize_weight,
    binarize_weight_centered,
    channel_adaptive_bypass,
    dab,
    dab_conv2d,
    sign_ste,
)

D = torch.float64


def test_approx_sign_forward_and_hand_gradients():
    x = torch.tensor([-2.0, -1.0, -0.75, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5], dtype=D, requires_grad=True)
    y = approx_sign(x)
    assert y.tolist() == [-1, -1, -1, -1, 0, 1, 1, 1, 1]
    y.sum().backward()
    # 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere
    assert x.grad.tolist() == [0.0, 0.0, 0.5, 1.5, 2.0, 1.5, 1.0, 0.0, 0.0]


# The boundary |x| == 1 and the origin are on purpose: the estimators differ exactly there.
BOUNDARY_POINTS = [-3.0, -1.0, -0.999, -0.5, 0.0, 0.5, 0.999, 1.0, 3.0]


def _clipped_reference(x: list[float], closed: bool) -> list[float]:
    return [1.0 if (abs(v) <= 1 if closed else abs(v) < 1) else 0.0 for v in x]


@pytest.mark.parametrize("closed", [True, False])
@pytest.mark.parametrize("unsigned", [False, True])
def test_sign_ste_clipped_forward_and_boundary_gradient(closed, unsigned):
    x = torch.tensor(BOUNDARY_POINTS, dtype=D, requires_grad=True)
    y = sign_ste(x, ClippedSTE(closed=closed), unsigned=unsigned)
    want = [(1.0 if v > 0 else 0.0) if unsigned else (v > 0) - (v < 0) for v in BOUNDARY_POINTS]
    assert y.tolist() == want
    g = torch.arange(1.0, 10.0, dtype=D)
    y.backward(g)
    mask = _clipped_reference(BOUNDARY_POINTS, closed)
    assert x.grad.tolist() == [gi * m for gi, m in zip(g.tolist(), mask, strict=True)]


def test_sign_ste_defaults_to_closed_clip():
    assert CLIPPED == ClippedSTE(closed=True)
    x = torch.tensor([-1.0, 1.0, 1.5], dtype=D, requires_grad=True)
    sign_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]


def test_open_clip_is_the_authors_explicit_mask():
    """grad[x >= 1] = 0; grad[x <= -1] = 0 (the BiViT / BiBERT quantizers): no gradient at exactly +-1."""
    x = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], dtype=D, requires_grad=True)
    sign_ste(x, CLIPPED_OPEN).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_closed_clip_is_torch_212_clamp_trick():
    """sign(x).detach() - clamp(x, -1, 1).detach() + clamp(x, -1, 1) under torch 2.1.2, whose clamp backward is
    ``grad * (x >= min) * (x <= max)``: gradient 1 at exactly +-1, independent of the installed torch."""
    x = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], dtype=D, requires_grad=True)
    sign_ste(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    w = torch.tensor([[[[-1.0, 1.0], [0.5, -1.5]]]], dtype=D, requires_grad=True)
    binarize_weight(w).sum().backward()
    assert w.grad.flatten().tolist() == [1.0, 1.0, 1.0, 0.0]


def test_sign_ste_approx_sign_is_bi_real_derivative_with_zero_at_boundary():
    x = torch.tensor(BOUNDARY_POINTS, dtype=D, requires_grad=True)
    y = sign_ste(x, APPROX_SIGN)
    y.sum().backward()
    assert y.tolist() == [-1, -1, -1, -1, 0, 1, 1, 1, 1]
    # d/dx of F: 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere (so 0 at x = -1 from the left branch's 2 + 2x)
    want = [2 + 2 * v if -1 <= v < 0 else 2 - 2 * v if 0 <= v < 1 else 0.0 for v in BOUNDARY_POINTS]
    assert torch.allclose(x.grad, torch.tensor(want, dtype=D))
    z = torch.tensor(BOUNDARY_POINTS, dtype=D, requires_grad=True)
    approx_sign(z).sum().backward()
    assert torch.equal(z.grad, x.grad)


def test_sign_ste_error_decay_gradient():
    x = torch.tensor(BOUNDARY_POINTS, dtype=D, requires_grad=True)
    y = sign_ste(x, ErrorDecaySTE(k=3.0, t=0.5))
    g = torch.linspace(-1, 2, 9, dtype=D)
    y.backward(g)
    assert torch.equal(y.detach(), torch.sign(x.detach()))
    xs = torch.tensor(BOUNDARY_POINTS, dtype=D)
    assert torch.allclose(x.grad, g * 3.0 * 0.5 / torch.cosh(0.5 * xs) ** 2)  # k t sech^2(t x) = k t (1 - tanh^2)


def test_sign_ste_scale_is_forward_only():
    x = torch.tensor([[-2.0, 0.5, 1.0], [0.25, -0.75, 4.0]], dtype=D, requires_grad=True)
    scale = torch.tensor([[3.0], [0.5]], dtype=D, requires_grad=True)
    y = sign_ste(x, scale=scale)
    assert y.tolist() == [[-3.0, 3.0, 3.0], [0.5, -0.5, 0.5]]
    y.sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]  # not multiplied by the scale
    assert scale.grad is None


def _dab_reference(x, k, b, a, dims):
    """Straight from the DAB equations of arXiv 2411.10346, with the Bi-Real F(s) and detached statistics."""
    mean = x.detach().mean(dims, keepdim=True)
    s = x - (k * mean + b)
    big_f = torch.where(s < -1, -torch.ones_like(s),
                        torch.where(s < 0, s * s + 2 * s, torch.where(s < 1, -s * s + 2 * s, torch.ones_like(s))))
    ste = torch.sign(s).detach() - big_f.detach() + big_f
    alpha = torch.exp(a * (s.detach().abs().mean(dims, keepdim=True) - 1))
    return alpha * ste


def test_dab_hand_computed_values_and_gradients():
    # one sample, one channel, 4 positions: mean 0.5, beta = k*0.5 + b = 0.75 with k=1, b=0.25
    x = torch.tensor([[[[-1.0, 0.75], [1.0, 1.25]]]], dtype=D, requires_grad=True)
    k = torch.tensor([[[[1.0]]]], dtype=D, requires_grad=True)
    b = torch.tensor([[[[0.25]]]], dtype=D, requires_grad=True)
    a = torch.tensor([[[[0.5]]]], dtype=D, requires_grad=True)
    y = dab(x, k, b, a, (2, 3))
    s = [-1.75, 0.0, 0.25, 0.5]
    mad = sum(abs(v) for v in s) / 4  # 0.625
    alpha = torch.exp(torch.tensor(0.5 * (mad - 1), dtype=D))
    assert torch.allclose(y.flatten(), alpha * torch.tensor([-1.0, 0.0, 1.0, 1.0], dtype=D))
    g = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=D)
    y.backward(g)
    dsign = torch.tensor([0.0, 2.0, 1.5, 1.0], dtype=D)  # max(0, 2 - 2|s|)
    gx = g.flatten() * alpha * dsign
    assert torch.allclose(x.grad.flatten(), gx)
    assert torch.allclose(b.grad.flatten(), -gx.sum())
    assert torch.allclose(k.grad.flatten(), -gx.sum() * 0.5)
    # d/da: sum g * sign(s) * alpha * (mad - 1)
    assert torch.allclose(a.grad.flatten(), (-1 + 0 + 3 + 4) * alpha * (mad - 1))


@pytest.mark.parametrize("layout", ["nchw", "tokens"])
def test_dab_matches_reference_formula(layout):
    torch.manual_seed(0)
    if layout == "nchw":
        x, shape, dims = torch.randn(3, 5, 4, 6, dtype=D), (1, 5, 1, 1), (2, 3)
    else:
        x, shape, dims = torch.randn(3, 7, 5, dtype=D), (1, 1, 5), (1,)
    params = [torch.randn(shape, dtype=D).requires_grad_() for _ in range(3)]
    x.requires_grad_()
    g = torch.randn_like(x)
    got = dab(x, *params, dims)
    want = _dab_reference(x, *params, dims)
    assert torch.allclose(got, want)
    for p, q in zip(torch.autograd.grad(got, [x, *params], g), torch.autograd.grad(want, [x, *params], g),
                    strict=True):
        assert torch.allclose(p, q)


def test_dab_gradcheck_in_a():
    """The output depends smoothly on a (through alpha; sign(s) is fixed): numerical and analytic gradients agree."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 3, 3, dtype=D)
    k = torch.randn(1, 3, 1, 1, dtype=D)
    b = torch.randn(1, 3, 1, 1, dtype=D)
    a = torch.randn(1, 3, 1, 1, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: dab(x, k, b, a, (2, 3)), (a,))


def test_binarize_weight_values_and_clipped_ste():
    w = torch.tensor([[[[0.5]], [[-1.5]]], [[[2.0]], [[0.0]]]], dtype=D, requires_grad=True)  # [2, 2, 1, 1]
    wb = binarize_weight(w)
    assert wb.flatten().tolist() == [1.0, -1.0, 1.0, 0.0]  # row scales mean|w| = 1.0 and 1.0
    w2 = torch.tensor([[[[0.5]], [[-0.25]]]], dtype=D)
    assert torch.allclose(binarize_weight(w2).flatten(), torch.tensor([0.375, -0.375], dtype=D))
    wb.backward(torch.tensor([[[[3.0]], [[4.0]]], [[[5.0]], [[6.0]]]], dtype=D))
    assert w.grad.flatten().tolist() == [3.0, 0.0, 0.0, 6.0]  # gradient only where |w| <= 1


def test_binarize_weight_centered():
    w = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.5, -0.5]], dtype=D, requires_grad=True)
    wb = binarize_weight_centered(w)
    # row 0: centred [-2, -1, 3], mean|.| = 2; row 1: centred [0, .5, -.5], mean|.| = 1/3
    want = torch.tensor([[-2.0, -2.0, 2.0], [0.0, 1 / 3, -1 / 3]], dtype=D)
    assert torch.allclose(wb, want)
    g = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 4.0]], dtype=D)
    wb.backward(g)
    h = g * torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=D)  # |centred| <= 1
    assert torch.allclose(w.grad, h - h.mean(-1, keepdim=True))


def _cfb_rule(x: torch.Tensor, c_out: int) -> torch.Tensor:
    """The released CFB channel mapping written channel by channel: tiles, strided means, tail mean."""
    c = x.shape[1]
    r, m = divmod(c_out, c)
    chans = [x[:, j % c] for j in range(r * c)]
    if m:
        g = c // m
        big_r = g * (m - 1)
        for j in range(m - 1):
            chans.append(sum(x[:, i * (m - 1) + j] for i in range(g)) / g)
        chans.append(x[:, big_r:].mean(1))
    return torch.stack(chans, 1)


PAIRS = [(96, 384), (384, 96), (768, 192), (1536, 768), (96, 128), (128, 32), (48, 256), (96, 256), (192, 256),
         (384, 256), (256, 128), (96, 192), (192, 384), (384, 768), (96, 97), (96, 193), (128, 128)]


@pytest.mark.parametrize("c_in,c_out", PAIRS)
def test_cfb_mapping_element_by_element(c_in, c_out):
    x = torch.randn(2, c_in, 2, 3, dtype=D)
    want = _cfb_rule(x, c_out)
    assert torch.allclose(channel_adaptive_bypass(x, c_out), want)
    tokens = x.flatten(2).transpose(1, 2)  # B x N x C
    assert torch.allclose(channel_adaptive_bypass(tokens, c_out, dim=-1), want.flatten(2).transpose(1, 2))
    y = torch.randn(2, c_out, 2, 3, dtype=D)
    assert torch.allclose(add_channel_adaptive_bypass_(y.clone(), x), y + want)


def test_cfb_named_examples():
    x = torch.arange(96, dtype=D).view(1, 96, 1, 1)
    out = channel_adaptive_bypass(x, 128).flatten()
    assert out[:96].tolist() == list(range(96))
    assert out[96].item() == (0 + 31 + 62) / 3  # merged channel 0 = mean of x_0, x_31, x_62
    assert out[127].item() == (93 + 94 + 95) / 3
    assert channel_adaptive_bypass(x, 97).flatten()[96].item() == 47.5  # C_out % C_in == 1: mean of all
    x = torch.arange(384, dtype=D).view(1, 384, 1, 1)
    out = channel_adaptive_bypass(x, 256).flatten()
    assert out[:255].tolist() == list(range(255)) and out[255].item() == sum(range(255, 384)) / 129


@pytest.mark.parametrize("c_in,c_out", [(4, 12), (12, 4), (6, 8), (6, 7), (5, 5), (3, 13)])
def test_cfb_gradcheck_both_layouts(c_in, c_out):
    x = torch.randn(2, c_in, 3, 2, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: channel_adaptive_bypass(t, c_out), (x,))
    t = torch.randn(2, 4, c_in, dtype=D, requires_grad=True)
    y = torch.randn(2, 4, c_out, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y, t: add_channel_adaptive_bypass_(y * 1, t, dim=-1), (y, t))


def test_add_bypass_rejects_other_resolution():
    with pytest.raises(ValueError, match="resampling bypass"):
        add_channel_adaptive_bypass_(torch.zeros(1, 4, 3, 3), torch.zeros(1, 4, 6, 6))


@pytest.mark.parametrize("transposed,stride,groups,bias", [(False, 1, 1, False), (False, 2, 2, True),
                                                          (True, 2, 1, True), (True, 1, 2, False)])
def test_fused_dab_conv_equals_composition(transposed, stride, groups, bias):
    torch.manual_seed(2)
    x = torch.randn(2, 4, 6, 6, dtype=D, requires_grad=True)
    k, b, a = (torch.randn(1, 4, 1, 1, dtype=D).requires_grad_() for _ in range(3))
    w_shape = (4, 6 // groups, 3, 3) if transposed else (6, 4 // groups, 3, 3)
    w = (torch.randn(w_shape, dtype=D) * 0.8).requires_grad_()
    bias_t = torch.randn(6, dtype=D, requires_grad=True) if bias else None
    conv = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
    want = conv(_dab_reference(x, k, b, a, (2, 3)), binarize_weight(w), bias_t, stride, 1, groups=groups)
    got = dab_conv2d(x, k, b, a, w, bias_t, (stride, stride), (1, 1), (1, 1), groups, transposed)
    assert torch.allclose(got, want)
    inputs = [x, k, b, a, w] + ([bias_t] if bias else [])
    g = torch.randn_like(want)
    for p, q in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(want, inputs, g), strict=True):
        assert torch.allclose(p, q)


@pytest.mark.parametrize("block", [1, 80, 1 << 20])
def test_fused_dab_conv_blocked_passes(monkeypatch, block):
    """The PyTorch passes (where the native kernels do not run) go in blocks of (sample, channel) rows; any
    block size (one row, a ragged last block, everything at once) gives the same values and gradients."""
    import binary.functional as fn

    monkeypatch.setattr(fn.native, "usable", lambda *tensors: False)
    monkeypatch.setattr(fn, "_BLOCK_ELEMENTS", block)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # blocks of exactly `block` elements
    torch.manual_seed(3)
    x = torch.randn(3, 5, 4, 6, dtype=D, requires_grad=True)  # 15 rows of 24: blocks of 3 rows for 80
    k, b, a = (torch.randn(1, 5, 1, 1, dtype=D).requires_grad_() for _ in range(3))
    w = (torch.randn(7, 5, 3, 3, dtype=D) * 0.8).requires_grad_()
    want = torch.nn.functional.conv2d(_dab_reference(x, k, b, a, (2, 3)), binarize_weight(w), padding=1)
    got = dab_conv2d(x, k, b, a, w, None, (1, 1), (1, 1))
    assert torch.allclose(got, want)
    g = torch.randn_like(want)
    for p, q in zip(torch.autograd.grad(got, [x, k, b, a, w], g), torch.autograd.grad(want, [x, k, b, a, w], g),
                    strict=True):
        assert torch.allclose(p, q)


def test_chained_fused_convs_share_the_workspace_safely():
    """The fused units build (forward) and rebuild (backward) their binary input and weight in a per-thread
    workspace, one buffer each that grows to the largest seen. A call under inference mode (the largest input
    here, so its buffer is the one reused), then two chained units of different sizes: they give the values and
    gradients of the unfused composition, and the workspace holds one input buffer, not an inference tensor, and
    one weight buffer of the larger weight."""
    import binary.functional as fn

    fn._WORKSPACE.buffers.clear()
    torch.manual_seed(4)
    k1, b1, a1 = (torch.randn(1, 4, 1, 1, dtype=D).requires_grad_() for _ in range(3))
    k2, b2, a2 = (torch.randn(1, 9, 1, 1, dtype=D).requires_grad_() for _ in range(3))
    w1 = (torch.randn(9, 4, 3, 3, dtype=D) * 0.8).requires_grad_()
    w2 = (torch.randn(5, 9, 1, 1, dtype=D) * 0.8).requires_grad_()
    x = torch.randn(2, 4, 6, 6, dtype=D, requires_grad=True)
    with torch.inference_mode():
        dab_conv2d(x.detach().repeat(5, 1, 1, 1), k1, b1, a1, w1, None, (1, 1), (1, 1))
    h = dab_conv2d(x, k1, b1, a1, w1, None, (1, 1), (1, 1))
    got = dab_conv2d(h, k2, b2, a2, w2)
    ref_h = torch.nn.functional.conv2d(_dab_reference(x, k1, b1, a1, (2, 3)), binarize_weight(w1), padding=1)
    want = torch.nn.functional.conv2d(_dab_reference(ref_h, k2, b2, a2, (2, 3)), binarize_weight(w2))
    assert torch.allclose(got, want)
    inputs = [x, k1, b1, a1, w1, k2, b2, a2, w2]
    g = torch.randn_like(want)
    for p, q in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(want, inputs, g), strict=True):
        assert torch.allclose(p, q)
    cpu = torch.device("cpu")
    assert set(fn._WORKSPACE.buffers) == {("input", D, cpu), ("weight", D, cpu)}
    buffer = fn._WORKSPACE.buffers["input", D, cpu]
    assert buffer.numel() == 5 * x.numel() > h.numel() and not buffer.is_inference()
    assert fn._WORKSPACE.buffers["weight", D, cpu].numel() == max(w1.numel(), w2.numel())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_weight_gradient_clip_includes_the_boundary_in_every_dtype(dtype):
    """The fused units' clipped STE on the weights, ``g * 1[|w| <= 1]``, at and just beyond |w| = 1."""
    from binary.functional import _clip_grad_

    one = torch.ones((), dtype=dtype)
    above = torch.nextafter(one, 2 * one)
    w = torch.stack([-above, -one, -0.5 * one, 0 * one, one, above, 3 * one])
    grad = torch.arange(1, 8, dtype=dtype)
    want = grad * (w.abs() <= 1)
    got = _clip_grad_(grad.clone(), w)
    assert torch.equal(got, want)
    assert got.tolist() == [0, 2, 3, 4, 5, 0, 0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel,stride,padding,size", [(2, 2, 0, 8), (4, 4, 0, 12), (3, 2, 1, 9), (2, 2, 0, 7)])
def test_avg_pool_bypass_is_avg_pool2d_bit_for_bit(dtype, kernel, stride, padding, size):
    """The strided units' bypass resampling: the tiling case (strided adds) and the others (avg_pool2d itself)
    give avg_pool2d's values and gradients exactly."""
    from binary.functional import avg_pool_bypass

    torch.manual_seed(8)
    x = torch.randn(2, 3, size, size + 2 * stride, dtype=dtype, requires_grad=True)
    want = torch.nn.functional.avg_pool2d(x, kernel, stride, padding)
    got = avg_pool_bypass(x, kernel, stride, padding)
    assert got.shape == want.shape and torch.equal(got, want)
    g = torch.randn_like(want)
    assert torch.equal(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])
