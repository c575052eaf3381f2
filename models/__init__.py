"""Dense-prediction models by name: `build_model(task, model_type, binary_type, **kwargs)`, `list_models()`.

Each architecture is defined once; ``binary_type`` names the binarization method (`binary.get_method`) that
supplies its layers.  A model type is one entry of `_MODELS`: its builder and the ``binary_type`` names it is
defined for, which each model module declares next to its builder (``SUPPORTED_BINARY_TYPES``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from binary import get_method, list_methods
from models import dpt, upernet

TASKS = ("depth", "segmentation")

# model_type -> (builder(task, method, **kwargs), the binary_type names it is defined for)
_MODELS: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "upernet": (upernet.build_upernet, upernet.SUPPORTED_BINARY_TYPES),
    "dpt": (dpt.build_dpt, dpt.SUPPORTED_BINARY_TYPES),
}


def list_models() -> list[str]:
    """Names of every model type, sorted."""
    return sorted(_MODELS)


def supported_methods(model_type: str) -> list[str]:
    """The registered ``binary_type`` names that ``model_type`` can be built with, sorted."""
    _check_model_type(model_type)
    declared = _MODELS[model_type][1]
    return [binary_type for binary_type in list_methods() if binary_type in declared]


def build_model(task: str, model_type: str, binary_type: str, **kwargs: object) -> nn.Module:
    """Build ``model_type`` for ``task`` with the layers of the method ``binary_type``.

    Keyword arguments go to the model's builder: ``num_classes`` (segmentation), ``max_depth`` (depth),
    ``pretrained`` (`models.pretrained.resolve_pretrained`): None or "" for none, True for the standard ImageNet /
    DINOv2 weights of the `fp32` models (downloaded once into torch.hub's cache; ignored by the models trained
    from scratch), or a local checkpoint path.

    Raises:
        ValueError: unknown task or model type, or a method the model type is not defined for (each names the
            valid choices).
        KeyError: unknown method (names the registered ones).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    _check_model_type(model_type)
    method = get_method(binary_type)
    allowed = supported_methods(model_type)
    if binary_type not in allowed:
        raise ValueError(
            f"model {model_type!r} is not defined for method {binary_type!r}; available: {', '.join(allowed)}"
        )
    return _MODELS[model_type][0](task, method, **kwargs)


def _check_model_type(model_type: str) -> None:
    if model_type not in _MODELS:
        raise ValueError(f"unknown model {model_type!r}; available: {', '.join(list_models())}")


__all__ = ["TASKS", "build_model", "list_models", "supported_methods"]
