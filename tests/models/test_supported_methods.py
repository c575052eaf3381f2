"""models: each model type declares its methods next to its builder; `supported_methods`, `build_model` and
`list_models` read those declarations."""

import pytest

import models
from binary import list_methods
from models import dpt, upernet

DECLARED = {"upernet": upernet.SUPPORTED_BINARY_TYPES, "dpt": dpt.SUPPORTED_BINARY_TYPES}


def test_list_models():
    assert models.list_models() == sorted(DECLARED)


@pytest.mark.parametrize("model_type", sorted(DECLARED))
def test_supported_methods_are_the_declared_ones_and_all_registered(model_type):
    declared = DECLARED[model_type]
    assert len(declared) == len(set(declared))
    assert set(declared) <= set(list_methods())
    assert models.supported_methods(model_type) == sorted(declared)


def test_vit_baselines_only_on_dpt():
    for binary_type in ("bibert", "bit", "bivit"):
        assert binary_type in models.supported_methods("dpt")
        assert binary_type not in models.supported_methods("upernet")
        with pytest.raises(ValueError, match=f"'upernet' is not defined for method '{binary_type}'"):
            models.build_model("segmentation", "upernet", binary_type, num_classes=3)


def test_unknown_names_fail_with_the_choices():
    with pytest.raises(ValueError, match="unknown model 'segnet'; available: dpt, upernet"):
        models.supported_methods("segnet")
    with pytest.raises(ValueError, match="unknown task 'flow'"):
        models.build_model("flow", "upernet", "bidense")
    with pytest.raises(KeyError, match="unknown binarization method 'xnor'"):
        models.build_model("segmentation", "upernet", "xnor", num_classes=3)
