"""Markers shared by every binary layer of this package.

`BinaryLayer` tags a module whose ``weight`` is stored as 1 bit and whose multiply-accumulates run on
1-bit operands (XNOR/popcount).  `binary.summary` keys on it: such a module's ``weight`` counts as
``numel / 32`` parameters and its MACs as ``MACs / 64`` OPs (PAPER.md section 8.10).
"""

from __future__ import annotations


class BinaryLayer:
    """Mixin for a conv / transposed conv / linear module whose weight and input are binary.

    The module must be an ``nn.Conv2d``, ``nn.ConvTranspose2d`` or ``nn.Linear`` subclass (so the
    summary can count its MACs from its shape) or define ``binary_macs(input, output) -> int``.
    """

    weight_bits: int = 1
