"""Dense-prediction models by name: `build_model(task, model_type, binary_type, **kwargs)`, `list_models()`.

Each architecture is defined once; ``binary_type`` names the binarization method (`binary.get_method`) that
supplies its layers.  A model type is one line of `_BUILDERS`; `_METHODS` restricts a model type to the
methods that define it (absent: every registered method).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from binary import Method, get_method, list_methods
from models.dpt import build_dpt
from models.upernet import build_upernet

TASKS = ("depth", "segmentation")

# model_type -> builder(task, method, **kwargs)
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "upernet": build_upernet,
    "dpt": build_dpt,
}

# model_type -> the methods it is defined for.  The ViT baselines (bibert, bit, bivit) binarize transformer
# layers only and have no UperNet-ConvNeXt model in the released code (PAPER.md 4).
_METHODS: dict[str, tuple[str, ...]] = {
    "upernet": ("fp32", "fp32_0", "bnn", "react", "adabin", "bisrnet", "cfb", "bidense"),
    "dpt": ("fp32", "fp32_0", "bibert", "bit", "bivit", "cfb", "bidense"),
}


def list_models() -> list[str]:
    """Names of every model type, sorted."""
    return sorted(_BUILDERS)


def supported_methods(model_type: str) -> list[str]:
    """The registered methods that ``model_type`` can be built with, sorted."""
    _check_model_type(model_type)
    allowed = _METHODS.get(model_type)
    return [name for name in list_methods() if allowed is None or name in allowed]


def build_model(task: str, model_type: str, binary_type: str, **kwargs: object) -> nn.Module:
    """Build ``model_type`` for ``task`` with the layers of method ``binary_type``.

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
    method: Method = get_method(binary_type)
    allowed = supported_methods(model_type)
    if binary_type not in allowed:
        raise ValueError(
            f"model {model_type!r} is not defined for method {binary_type!r}; available: {', '.join(allowed)}"
        )
    return _BUILDERS[model_type](task, method, **kwargs)


def _check_model_type(model_type: str) -> None:
    if model_type not in _BUILDERS:
        raise ValueError(f"unknown model {model_type!r}; available: {', '.join(list_models())}")


__all__ = ["TASKS", "build_model", "list_models", "supported_methods"]
