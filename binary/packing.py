"""Packed 1-bit storage of a model's state: `pack_state(model) -> dict`, `unpack_state(packed) -> state dict`.

Every binary layer's latent float weight W (the ``weight`` of a `binary.counting.BinaryLayer`) is stored as its
signs, 8 per byte, plus the few floats per output channel that its weight binarizer needs; every other state-dict
entry (float parameters and buffers, integer and bool buffers) is stored as it is. Unpacking rebuilds a latent
weight ``L`` whose binarization equals that of W bit for bit (float32), so a model loaded from the unpacked state
computes what the original computes (README, "Packed 1-bit checkpoints").

The forward pass never reads W itself, only its binarization, which each method computes from W (BiDense,
arXiv 2411.10346, binarizes weights as its released code does: `binary.functional.binarize_weight`, XNOR-Net's
scale; the baselines as in `binary.methods`). One codec per binarizer, rows being the slices along dim 0 (output
channels; input channels of a transposed conv, as its scale is taken):

* ``sign_mean_abs`` (BiDense, ReActNet, BiSRNet): ``sign(W) * mean|W_row|``. Stored: signs, ``gamma`` per row.
* ``sign`` (BNN): ``sign(W)``. Stored: signs.
* ``centred_sign_mean_abs`` (BiViT, BiBERT; BiT with ``whole`` = the whole tensor as one row):
  ``sign(W - mean W_row) * mean|W_row|``. Stored: the signs of ``W - mean W_row``, ``gamma = mean|W_row|``.
* ``centred_sign_centred_mean_abs`` (`binary.layers.BinaryWeightLinear`): ``sign(Wc) * mean|Wc_row|`` with
  ``Wc = W - mean W_row``. Stored: the signs of Wc, ``gamma = mean|Wc_row|``.
* ``adabin``: ``alpha sign((W - beta) / alpha) + beta`` with ``beta = mean W_row``, ``alpha = std W_row``.
  Stored: the signs of ``W - beta`` and four latent levels per row (see below).

Reconstruction. A row of ``n`` weights with signs ``s`` is rebuilt from an integer total ``K`` and the unit
``u = ulp(S)`` of the float32 sum ``S = K u`` with ``fl(S / n) = gamma`` (the sum then division of torch's CPU
mean; ``S`` is searched among the floats next to ``n * gamma``; the original weights' own sum is one). The row's
magnitudes are positive integers times ``u`` adding up to ``K``: every partial sum of magnitudes is then an
integer times ``u`` below ``2^24 u``, hence exact in float32 in any summation order, so ``mean|L_row|`` is
``gamma`` exactly. For the centred codecs the positive and the negative magnitudes each add up to half of ``K``
(``|sum L_row| <= u``), so the row mean is 0 or a fraction of an ulp that does not change a sign; for
``centred_sign_centred_mean_abs`` ``K`` must be even so that the row mean is exactly 0 and ``Lc = L`` (about
40% of random rows have no even ``K`` and are kept in float32; no shipped model has such a layer). AdaBin's
statistics are a mean and a standard deviation that no exact summation pins down: its row is rebuilt from two
levels ``a`` (positive signs) and ``b`` (negative signs) with mean beta and standard deviation alpha in exact
arithmetic, two of its elements shifted until this CPU's float32 binarization equals the original's
(`_adabin_levels`); four levels per row are stored. The AdaBin reconstruction thus depends on the summation order
of the CPU that packed it, where the other codecs hold in any order.

Every row is checked at packing time: the binarization of the rebuilt row must equal the original's (`torch.equal`
per row, on this CPU). A row that cannot be rebuilt (a zero sign, an odd ``K`` for the centred-centred codec, an
AdaBin row no nudge fits) is stored as float32 instead, and counted in the record (``float_rows``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from binary.counting import BinaryLayer
from binary.functional import binarize_weight, binarize_weight_centered, sign_ste
from binary.layers import (
    BinaryConv2d,
    BinaryConvTranspose2d,
    BinaryWeightConv2d,
    BinaryWeightConvTranspose2d,
    BinaryWeightLinear,
)
from binary.methods.adabin import adabin_weight
from binary.methods.bibert import BiBERTLinear, bibert_weight
from binary.methods.bit import BiTLinear, bwn_weight
from binary.transformer_layers import BiViTLinear

_SEARCH = 4  # floats tried on each side of n * gamma for the row sum S
_ADABIN_REACH = 4  # AdaBin search: shifts tried on each side, in steps of about half an ulp of beta / alpha


@dataclass(frozen=True)
class Codec:
    """How one weight binarizer is stored: ``binarize`` is the forward pass's W -> binary weight (used to check
    every rebuilt row); ``whole`` is True when its statistics run over the whole tensor (BiT), not per row;
    ``groups`` is AdaBin's divisor of a depthwise weight's variance (``groups * n``, `adabin_weight`)."""

    name: str
    binarize: Callable[[Tensor], Tensor]
    whole: bool = False
    groups: int = 1


SIGN_MEAN_ABS = Codec("sign_mean_abs", binarize_weight)
SIGN = Codec("sign", sign_ste)
CENTRED = Codec("centred_sign_mean_abs", bibert_weight)
CENTRED_WHOLE = Codec("centred_sign_mean_abs_whole", bwn_weight, whole=True)
CENTRED_CENTRED = Codec("centred_sign_centred_mean_abs", binarize_weight_centered)
ADABIN = Codec("adabin", adabin_weight)
CODECS = {c.name: c for c in (SIGN_MEAN_ABS, SIGN, CENTRED, CENTRED_WHOLE, CENTRED_CENTRED, ADABIN)}
_BY_FUNCTION: dict[Callable[[Tensor], Tensor], Codec] = {binarize_weight: SIGN_MEAN_ABS, sign_ste: SIGN,
                                                         adabin_weight: ADABIN}


def codec_of(module: nn.Module) -> Codec | None:
    """The codec of ``module``'s weight, None for a module without binary weights.

    Raises ValueError for a `BinaryLayer` whose weight binarizer has no codec (a new binarizer needs one here).
    """
    if isinstance(module, BinaryWeightConv2d | BinaryWeightConvTranspose2d):
        return SIGN_MEAN_ABS
    if isinstance(module, BinaryWeightLinear):
        return CENTRED_CENTRED
    if isinstance(module, BiViTLinear | BiBERTLinear):
        return CENTRED
    if isinstance(module, BiTLinear):
        return CENTRED_WHOLE
    if isinstance(module, BinaryConv2d | BinaryConvTranspose2d):
        binarizer = module.binarize_weight
        groups = binarizer.keywords.get("groups", 1) if isinstance(binarizer, partial) else 1
        codec = _BY_FUNCTION.get(binarizer.func if isinstance(binarizer, partial) else binarizer)
        if codec is None or (groups > 1 and codec is not ADABIN):
            raise ValueError(f"binary.packing: no codec for the weight binarizer "
                             f"{getattr(binarizer, '__name__', binarizer)!r} of {type(module).__name__}")
        return replace(codec, binarize=binarizer, groups=groups) if groups > 1 else codec
    if isinstance(module, BinaryLayer):
        raise ValueError(f"binary.packing: no codec for the binary layer {type(module).__name__}")
    return None


def pack_bits(mask: Tensor) -> Tensor:
    """A bool tensor as uint8, 8 elements per byte, most significant bit first (`numpy.packbits`)."""
    return torch.from_numpy(np.packbits(mask.reshape(-1).numpy()))


def unpack_bits(bits: Tensor, numel: int) -> Tensor:
    """The first ``numel`` bools packed by `pack_bits`."""
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=numel).astype(bool))


def _rows(w: Tensor, codec: Codec) -> Tensor:
    return w.reshape(1, -1) if codec.whole else w.reshape(w.shape[0], -1)


def _dims(w: Tensor, codec: Codec) -> tuple[int, ...]:
    """The dims the binarizer's statistics run over, as it writes them (same reduction, same float result)."""
    if codec.whole:
        return tuple(range(w.dim()))
    if codec in (CENTRED, CENTRED_CENTRED):
        return (w.dim() - 1,)
    return tuple(range(1, w.dim()))


def _signs(w: Tensor, codec: Codec) -> Tensor:
    """The sign in {-1, 0, 1} that the binarizer gives each weight (rows x n)."""
    dims = _dims(w, codec)
    if codec in (SIGN_MEAN_ABS, SIGN):
        return torch.sign(_rows(w, codec))
    centred = w - w.mean(dim=dims, keepdim=True)
    return torch.sign(_rows(centred, codec))


def _row_scale(w: Tensor, codec: Codec) -> Tensor:
    """gamma per row, computed as the binarizer computes it (torch's mean: sum, then division by n)."""
    dims = _dims(w, codec)
    if codec is CENTRED_CENTRED:
        w = w - w.mean(dim=dims, keepdim=True)
    return w.abs().mean(dim=dims).reshape(-1)


def _row_sums(gamma: Tensor, n: int, even: bool) -> tuple[Tensor, Tensor]:
    """(K, u) per row: float32 ``S = K u`` (``u = ulp(S)``, K an integer in [2^23, 2^24)) with ``fl(S / n) ==
    gamma``, the float nearest ``n * gamma`` first; ``even`` asks for an even K. K is -1 where none was found."""
    start = (gamma.double() * n).float()
    found_k = torch.full_like(gamma, -1.0, dtype=torch.float64)
    found_u = torch.zeros_like(found_k)
    up, down = start.clone(), start.clone()
    inf = torch.full_like(start, float("inf"))
    order = [start]
    for _ in range(_SEARCH):
        up, down = torch.nextafter(up, inf), torch.nextafter(down, -inf)
        order += [up, down]
    for s in order:
        mant, exp = torch.frexp(s)
        k = mant.double() * 2.0**24
        u = torch.pow(2.0, exp.double() - 24)
        ok = (s / n == gamma) & (gamma > 0) & torch.isfinite(s) & (found_k < 0)
        if even:
            ok &= k.remainder(2) == 0
        found_k = torch.where(ok, k, found_k)
        found_u = torch.where(ok, u, found_u)
    return found_k.long(), found_u


def _spread(index: Tensor, count: Tensor, total: Tensor, u: Tensor) -> Tensor:
    """Magnitudes for the elements with ``index`` 0, 1, ... of a group of ``count`` elements per row: integers
    adding up to ``total`` per row (``total // count`` each, one more for the first ``total % count``) times ``u``;
    exact in float32 (integers below 2^24 times a power of two)."""
    count = count.clamp(min=1)
    q, r = total // count, total % count
    low, high = (q * u).float()[:, None], ((q + 1) * u).float()[:, None]
    return torch.where(index < r[:, None], high, low)


def _rebuild_rows(codec: Codec, pos: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """(latent rows, rows that can be rebuilt) from the positive-sign mask (rows x n; the other signs negative)
    and the stored floats per row."""
    n_rows, n = pos.shape
    if codec is SIGN:
        return torch.where(pos, 1.0, -1.0), torch.ones(n_rows, dtype=torch.bool)
    if codec.name == ADABIN.name:
        return _adabin_rows(pos, scale), torch.ones(n_rows, dtype=torch.bool)
    k, u = _row_sums(scale, n, even=codec is CENTRED_CENTRED)
    if codec is SIGN_MEAN_ABS:
        magnitude = _spread(torch.arange(n), torch.full_like(k, n), k, u)
        return torch.where(pos, magnitude, -magnitude), (k >= n) & (k > 0)
    before = pos.to(torch.int32).cumsum(1, dtype=torch.int32)
    p = before[:, -1].long()
    half = k // 2
    up = _spread(before - 1, p, half, u)
    down = _spread(torch.arange(1, n + 1, dtype=torch.int32) - before - 1, n - p, k - half, u)
    fits = (half >= p) & (k - half >= n - p) & (p > 0) & (p < n) & (k > 0)
    return torch.where(pos, up, down.neg_()), fits


def _adabin_rows(pos: Tensor, levels: Tensor) -> Tensor:
    """AdaBin latent rows from the positive-sign mask and four levels per row: ``levels[:, 0]`` for the positive
    signs, ``levels[:, 1]`` for the negative ones, except the first positive (``levels[:, 2]``) and the first
    negative (``levels[:, 3]``) of the row."""
    latent = torch.where(pos, levels[:, :1], levels[:, 1:2])
    index = torch.arange(pos.shape[0])
    latent[index, pos.byte().argmax(1)] = levels[:, 2]
    latent[index, (~pos).byte().argmax(1)] = levels[:, 3]
    return latent


def _adabin_levels(codec: Codec, shape: torch.Size, pos: Tensor, target: Tensor) -> Tensor:
    """Four levels per row (`_adabin_rows`) whose AdaBin binarization (``codec.binarize``) on this CPU equals
    ``target`` (rows x n, the binary weight of a weight of ``shape`` with positive signs at ``pos``); NaN for a row
    none fits (a row without both signs, or a search that does not settle).

    Start: ``a = beta + s sqrt(m / p)`` for the p positive signs, ``b = beta - s sqrt(p / m)`` for the m negative
    ones (mean beta and standard deviation ``s = alpha sqrt(g)`` in exact arithmetic, g = ``codec.groups``), with
    ``beta +- alpha`` the row's two target binary values. The float32 rounding of a and b moves the row's
    statistics by many ulps, so the first positive and the first negative element are then shifted by ``x`` and
    ``y`` solving, to first order, ``x + y = n dbeta`` and ``sqrt(m / p) x - sqrt(p / m) y = sqrt(g) n dalpha``
    for the error (dbeta, dalpha) measured on this CPU (twice). Search: around that, shifts of ``tb d + ta d
    sqrt(g)`` and ``tb d - ta d sqrt(g)`` with ``d = n u / 4`` (u the finer ulp of the two target binary values),
    which move beta by about ``tb u / 2`` and alpha by about ``ta u / 2``; (tb, ta) run over ``[-R, R]^2`` (R =
    `_ADABIN_REACH`) nearest first, each row keeping the first that fits (the rounding of the row's sums makes the
    outcome non-monotonic in tb and ta, so the box is searched, not steered).
    """
    n_rows, n = target.shape
    neg = ~pos
    p, m = pos.sum(1, keepdim=True).double(), neg.sum(1, keepdim=True).double()
    index = torch.arange(n_rows)
    first_pos, first_neg = pos.float().argmax(1), neg.float().argmax(1)

    def evaluate(rows_pos: Tensor, levels: Tensor) -> Tensor:
        return _rows(codec.binarize(_adabin_rows(rows_pos, levels.float()).reshape(-1, *shape[1:])), codec)

    def statistics(out: Tensor) -> tuple[Tensor, Tensor]:
        hi, lo = out[index, first_pos].double().view(-1, 1), out[index, first_neg].double().view(-1, 1)
        return (hi + lo) / 2, (hi - lo) / 2

    hi, lo = target[index, first_pos], target[index, first_neg]
    beta, alpha = statistics(target)
    root_g = codec.groups**0.5
    a = (beta + alpha * root_g * (m / p).sqrt()).float().double()
    b = (beta - alpha * root_g * (p / m).sqrt()).float().double()
    x, y = torch.zeros_like(a), torch.zeros_like(a)
    for _ in range(2):
        got_beta, got_alpha = statistics(evaluate(pos, torch.cat([a, b, a + x, b + y], 1)))
        d_beta, d_alpha = beta - got_beta, alpha - got_alpha
        dx = (n * d_beta * (p / m).sqrt() + root_g * n * d_alpha) / ((m / p).sqrt() + (p / m).sqrt())
        x, y = torch.nan_to_num(x + dx), torch.nan_to_num(y + n * d_beta - dx)
    inf = torch.full_like(hi, float("inf"))
    ulp = torch.minimum(torch.nextafter(hi.abs(), inf) - hi.abs(), torch.nextafter(lo.abs(), inf) - lo.abs())
    d = (ulp.double() * n / 4).reshape(-1, 1)
    levels = torch.full((n_rows, 4), float("nan"))
    todo = (p > 0).view(-1) & (m > 0).view(-1)
    r = _ADABIN_REACH
    moves = sorted(((tb, ta) for tb in range(-r, r + 1) for ta in range(-r, r + 1)),
                   key=lambda move: (abs(move[0]) + abs(move[1]), move))
    for tb, ta in moves:
        live = todo.nonzero().view(-1)
        if live.numel() == 0:
            break
        shift_b, shift_a = tb * d[live], ta * d[live] * root_g
        cand = torch.cat([a[live], b[live], a[live] + x[live] + shift_b + shift_a,
                          b[live] + y[live] + shift_b - shift_a], 1).float()
        ok = (evaluate(pos[live], cand) == target[live]).all(1)
        levels[live[ok]] = cand[ok]
        todo[live[ok]] = False
    return levels


@torch.no_grad()
def pack_weight(w: Tensor, codec: Codec) -> dict:
    """One binary weight as a record: ``codec``, ``shape``, ``bits`` (signs > 0, `pack_bits`), ``scale`` (gamma
    per row; AdaBin: four levels per row; none for ``sign``), and ``float_rows`` / ``float_values``, the rows kept
    in float32 (see the module docstring). Raises ValueError for a weight that is not float32."""
    if w.dtype != torch.float32:
        raise ValueError(f"binary.packing: binary weights must be float32, got {w.dtype}")
    w = w.detach().cpu().contiguous()
    pos = _signs(w, codec) > 0
    target = _rows(codec.binarize(w), codec)
    record: dict = {"codec": codec.name, "shape": list(w.shape), "bits": pack_bits(pos)}
    if codec.name == ADABIN.name:
        scale = _adabin_levels(codec, w.shape, pos, target)
    elif codec is SIGN:
        scale = torch.zeros(pos.shape[0])
    else:
        scale = _row_scale(w, codec)
    latent, fits = _rebuild_rows(codec, pos, scale)
    # A zero sign (in {-1, 0, 1}) is stored as negative, so its row's binarization differs and is kept in float32.
    keep = ~(fits & (_rows(codec.binarize(latent.reshape(w.shape)), codec) == target).all(1))
    if codec is not SIGN:
        record["scale"] = torch.nan_to_num(scale, nan=0.0)
    record["float_rows"] = keep.nonzero().view(-1)
    record["float_values"] = _rows(w, codec)[keep].clone()
    return record


def unpack_weight(record: dict) -> Tensor:
    """The latent float32 weight of a `pack_weight` record."""
    codec = CODECS[record["codec"]]
    shape = torch.Size(record["shape"])
    numel = shape.numel()
    n_rows = 1 if codec.whole else shape[0]
    pos = unpack_bits(record["bits"], numel).view(n_rows, -1)
    latent, _ = _rebuild_rows(codec, pos, record.get("scale", torch.zeros(n_rows)))
    latent[record["float_rows"]] = record["float_values"]
    return latent.reshape(shape)


def binary_modules(model: nn.Module) -> dict[str, tuple[str, Codec]]:
    """State-dict key of every binary weight -> (the first key it is registered under, its codec). A module
    registered under several names (UPerNet's shared FPN smooth conv) is packed once."""
    first: dict[int, str] = {}
    out: dict[str, tuple[str, Codec]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        codec = codec_of(module)
        if codec is None:
            continue
        key = f"{name}.weight" if name else "weight"
        out[key] = (first.setdefault(id(module), key), codec)
    return out


def pack_state(model: nn.Module) -> dict:
    """``model``'s state dict with every binary weight packed: ``{"binary": {key: record}, "aliases": {key: first
    key}, "other": {key: tensor}}``; ``other`` holds every remaining entry as it is (one storage per shared
    tensor). Only tensors, strings, ints and lists: loadable with ``torch.load(weights_only=True)``."""
    state = model.state_dict()
    binary, aliases = {}, {}
    for key, (first, codec) in binary_modules(model).items():
        if key != first:
            aliases[key] = first
        elif key in state:
            binary[key] = pack_weight(state[key], codec)
    other, copies = {}, {}
    for key, tensor in state.items():
        if key in binary or key in aliases:
            continue
        ident = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if ident not in copies:
            copies[ident] = tensor.detach().cpu().clone()
        other[key] = copies[ident]
    return {"binary": binary, "aliases": aliases, "other": other}


def unpack_state(packed: dict) -> dict[str, Tensor]:
    """The state dict of a `pack_state` result: the binary weights rebuilt (`unpack_weight`), the rest as stored;
    ``model.load_state_dict(unpack_state(pack_state(model)))`` gives a model with the same binary weights."""
    state = dict(packed["other"])
    for key, record in packed["binary"].items():
        state[key] = unpack_weight(record)
    for key, first in packed["aliases"].items():
        state[key] = state[first]
    return state


def float_rows(packed: dict) -> tuple[int, int]:
    """(rows kept in float32, all rows) over the binary weights of a `pack_state` result."""
    kept = sum(int(r["float_rows"].numel()) for r in packed["binary"].values())
    total = sum(1 if CODECS[r["codec"]].whole else r["shape"][0] for r in packed["binary"].values())
    return kept, total
