"""Fixtures of the binary tests: the native kernels on one and on two threads."""

from __future__ import annotations

import pytest
import torch

from binary import native


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request, monkeypatch: pytest.MonkeyPatch) -> int:
    """The kernels on one and on two threads, however small the tensor; skips where they cannot be built."""
    if native.library() is None:
        pytest.skip("no C compiler with OpenMP here")
    monkeypatch.setattr(native, "_MIN_PARALLEL", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: request.param)
    return request.param
