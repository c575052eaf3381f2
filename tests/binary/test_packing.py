"""binary.packing: bit packing, exact latent reconstruction per weight binarizer, float rows, shared modules."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from binary.counting import BinaryLayer
from binary.functional import binarize_weight, sign_ste
from binary.layers import (
    BiDenseConv2d,
    BiDenseLinear,
    BinaryConv2d,
    BinaryConvTranspose2d,
    BinaryWeightConvTranspose2d,
    ShiftSign,
)
from binary.methods.adabin import AdaBinActivation, adabin_weight
from binary.methods.bibert import BiBERTLinear
from binary.methods.bit import BiTLinear
from binary.packing import (
    ADABIN,
    CENTRED,
    CENTRED_CENTRED,
    CENTRED_WHOLE,
    SIGN,
    SIGN_MEAN_ABS,
    codec_of,
    float_rows,
    pack_bits,
    pack_state,
    pack_weight,
    unpack_bits,
    unpack_state,
    unpack_weight,
)
from binary.transformer_layers import BiViTLinear


def test_bits_are_msb_first_and_round_trip():
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.bool)
    bits = pack_bits(mask)
    assert bits.dtype == torch.uint8 and bits.tolist() == [0b10110000, 0b10000000]
    assert torch.equal(unpack_bits(bits, 9), mask)
    big = torch.rand(1001) > 0.5
    assert pack_bits(big).numel() == 126 and torch.equal(unpack_bits(pack_bits(big), 1001), big)


def _reload(packed: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 37.0])
@pytest.mark.parametrize(("codec", "shape"), [
    (SIGN_MEAN_ABS, (48, 32, 3, 3)),
    (SIGN_MEAN_ABS, (32, 24, 2, 2)),  # a transposed-conv weight: rows are input channels
    (SIGN_MEAN_ABS, (40, 1, 7, 7)),  # depthwise
    (SIGN, (24, 16, 3, 3)),
    (CENTRED, (96, 384)),
    (CENTRED_WHOLE, (64, 192)),
    (ADABIN, (32, 48, 3, 3)),
])
def test_every_codec_rebuilds_the_binary_weight_exactly(codec, shape, scale):
    torch.manual_seed(0)
    w = torch.randn(shape) * scale + (0.2 * scale if codec is ADABIN else 0.0)
    record = _reload({"r": pack_weight(w, codec)})["r"]
    latent = unpack_weight(record)
    assert latent.dtype == torch.float32 and latent.shape == w.shape
    assert torch.equal(codec.binarize(latent), codec.binarize(w))
    rows = 1 if codec.whole else shape[0]
    assert record["bits"].numel() == -(-w.numel() // 8)
    if codec is not ADABIN:  # exact in any summation order: no row needs float32
        assert record["float_rows"].numel() == 0
    else:  # AdaBin: a few rows whose statistics the search does not reach are kept in float32
        assert record["float_rows"].numel() <= rows // 4
    if codec in (SIGN_MEAN_ABS, CENTRED, CENTRED_WHOLE):
        dims = tuple(range(w.dim())) if codec.whole else tuple(range(1, w.dim()))
        assert torch.equal(record["scale"], w.abs().mean(dims).reshape(-1))


def test_row_sums_are_exact_in_any_order():
    """|L_row| are integers times a power of two adding up to S: a sequential sum of any permutation is S and
    fl(S / n) is the row's mean|W|."""
    torch.manual_seed(1)
    w = torch.randn(8, 3000) * 0.01
    latent = unpack_weight(pack_weight(w, SIGN_MEAN_ABS))
    gamma = w.abs().mean(1)
    for row in range(8):
        mags = latent[row].abs()
        totals = {mags[torch.randperm(3000)].cumsum(0)[-1].item() for _ in range(5)}
        totals.add(mags.flip(0).cumsum(0)[-1].item())
        assert len(totals) == 1
        assert torch.tensor(totals.pop(), dtype=torch.float32) / 3000 == gamma[row]


def test_centred_rows_keep_their_signs_and_scale():
    torch.manual_seed(2)
    w = torch.randn(50, 384) * 0.02 + 0.01  # rows with a mean far from 0
    latent = unpack_weight(pack_weight(w, CENTRED))
    assert torch.equal(torch.sign(latent - latent.mean(1, keepdim=True)), torch.sign(w - w.mean(1, keepdim=True)))
    assert torch.equal(latent.abs().mean(1), w.abs().mean(1))


def test_centred_centred_rows_are_exact_and_odd_ones_kept_in_float32():
    torch.manual_seed(3)
    w = torch.randn(64, 384) * 0.01
    record = pack_weight(w, CENTRED_CENTRED)
    latent = unpack_weight(record)
    assert torch.equal(CENTRED_CENTRED.binarize(latent), CENTRED_CENTRED.binarize(w))
    kept = record["float_rows"]
    assert 0 < kept.numel() < 64  # rows whose sum S must be odd cannot have mean 0 exactly
    assert torch.equal(latent[kept], w[kept])
    rebuilt = torch.ones(64, dtype=torch.bool)
    rebuilt[kept] = False
    assert torch.equal(latent[rebuilt].mean(1), torch.zeros(int(rebuilt.sum())))


def test_a_zero_weight_keeps_its_row_in_float32():
    torch.manual_seed(4)
    w = torch.randn(6, 20)
    w[2, 5] = 0.0
    record = pack_weight(w, SIGN_MEAN_ABS)
    assert record["float_rows"].tolist() == [2]
    latent = unpack_weight(record)
    assert torch.equal(latent[2], w[2]) and torch.equal(binarize_weight(latent), binarize_weight(w))


def test_codec_of_each_binary_layer():
    relu = nn.ReLU()
    assert codec_of(relu) is None and codec_of(nn.Conv2d(2, 2, 1)) is None
    assert codec_of(BiDenseConv2d(4, 4, 3, padding=1).conv) is SIGN_MEAN_ABS
    assert codec_of(BinaryWeightConvTranspose2d(4, 4, 2, 2)) is SIGN_MEAN_ABS
    assert codec_of(BiDenseLinear(8, 8).linear) is CENTRED_CENTRED
    assert codec_of(BinaryConv2d(4, 4, 3, input_binarizer=relu, weight_binarizer=sign_ste)) is SIGN
    assert codec_of(BinaryConv2d(4, 4, 3, input_binarizer=relu, weight_binarizer=adabin_weight)) is ADABIN
    assert codec_of(BiViTLinear(8, 8)) is CENTRED and codec_of(BiBERTLinear(8, 8)) is CENTRED
    assert codec_of(BiTLinear(8, 8)) is CENTRED_WHOLE

    class Unknown(BinaryLayer, nn.Linear):
        pass

    with pytest.raises(ValueError, match="no codec for the binary layer Unknown"):
        codec_of(Unknown(2, 2))
    with pytest.raises(ValueError, match="no codec for the weight binarizer 'tanh'"):
        codec_of(BinaryConv2d(4, 4, 1, input_binarizer=relu, weight_binarizer=torch.tanh))


def _randomise(model: nn.Module) -> None:
    """Non-trivial float parameters and BatchNorm statistics, so every entry matters."""
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("weight") or p.dim() < 2:
                p.add_(torch.randn_like(p) * 0.1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(17)


LAYERS = {
    "bidense_conv": lambda: BiDenseConv2d(16, 24, 3, padding=1),
    "bidense_linear": lambda: BiDenseLinear(64, 96),
    "transposed": lambda: BinaryConvTranspose2d(16, 8, 2, 2, input_binarizer=ShiftSign(16),
                                                weight_binarizer=binarize_weight),
    "bnn": lambda: BinaryConv2d(16, 8, 3, padding=1, bias=True, input_binarizer=ShiftSign(16),
                                weight_binarizer=sign_ste),
    "adabin": lambda: BinaryConv2d(16, 8, 3, padding=1, input_binarizer=AdaBinActivation(),
                                   weight_binarizer=adabin_weight),
    "bivit_learnable": lambda: BiViTLinear(64, 32, learnable_scale=True),
    "bivit_mlp": lambda: BiViTLinear(64, 32, learnable_scale=False),
    "bibert": lambda: BiBERTLinear(64, 32),
    "bit": lambda: BiTLinear(64, 32),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_each_binary_layer_computes_the_same_after_unpacking(name):
    torch.manual_seed(6)
    layer = LAYERS[name]()
    _randomise(layer)
    layer.eval()
    packed = _reload(pack_state(layer))
    fresh = LAYERS[name]()
    fresh.load_state_dict(unpack_state(packed))
    fresh.eval()
    x = torch.randn(2, 16, 8, 8) if "linear" not in name and name not in ("bivit_learnable", "bivit_mlp", "bibert",
                                                                          "bit") else torch.randn(2, 10, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))
    assert packed["binary"] and all(isinstance(k, str) for k in packed["binary"])


def test_other_entries_keep_their_dtype_and_shared_modules_are_stored_once():
    shared = BiDenseConv2d(8, 8, 3, padding=1)
    model = nn.ModuleDict({"a": shared, "b": shared, "bit": BiTLinear(8, 8)})
    _randomise(model)
    packed = pack_state(model)
    assert list(packed["binary"]) == ["a.conv.weight", "bit.weight"]
    assert packed["aliases"] == {"b.conv.weight": "a.conv.weight"}
    other = packed["other"]
    assert other["a.norm.num_batches_tracked"].dtype == torch.int64
    assert other["bit.input_clip_val"].dtype == torch.float32
    assert other["a.binarizer.k"].data_ptr() == other["b.binarizer.k"].data_ptr()  # one storage in the file
    state = unpack_state(_reload(packed))
    assert set(state) == set(model.state_dict())
    assert torch.equal(state["a.norm.running_var"], model.state_dict()["a.norm.running_var"])
    assert float_rows(packed) == (0, 8 + 1)
