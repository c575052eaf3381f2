"""Suite-wide: no test touches the network.  torch.hub's download is replaced by one that fails, and its cache
folder is a per-test temporary one, so the standard pretrained weights (`models.pretrained`) are never fetched
nor read from the user's cache. The native DAB kernels are built once per session into a temporary folder, not
the user's cache (the scripts the tests start inherit it). Under pytest-xdist (the default, two workers) each
worker gives PyTorch its share of the cores, so that the workers do not oversubscribe them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(autouse=True, scope="session")
def _native_kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BIDENSE_CACHE_DIR", str(tmp_path_factory.mktemp("bidense_cache")))
        yield


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    def refuse(url: str, *args: object, **kwargs: object) -> None:
        raise OSError(f"network disabled in tests: {url}")

    hub = tmp_path_factory.mktemp("torch_hub")
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
