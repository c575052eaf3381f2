"""BiDense binarization library (Yin et al., arXiv 2411.10346): DAB, binary weights, CFB, BiDense layers,
the baseline binarizers, and the method registry that the models ask for layers."""

from binary.methods import get_method, list_methods, register
from binary.methods.base import Method
from binary.summary import summary

__all__ = ["Method", "get_method", "list_methods", "register", "summary"]
