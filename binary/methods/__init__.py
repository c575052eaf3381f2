"""The binarization methods, one module each; importing this package registers every one of them (each module's
`register` decorators run on import).  Adding a method is one module plus one name in the import below."""

from binary.methods import adabin, bibert, bidense, bisrnet, bit, bivit, bnn, float, react  # noqa: F401
from binary.methods.base import Method
from binary.methods.registry import get_method, list_methods, register

__all__ = ["Method", "get_method", "list_methods", "register"]
