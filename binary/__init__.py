"""BiDense binarization library (Yin et al., arXiv 2411.10346): DAB, binary weights, CFB, BiDense layers,
the baseline binarizers, and the method registry that the models ask for layers."""

from binary.functional import approx_sign, binarize_weight, channel_adaptive_bypass, dab, sign_ste
from binary.layers import DAB, BiDenseConv2d, BiDenseConvTranspose2d, BiDenseLinear, BypassDown, BypassUp
from binary.methods import Method, get_method, list_methods, register
from binary.report import summary

__all__ = [
    "DAB",
    "BiDenseConv2d",
    "BiDenseConvTranspose2d",
    "BiDenseLinear",
    "BypassDown",
    "BypassUp",
    "Method",
    "approx_sign",
    "binarize_weight",
    "channel_adaptive_bypass",
    "dab",
    "get_method",
    "list_methods",
    "register",
    "sign_ste",
    "summary",
]
