"""Evaluation-mode cache of the tensors a binary layer derives from its parameters (its binary weight
``gamma * sign(W)`` and the like; arXiv 2411.10346, Sec. 3: the weights are binarized at every forward during
training, but are constant at inference).

A layer with the `EvalCache` mixin computes such a tensor once when it is first needed in eval mode and reuses it
while the tensor stays valid (README, "Speed": evaluation cache). It is recomputed when

* the module (or a parent) is switched with ``train()`` or ``eval()`` (both clear the cache);
* a source parameter changes: the key holds each parameter's identity, ``_version`` counter (bumped by every
  in-place write: an optimizer step, ``load_state_dict``, ``nn.init``), data pointer, dtype, device and shape;
* a different compute dtype is asked for (autocast).

The cache is used only where no gradient can flow to the parameters (eval mode and either grad mode off or the
parameters not requiring grad); in training, or in eval mode with gradients, the tensor is computed afresh, so
the cached and the uncached forward run the same operations and give bit-identical outputs. Writes through
``param.data`` bypass the version counter: call ``eval()`` again after them. Under ``torch.compile`` the cache is
not used (the compiler fuses the binarization itself). The cache is not part of the state dict and is not pickled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _key(sources: tuple[Tensor, ...], tag: object) -> tuple:
    return (tag, *((id(t), t._version, t.data_ptr(), t.dtype, t.device, t.shape) for t in sources))


class EvalCache:
    """Mixin for an ``nn.Module``: `eval_cached` returns a tensor computed from parameters once per eval phase."""

    def eval_cached(self, name: str, compute: Callable[[], Tensor], *sources: Tensor, tag: object = None) -> Tensor:
        """``compute()``, cached under ``name`` while the module is in eval mode and ``sources`` (the parameters it
        reads) are unchanged; ``tag`` adds to the key (e.g. the compute dtype). Computed without autograd history
        when cached, with it otherwise."""
        assert isinstance(self, nn.Module)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in sources)
        if self.training or needs_grad or torch.compiler.is_compiling():
            return compute()
        cache: dict[str, tuple[tuple, Tensor]] = self.__dict__.setdefault("_eval_cache", {})
        key = _key(sources, tag)
        hit = cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.inference_mode(False), torch.no_grad():
            value = compute()
        cache[name] = (key, value)
        return value

    def train(self, mode: bool = True):
        """``nn.Module.train``; also drops the cached tensors (``eval()`` calls it too)."""
        self.__dict__.pop("_eval_cache", None)
        return super().train(mode)  # type: ignore[misc]

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # type: ignore[misc]
        state = dict(state)
        state.pop("_eval_cache", None)
        return state
