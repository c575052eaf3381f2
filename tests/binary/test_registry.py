import pytest
import torch

import binary


def test_unknown_method_lists_valid_names():
    with pytest.raises(KeyError) as err:
        binary.get_method("xnor++")
    for name in ("fp32", "fp32_0"):
        assert name in str(err.value)


def test_float_mirror_conv_unit_is_conv_then_bn():
    unit = binary.get_method("fp32_0").conv(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 9, 9)
    conv, bn = unit[0], unit[1]
    assert torch.allclose(unit(x), bn(conv(x)))
    assert unit(x).shape == (2, 6, 9, 9)
