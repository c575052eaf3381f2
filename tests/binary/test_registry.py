"""binary.methods: the registry (importing the package registers every method once) and the float mirror."""

import ast
import pkgutil
import sys
from pathlib import Path

import pytest
import torch

import binary


def test_unknown_method_lists_valid_names():
    with pytest.raises(KeyError) as err:
        binary.get_method("xnor++")
    for binary_type in ("fp32", "fp32_0"):
        assert binary_type in str(err.value)


def test_float_mirror_conv_unit_is_conv_then_bn():
    unit = binary.get_method("fp32_0").conv(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 9, 9)
    conv, bn = unit[0], unit[1]
    assert torch.allclose(unit(x), bn(conv(x)))
    assert unit(x).shape == (2, 6, 9, 9)


METHODS_DIR = Path(binary.methods.__file__).parent
SHARED_MODULES = {"__init__", "base", "registry"}


def _method_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules([str(METHODS_DIR)]) if info.name not in SHARED_MODULES)


def _registered_names(module: str) -> list[str]:
    """The ``@register("...")`` names in a method module's source."""
    tree = ast.parse((METHODS_DIR / f"{module}.py").read_text())
    return [
        deco.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for deco in node.decorator_list
        if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "register"
    ]


def test_importing_binary_registers_every_method_exactly_once():
    declared = [name for module in _method_modules() for name in _registered_names(module)]
    assert len(declared) == len(set(declared))
    assert binary.list_methods() == sorted(declared)
    for module in _method_modules():
        assert f"binary.methods.{module}" in sys.modules  # imported by the package, not on demand
    for binary_type in declared:
        method = binary.get_method(binary_type)
        assert isinstance(method, binary.Method) and method.binary_type == binary_type


def test_registering_a_taken_name_fails():
    with pytest.raises(ValueError, match="'react'"):
        binary.register("react")(type("Again", (binary.Method,), {}))
    assert binary.get_method("react").binary_type == "react"


def test_no_method_module_imports_another():
    methods = set(_method_modules())
    for module in methods:
        tree = ast.parse((METHODS_DIR / f"{module}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                if node.module == "binary.methods":
                    imported.update(f"binary.methods.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        assert not {f"binary.methods.{other}" for other in methods} & imported, module
