import pytest
import torch
from torch import nn

import binary
from binary.counting import BinaryLayer
from binary.layers import BinaryConv2d, BinaryConvTranspose2d, LearnableBias
from binary.transformer_layers import BiViTAttention, BiViTLinear, _ThresholdedAttention

# Inputs straddling the clip points of the STE: inside (-1, 1), outside, exactly 0 and exactly +-1.
X = torch.tensor([[0.5, -0.3, 1.5, -2.0, 0.0, 1.0], [-1.0, 0.9, -0.2, 3.0, 0.7, -0.6]])


def _weight():
    w = torch.tensor([[0.2, -0.1, 0.05, 0.3, -0.4, 0.1],
                      [-0.2, 0.6, 0.1, -0.05, 0.0, 0.3],
                      [2.5, 0.1, -0.3, 0.2, 0.1, -0.2]])  # row 2: 2.5 - mean > 1 is clipped
    return w


@pytest.mark.parametrize("learnable", [True, False])
def test_linear_forward_and_gradients_match_formulas(learnable):
    layer = BiViTLinear(6, 3, bias=True, learnable_scale=learnable)
    with torch.no_grad():
        layer.weight.copy_(_weight())
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = X.clone().requires_grad_(True)
    out = layer(x)
    g = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1]])
    out.backward(g)

    w = _weight()
    scale = w.abs().mean(1, keepdim=True)
    wc = w - w.mean(1, keepdim=True)
    wb = scale * torch.sign(wc)
    xb = torch.sign(X)
    assert torch.allclose(out, xb @ wb.T + torch.tensor([0.1, -0.2, 0.3]), atol=1e-6)
    # input: the authors' open clipped STE, gradient passes where |x| < 1 (0 included, +-1 excluded)
    assert torch.allclose(x.grad, (g @ wb) * (X.abs() < 1), atol=1e-6)
    assert x.grad[0, 5] == 0 and x.grad[1, 0] == 0  # x == 1 and x == -1
    # weight: d/dWc = (g^T sign(x)) * s * 1[|Wc| < 1], then through the row centring
    h = (g.T @ xb) * scale * (wc.abs() < 1)
    assert torch.allclose(layer.weight.grad, h - h.mean(1, keepdim=True), atol=1e-6)
    assert torch.allclose(layer.bias.grad, g.sum(0))
    if learnable:
        assert torch.allclose(layer.scale.detach(), scale)
        assert torch.allclose(layer.scale.grad, ((g.T @ xb) * torch.sign(wc)).sum(1, keepdim=True), atol=1e-6)
    else:
        assert not hasattr(layer, "scale")


def test_learnable_scale_follows_reinit_and_survives_state_dict():
    layer = BiViTLinear(6, 4)
    assert not torch.any(layer.scale)  # set at the first forward, after any re-initialisation
    assert layer.weight.abs().max() <= 0.015
    nn.init.normal_(layer.weight, std=0.5)
    layer(torch.randn(2, 6))
    assert torch.allclose(layer.scale.detach(), layer.weight.abs().mean(1, keepdim=True))
    with torch.no_grad():
        layer.scale.mul_(3.0)
    fresh = BiViTLinear(6, 4)
    fresh.load_state_dict(layer.state_dict())
    fresh(torch.randn(2, 6))
    assert torch.equal(fresh.scale, layer.scale)


def test_attention_forward_and_gradients_match_formulas():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4) * 1.5 for _ in range(3))
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = BiViTAttention(head_dim=4, num_heads=2)(qr, kr, vr)
    g = torch.randn_like(out)
    out.backward(g)

    scale = 4**-0.5
    a = torch.softmax(torch.sign(q) @ torch.sign(k).transpose(-2, -1) * scale, dim=-1)
    ab = (a >= 0.25 * a.max(dim=-1, keepdim=True).values).float()
    assert set(ab.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(out, ab @ torch.sign(v), atol=1e-6)
    # V: through the binary attention; Q, K: straight through the softmax Jacobian a * (dA - <dA, a>)
    assert torch.allclose(vr.grad, (ab.transpose(-2, -1) @ g) * (v.abs() < 1), atol=1e-5)
    da = g @ torch.sign(v).transpose(-2, -1)
    ds = a * (da - (da * a).sum(-1, keepdim=True)) * scale
    assert torch.allclose(qr.grad, (ds @ torch.sign(k)) * (q.abs() < 1), atol=1e-5)
    assert torch.allclose(kr.grad, (ds.transpose(-2, -1) @ torch.sign(q)) * (k.abs() < 1), atol=1e-5)


def _released_thresholded_attention(a: torch.Tensor, vb: torch.Tensor) -> torch.Tensor:
    """The authors' form: A + (1[A >= 0.25 max A] - A).detach(), then times V_b."""
    keep = a >= BiViTAttention.threshold * a.amax(-1, keepdim=True)
    return (a + (keep.to(a.dtype) - a).detach()) @ vb


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_thresholded_attention_equals_the_released_straight_through_sum(dtype):
    """``A_b @ V_b`` with A_b rebuilt in backward has the values and the gradients (of A and of V_b) of the released
    straight-through sum bit for bit, for softmax rows with many ties and tiny entries."""
    torch.manual_seed(0)
    logits = torch.cat([torch.randn(2, 3, 16, 16) * 4, torch.randint(-2, 3, (2, 3, 16, 16)).float()]).to(dtype)
    a = logits.softmax(-1)
    vb = torch.sign(torch.randn(4, 3, 16, 8)).to(dtype)
    g = torch.randn(4, 3, 16, 8).to(dtype)
    results = []
    for fn in (_released_thresholded_attention, lambda a, v: _ThresholdedAttention.apply(a, v, 0.25)):
        ar, vr = a.clone().requires_grad_(True), vb.clone().requires_grad_(True)
        out = fn(ar, vr)
        results.append((out.detach(), *torch.autograd.grad(out, (ar, vr), g)))
    assert all(torch.equal(x, y) for x, y in zip(*results, strict=True))
    kept_share = (a >= 0.25 * a.amax(-1, keepdim=True)).float().mean()
    assert 0 < kept_share < 1


def test_attention_saves_no_binary_attention_matrix():
    """Of the N x N tensors only the softmax output is kept for backward (the binary matrix is rebuilt)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 16, requires_grad=True) for _ in range(3))
    square = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.shape[-2:] == (40, 40):
            square.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = BiViTAttention(head_dim=16, num_heads=3)(q, k, v)
    assert len(square) == 1
    out.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v))


def test_attention_under_autocast_matches_the_released_form():
    """Under CPU bfloat16 autocast the products run in bfloat16, as autocast runs the released ``A_b @ V_b``: the
    same values and gradients."""
    torch.manual_seed(0)
    a = (torch.randn(2, 3, 24, 24) * 3).softmax(-1)
    v = torch.randn(2, 3, 24, 8).to(torch.bfloat16)
    results = []
    for fn in (_released_thresholded_attention, lambda a, v: _ThresholdedAttention.apply(a, v, 0.25)):
        ar, vr = a.clone().requires_grad_(True), torch.sign(v).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(ar, vr)
        assert out.dtype == torch.bfloat16
        results.append((out.detach(), *torch.autograd.grad(out.float().square().sum(), (ar, vr))))
    assert all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(*results, strict=True))


@pytest.mark.parametrize("head_dim, scales_queries", [(64, True), (16, True), (6, False), (48, False)])
def test_attention_scale_on_the_queries_is_bit_identical(head_dim, scales_queries):
    """With a power-of-two scale the module scales sign(Q) instead of the scores: outputs and the gradients of q, k
    and v equal those of the released order, scores = (sign(Q) sign(K)^T) * scale, bit for bit (float64)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 20, head_dim, dtype=torch.float64) * 0.8 for _ in range(3))
    module = BiViTAttention(head_dim=head_dim, num_heads=3)
    assert module.scale_queries is scales_queries

    def run(scale_queries: bool):
        module.scale_queries = scale_queries
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = module(*leaves)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        return out.detach(), [t.grad for t in leaves]

    (out_released, grads_released), (out_ours, grads_ours) = run(False), run(scales_queries)
    assert torch.equal(out_ours, out_released)
    assert all(torch.equal(a, b) for a, b in zip(grads_ours, grads_released, strict=True))
    assert grads_ours[0].abs().sum() > 0


def test_linear_on_binary_input_gets_no_input_gradient():
    """The input of ``proj`` is A_b V_b: entries exactly +-1 sit on the STE boundary, where the authors' quantizer
    passes no gradient (|x| < 1); a {-1, 1} input therefore gets none at all."""
    torch.manual_seed(0)
    layer = BiViTLinear(6, 3, learnable_scale=True)
    x = torch.sign(torch.randn(4, 6)).requires_grad_(True)
    out = layer(x)
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.equal(x.grad, torch.zeros_like(x))
    w = layer.weight.detach()
    wc = w - w.mean(1, keepdim=True)
    h = (g.T @ x.detach()) * layer.scale.detach() * (wc.abs() < 1)
    assert torch.allclose(layer.weight.grad, h - h.mean(1, keepdim=True), atol=1e-6)


def test_attention_on_unit_inputs_passes_no_gradient():
    """q, k, v exactly +-1 (the boundary) get no gradient, as the authors' qkv quantizer."""
    q = torch.sign(torch.randn(1, 2, 5, 4)).requires_grad_(True)
    out = BiViTAttention(head_dim=4, num_heads=2)(q, q, q)
    out.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q))


def test_bivit_method_layers():
    method = binary.get_method("bivit")
    assert method.binary and not method.bypass
    for role, learnable in (("qkv", True), ("proj", True), ("fc1", False), ("fc2", False)):
        layer = method.linear(8, 16, bias=False, role=role)
        assert isinstance(layer, BiViTLinear) and isinstance(layer, BinaryLayer)
        assert layer.learnable_scale is learnable and layer.bias is None
        assert layer(torch.randn(2, 3, 8)).shape == (2, 3, 16)
    assert isinstance(method.attention(4, 2), BiViTAttention)
    assert isinstance(method.vit_act(8), nn.GELU)
    # decoder, as the authors': RCU convs biased + BN; projections, layer_rn and the stride-2 resampling bare
    # bias-free binary convs; the x4 / x2 resamplings biased binary transposed convs; output_conv1 a biased float
    # conv, the segmentation head's 3x3 a bias-free float conv + BN, the depth head's a biased float conv
    unit = method.conv(8, 6, 3, padding=1, role="rcu", bias=True)
    assert isinstance(unit[0], BinaryConv2d) and unit[0].bias is not None
    assert isinstance(unit[1], nn.BatchNorm2d) and unit(torch.randn(2, 8, 5, 5)).shape == (2, 6, 5, 5)
    for role in ("project", "rn"):
        conv = method.conv(8, 6, 1, role=role)
        assert isinstance(conv, BinaryConv2d) and conv.bias is None
    out = method.conv(8, 6, 3, padding=1, role="out")
    assert type(out) is nn.Conv2d and out.bias is not None
    head = method.conv(8, 6, 3, padding=1, role="head")
    assert type(head[0]) is nn.Conv2d and head[0].bias is None and isinstance(head[1], nn.BatchNorm2d)
    assert method.float_head
    up = method.up(4, 4, 4)
    assert isinstance(up, BinaryConvTranspose2d) and up.bias is not None
    assert up(torch.randn(1, 4, 3, 3)).shape == (1, 4, 12, 12)
    down = method.down(4, 4, 3, 2, 1)
    assert isinstance(down, BinaryConv2d) and down.bias is None
    assert down(torch.randn(1, 4, 7, 7)).shape == (1, 4, 4, 4)
    assert isinstance(method.rcu_shift(4), LearnableBias) and isinstance(method.act(4, "rcu"), nn.ReLU)


def test_bivit_block_trains_end_to_end():
    torch.manual_seed(0)
    method = binary.get_method("bivit")
    dim, heads = 8, 2
    norm1, norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
    qkv, proj = method.linear(dim, 3 * dim, role="qkv"), method.linear(dim, dim, role="proj")
    fc1, act, fc2 = method.linear(dim, 4 * dim, role="fc1"), method.vit_act(4 * dim), method.linear(4 * dim, dim,
                                                                                                    role="fc2")
    attn = method.attention(dim // heads, heads)
    modules = nn.ModuleList([norm1, norm2, qkv, proj, fc1, fc2, attn])
    x = torch.randn(2, 7, dim)
    q, k, v = qkv(norm1(x)).reshape(2, 7, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    x = x + proj(attn(q, k, v).transpose(1, 2).reshape(2, 7, dim))
    x = x + fc2(act(fc1(norm2(x))))
    x.square().mean().backward()
    for name, p in modules.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
