"""Registry of binarization methods by their ``binary_type`` name (the config key ``MODEL.BINARY_TYPE``):
`register`, `get_method`, `list_methods`.

A method module registers its `Method` classes when it is imported; `binary.methods` imports every method module,
so importing `binary` registers every built-in method.
"""

from __future__ import annotations

from collections.abc import Callable

from binary.methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(binary_type: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a `Method` subclass under ``binary_type`` (stored as its ``binary_type``)."""

    def wrap(cls: type[Method]) -> type[Method]:
        if binary_type in _REGISTRY:
            raise ValueError(f"binarization method {binary_type!r} is registered twice")
        cls.binary_type = binary_type
        _REGISTRY[binary_type] = cls
        return cls

    return wrap


def list_methods() -> list[str]:
    """The ``binary_type`` of every registered binarization method, sorted."""
    return sorted(_REGISTRY)


def get_method(binary_type: str) -> Method:
    """A fresh `Method` instance for ``binary_type``; an unknown name fails with the list of valid names."""
    if binary_type not in _REGISTRY:
        raise KeyError(f"unknown binarization method {binary_type!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[binary_type]()
