"""Registry of binarization methods by name: `get_method(name)`, `list_methods()`, `register`."""

from __future__ import annotations

from collections.abc import Callable

from binary.methods.base import Method

_REGISTRY: dict[str, Callable[[], Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a `Method` subclass under ``name``."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY:
            raise ValueError(f"binarization method {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_methods() -> list[str]:
    """Names of every registered binarization method, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """A fresh `Method` instance for ``name``; an unknown name fails with the list of valid names."""
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown binarization method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def _load_builtin() -> None:
    """Import the modules that register the built-in methods (each registers itself on import)."""
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(f"binary.methods.{module}")


# One line per method module; adding a baseline is one module plus one entry here.
_BUILTIN_MODULES: tuple[str, ...] = (
    "float",
    "bidense",
    "react",
    "bivit",
    "bnn",
    "adabin",
    "bisrnet",
    "bibert",
    "bit",
)
