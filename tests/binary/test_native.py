"""binary.native: the DAB's native CPU kernels against the DAB equations written out here (arXiv 2411.10346,
Sec. 3.2) and against the PyTorch passes they replace; the fused units on both paths; building, caching, the
switch and the fallback."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import pytest
import torch

import binary.functional as fn
from binary import native
from binary.functional import bidense_conv_bn, binarize_weight, dab_conv2d

D = torch.float64


@pytest.fixture
def fresh_library():
    """`native.library` forgets the loaded library before and after the test."""
    native.library.cache_clear()
    yield
    native.library.cache_clear()


def _input(shape, dtype):
    """Random rows, the first one constant (there x == beta for k = 1, b = 0: sign 0)."""
    torch.manual_seed(5)
    x = torch.randn(shape, dtype=dtype)
    x[0, 0] = 0.25
    return x


def _params(c, dtype):
    k, b, a = torch.randn(1, c, 1, 1, dtype=dtype), 0.1 * torch.randn(1, c, 1, 1, dtype=dtype), \
        0.3 * torch.randn(1, c, 1, 1, dtype=dtype)
    k[0, 0], b[0, 0] = 1.0, 0.0
    return k, b, a


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 2, 1, 1), (1, 4, 16, 16), (2, 5, 33, 1)])
def test_kernels_follow_the_dab_equations(shape, dtype, tol, threads):
    n, c = shape[:2]
    x = _input(shape, dtype)
    k, b, a = _params(c, dtype)
    assert native.usable(x, k, b, a)
    out, mean, beta, alpha, mad = native.dab_forward(x, k, b, a, torch.empty_like(x))
    x64 = x.double()
    want_mean = x64.mean((2, 3), keepdim=True)
    want_beta = k.double() * want_mean + b.double()
    s = x64 - want_beta
    want_mad = s.abs().mean((2, 3), keepdim=True)
    want_alpha = torch.exp(a.double() * (want_mad - 1))
    for got, want in [(mean, want_mean), (beta, want_beta), (mad, want_mad), (alpha, want_alpha)]:
        assert got.shape == (n, c, 1, 1) and got.dtype == dtype
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    # the sign is taken against the kernel's own beta, so it is exact; ties give 0
    assert torch.equal(out, torch.sign(x - beta) * alpha)
    assert (out[0, 0] == 0).all()
    assert torch.equal(native.dab_binary_input(x, beta, alpha, torch.empty_like(x)), out)

    g = torch.randn(shape, dtype=dtype)
    gx, dot, per_stat = native.dab_backward(g.clone(), x, beta, alpha, sign_dot=True)
    s_own = x - beta
    assert torch.equal(gx, g * (s_own.abs() - 1).clamp(max=0) * (-2 * alpha))  # g * alpha * 2 * max(0, 1 - |s|)
    torch.testing.assert_close(dot.view(n, c).double(), (g * out).double().sum((2, 3)), rtol=tol, atol=tol)
    torch.testing.assert_close(per_stat.view(n, c).double(), gx.double().sum((2, 3)), rtol=tol, atol=tol)
    assert native.dab_backward(g.clone(), x, beta, alpha, sign_dot=False)[1] is None


@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-12, 1e-12), (torch.float32, 1e-5, 1e-5)])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("c_out", [6, 9, 4, 13, 2])  # CFB: one tile; tile + 3 merged; 4 merged; 2 tiles + 1; 2 merged
def test_fused_units_give_the_pytorch_passes_values_and_gradients(monkeypatch, dtype, rtol, atol, transposed, c_out,
                                                                   threads):
    """The whole BiDense unit (DAB, binary conv, BatchNorm, CFB) and the fused DAB conv, native (the bypass
    gradient added in the DAB backward's pass) against PyTorch: outputs, running statistics and every gradient."""
    torch.manual_seed(6)
    c_in = 6
    x = (torch.randn(3, c_in, 7, 9, dtype=dtype) * 1.5).requires_grad_()
    params = [t.requires_grad_() for t in _params(c_in, dtype)]
    w = (torch.randn((c_in, c_out, 1, 1) if transposed else (c_out, c_in, 1, 1), dtype=dtype) * 0.8)
    w.requires_grad_()
    bn_w, bn_b = torch.rand(c_out, dtype=dtype).requires_grad_(), torch.randn(c_out, dtype=dtype).requires_grad_()
    inputs = [x, *params, w, bn_w, bn_b]

    def run():
        stats = [torch.zeros(c_out, dtype=dtype), torch.ones(c_out, dtype=dtype)]
        y = bidense_conv_bn(x, *params, w, None, bn_w, bn_b, *stats, True, 0.1, 1e-5, transposed=transposed)
        z = dab_conv2d(x, *params, w, None, transposed=transposed)
        g = torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)
        return [y, z, *stats, *torch.autograd.grad((y * g).sum() + (z * g).sum(), inputs)]

    bypass_grads = []
    monkeypatch.setattr(native, "dab_backward", lambda *args, f=native.dab_backward: bypass_grads.append(
        args[5] is not None) or f(*args))
    with_kernels = run()
    assert sorted(bypass_grads) == [False, True]  # the unit with its bypass, the DAB conv without one
    monkeypatch.setattr(fn.native, "usable", lambda *tensors: False)
    without = run()
    for got, want in zip(with_kernels, without, strict=True):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def test_usable_only_for_what_the_kernels_take():
    if native.library() is None:
        pytest.skip("no C compiler with OpenMP here")
    x = torch.randn(2, 3, 4, 4)
    k = torch.randn(1, 3, 1, 1)
    assert native.usable(x, k) and native.usable(x.double(), k.double())
    assert not native.usable(x.bfloat16(), k.bfloat16())
    assert not native.usable(x, k.double())  # mixed dtypes: PyTorch promotes
    assert not native.usable(x.transpose(2, 3), k)  # not contiguous
    assert not native.usable(x, torch.randn(1, 1, 1, 1))  # not one value per channel
    assert not native.usable(torch.randn(2, 3, 4, 4, device="meta"), k)
    assert not native.usable(torch.randn(0, 3, 4, 4), k)  # an empty batch


def test_switch_turns_the_kernels_off_silently(monkeypatch, fresh_library):
    monkeypatch.setenv(native.SWITCH, "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is None
    assert not native.usable(torch.randn(2, 3, 4, 4))


def test_without_a_compiler_one_warning_and_the_pytorch_passes(monkeypatch, tmp_path, fresh_library):
    monkeypatch.setenv("BIDENSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.warns(RuntimeWarning, match="native CPU kernels are unavailable: .*no-such-cc"):
        assert native.library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert native.library() is None
    torch.manual_seed(7)
    x = torch.randn(2, 3, 4, 4, dtype=D, requires_grad=True)
    k, b, a = (t.requires_grad_() for t in _params(3, D))
    w = torch.randn(5, 3, 1, 1, dtype=D, requires_grad=True)
    want = torch.nn.functional.conv2d(fn.dab(x, k, b, a, (2, 3)), binarize_weight(w))
    torch.testing.assert_close(dab_conv2d(x, k, b, a, w), want)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_failed_build_names_the_compiler_error(monkeypatch, tmp_path, fresh_library):
    monkeypatch.setenv("BIDENSE_CACHE_DIR", str(tmp_path))
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    with pytest.warns(RuntimeWarning, match="could not build broken.c: .*error"):
        assert native.library() is None
    assert [p.name for p in tmp_path.iterdir()] == ["broken.c"]


def test_built_once_then_loaded_from_the_cache(monkeypatch, tmp_path, fresh_library):
    compiler = native._compiler() if native.library() is not None else pytest.skip("no C compiler here")
    monkeypatch.setenv("BIDENSE_CACHE_DIR", str(tmp_path))
    native.library.cache_clear()
    assert native.library() is not None
    built = list(tmp_path.iterdir())
    assert built == [native.library_path(compiler)] and built[0].parent == tmp_path

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(subprocess, "run", no_compiler)
    native.library.cache_clear()
    assert native.library() is not None
    # another CPU (a cache shared between cluster nodes) gets its own file
    monkeypatch.setattr(native, "_cpu_signature", lambda: "another CPU")
    assert native.library_path(compiler) != built[0]
    assert isinstance(native.cache_dir(), Path)
