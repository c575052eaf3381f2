"""binary.eval_cache: eval-mode outputs equal the uncached path bit for bit, and every way a weight can change
invalidates the cached binary weights."""

import copy
import pickle

import pytest
import torch
from torch import nn

import models
from binary import get_method
from binary.functional import bidense_conv_bn, binarize_weight, conv_weight
from binary.layers import BiDenseConv2d, BinaryWeightConv2d
from binary.transformer_layers import BiViTLinear

SIZES = {"upernet": 32, "dpt": 28}
CASES = [(model_type, method) for model_type in models.list_models() for method in models.supported_methods(model_type)]


def _cache_entries(model: nn.Module) -> int:
    return sum(len(m.__dict__.get("_eval_cache", {})) for m in model.modules())


@pytest.mark.parametrize("model_type,binary_type", CASES)
def test_cached_eval_forward_is_bit_identical_to_uncached(model_type, binary_type):
    """No-grad eval forwards (first fills the cache, second reads it) against the eval forward with autograd on,
    which never uses the cache."""
    torch.manual_seed(0)
    model = models.build_model("segmentation", model_type, binary_type, num_classes=5)
    x = torch.randn(2, 3, SIZES[model_type], SIZES[model_type])
    model.train()(x)  # running statistics, lazily initialised scales
    model.eval()
    with torch.no_grad():
        first = model(x)
        filled = _cache_entries(model)
        second = model(x)
    reference = model(x)
    assert reference.requires_grad
    assert torch.equal(first, reference) and torch.equal(second, reference)
    assert (filled > 0) == get_method(binary_type).binary
    with torch.inference_mode():
        assert torch.equal(model(x), reference)


def _unit_and_reference(seed: int = 1):
    torch.manual_seed(seed)
    unit = BiDenseConv2d(6, 10, 3, padding=1)
    for p in unit.parameters():
        nn.init.normal_(p, std=0.5)
    unit.train()(torch.randn(2, 6, 5, 5))
    return unit.eval()


def _uncached(unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        return unit(x).detach()


def _cached(unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return unit(x)


def test_cache_is_reused_while_nothing_changes():
    unit = _unit_and_reference()
    x = torch.randn(2, 6, 5, 5)
    _cached(unit, x)
    (entry,) = unit.conv._eval_cache.values()
    _cached(unit, x)
    assert unit.conv._eval_cache["fused_weight"] is entry
    w = unit.conv.weight
    assert torch.equal(entry[1], conv_weight(w))
    assert torch.allclose(entry[1], torch.sign(w) * w.abs().mean((1, 2, 3), keepdim=True), rtol=1e-6, atol=0)


def _step(unit: nn.Module) -> None:
    optimizer = torch.optim.AdamW(unit.parameters(), lr=0.5)
    unit.train()
    unit(torch.randn(2, 6, 5, 5)).square().sum().backward()
    optimizer.step()
    unit.eval()


def _step_in_eval(unit: nn.Module) -> None:
    optimizer = torch.optim.SGD([unit.conv.weight], lr=1.0)
    unit(torch.randn(2, 6, 5, 5)).square().sum().backward()  # eval mode, autograd on: uncached path
    optimizer.step()


def _load(unit: nn.Module) -> None:
    unit.load_state_dict(_unit_and_reference(seed=2).state_dict())


def _load_assign(unit: nn.Module) -> None:
    unit.load_state_dict(_unit_and_reference(seed=3).state_dict(), assign=True)


def _in_place(unit: nn.Module) -> None:
    with torch.no_grad():
        unit.conv.weight.neg_()


def _replace(unit: nn.Module) -> None:
    unit.conv.weight = nn.Parameter(torch.randn_like(unit.conv.weight))


def _data_then_eval(unit: nn.Module) -> None:
    unit.conv.weight.data.neg_()  # bypasses the version counter: eval() again refreshes
    unit.eval()


@pytest.mark.parametrize("change", [_step, _step_in_eval, _load, _load_assign, _in_place, _replace, _data_then_eval])
def test_every_weight_change_invalidates_the_cache(change):
    unit = _unit_and_reference()
    x = torch.randn(2, 6, 5, 5)
    before = _cached(unit, x)
    change(unit)
    after = _cached(unit, x)
    assert not torch.equal(after, before)
    assert torch.equal(after, _uncached(unit, x))


def test_train_clears_and_dtype_change_recomputes():
    unit = _unit_and_reference()
    x = torch.randn(2, 6, 5, 5)
    _cached(unit, x)
    unit.train()
    assert "_eval_cache" not in unit.conv.__dict__
    unit.eval()
    _cached(unit, x)
    unit.double()
    assert torch.equal(_cached(unit, x.double()), _uncached(unit, x.double()))


def test_cache_is_not_pickled_nor_in_state_dict():
    unit = _unit_and_reference()
    _cached(unit, torch.randn(2, 6, 5, 5))
    assert "_eval_cache" in unit.conv.__dict__
    assert all("cache" not in key for key in unit.state_dict())
    assert "_eval_cache" not in pickle.loads(pickle.dumps(unit)).conv.__dict__
    assert "_eval_cache" not in copy.deepcopy(unit).conv.__dict__


def test_learnable_scale_change_invalidates_vit_linear():
    torch.manual_seed(4)
    layer = BiViTLinear(8, 6).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        before = layer(x)
        layer.scale.mul_(2.0)
        after = layer(x)
    assert torch.allclose(after - layer.bias, 2 * (before - layer.bias))


def test_training_mode_and_gradients_never_use_the_cache():
    conv = BinaryWeightConv2d(4, 4, 3).eval()
    with torch.no_grad():
        conv(torch.randn(1, 4, 5, 5))
    y = conv(torch.randn(1, 4, 5, 5))
    y.sum().backward()
    assert conv.weight.grad is not None  # the cached constant would carry no gradient
    conv.train()
    with torch.no_grad():
        conv(torch.randn(1, 4, 5, 5))
    assert "_eval_cache" not in conv.__dict__
    assert torch.equal(conv.binary_weight(), binarize_weight(conv.weight))


def test_precomputed_weight_refused_where_gradients_are_needed():
    unit = _unit_and_reference()
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    d, c, n = unit.binarizer, unit.conv, unit.norm
    with pytest.raises(ValueError, match="binary_weight"):
        bidense_conv_bn(x, d.k, d.b, d.a, c.weight, None, n.weight, n.bias, n.running_mean, n.running_var, False,
                        0.1, n.eps, padding=(1, 1), binary_weight=c.fused_weight(torch.float32))
