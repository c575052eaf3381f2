"""Counting the binary and full-precision work of a model: the `BinaryLayer` marker, MACs from layer shapes, and
the per-layer rows one forward pass collects (`count_layers`); `binary.report` turns them into totals.

`BinaryLayer` tags a module whose ``weight`` is stored as 1 bit and whose multiply-accumulates run on 1-bit
operands (XNOR/popcount): such a module's ``weight`` counts as ``numel / 32`` parameters and its MACs as
``MACs / 64`` OPs (the Params / OPs of arXiv 2411.10346, Table 1; the convention is stated in the README,
"Training and evaluation", Parameters and OPs).

* Params run over ``model.state_dict()``: BatchNorm running statistics and ``num_batches_tracked`` count, and a
  module registered under several names (the shared FPN smooth conv) counts once per name.  A weight is 1-bit
  when it is the ``weight`` of a `BinaryLayer` module; every other entry is 32-bit.
* MACs follow thop (bias adds nothing) and are counted from one forward pass, every time a module runs:
  convolution ``out_numel * in_channels / groups * prod(kernel_size)``, transposed convolution
  ``in_numel * out_channels / groups * prod(kernel_size)`` (each input element meets every weight of its
  group), linear ``out_numel * in_features``, all for the given input shape, batch included.  A
  `BinaryLayer`'s MACs are binary.  Any module may define ``binary_macs(input, output) -> int`` (``input`` is
  its first positional argument): it then owns every MAC of its call (a fused unit that runs its conv's weights
  without calling the conv module), and hooks of the modules called inside it count nothing.  Otherwise conv /
  linear children are counted by their own hooks.  Matrix products outside such modules (attention scores)
  and elementwise work (norms, activations) are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import torch
from torch import nn

_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


class BinaryLayer:
    """Mixin for a conv / transposed conv / linear module whose weight and input are binary.

    The module must be an ``nn.Conv2d``, ``nn.ConvTranspose2d`` or ``nn.Linear`` subclass (so the
    counting can take its MACs from its shape) or define ``binary_macs(input, output) -> int``.
    """

    weight_bits: int = 1


def shape_macs(module: nn.Module, input: torch.Tensor, output: torch.Tensor) -> int:
    """MACs of one call of a conv / transposed conv / linear ``module`` from its input and output shapes (thop
    convention: bias adds nothing; batch included).

    Convolution ``out_numel * in_channels / groups * prod(kernel_size)``; transposed convolution
    ``in_numel * out_channels / groups * prod(kernel_size)`` (each input element meets every weight of its group);
    linear ``out_numel * in_features``.
    """
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return input.numel() * module.out_channels // module.groups * prod(module.kernel_size)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return output.numel() * module.in_channels // module.groups * prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    raise TypeError(f"shape_macs: {type(module).__name__} is not a conv, transposed conv or linear module")


@dataclass
class LayerRow:
    """One module's line of the table.

    Params are this module's own state-dict entries under every name it is registered under (so the rows
    sum to the totals); MACs are summed over its ``calls`` runs in the forward pass.
    """

    name: str
    cls: str
    binary_params: int = 0
    float_params: int = 0
    float_macs: int = 0
    binary_macs: int = 0
    calls: int = 0
    names: list[str] = field(default_factory=list)


def binary_weight_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the 1-bit weights: the ``weight`` of every `BinaryLayer` module, under every name."""
    return {
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules(remove_duplicate=False)
        if isinstance(module, BinaryLayer) and isinstance(getattr(module, "weight", None), torch.Tensor)
    }


def _first_tensor(value: object) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((t for t in map(_first_tensor, value) if t is not None), None)
    return None


def _owner(key: str, modules: dict[str, nn.Module]) -> str:
    """Qualified name of the module that holds the state-dict entry ``key`` (root is "")."""
    prefix = key.rpartition(".")[0]
    while prefix not in modules:
        prefix = prefix.rpartition(".")[0]
    return prefix


def _count_params(model: nn.Module, rows: dict[int, LayerRow], all_names: dict[str, nn.Module]) -> None:
    """Add every state-dict entry to the row of the module that holds it, as 1-bit or 32-bit."""
    binary_keys = binary_weight_keys(model)
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue
        row = rows[id(all_names[_owner(key, all_names)])]
        if key in binary_keys:
            row.binary_params += value.numel()
        else:
            row.float_params += value.numel()


def _count_macs(model: nn.Module, rows: dict[int, LayerRow], all_names: dict[str, nn.Module],
                input_shape: tuple[int, ...]) -> None:
    """Run ``model`` once on ``torch.randn(input_shape)`` (eval mode, no gradients; the training flags are restored
    afterwards) with hooks that add each call's MACs to its module's row."""
    owners_running = [0]  # depth of calls of modules that define binary_macs (they own the MACs inside)

    def pre_hook(module: nn.Module, inputs: tuple) -> None:
        if hasattr(module, "binary_macs"):
            owners_running[0] += 1

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        row = rows[id(module)]
        row.calls += 1
        binary = isinstance(module, BinaryLayer)
        if hasattr(module, "binary_macs"):
            owners_running[0] -= 1
            if not owners_running[0]:
                row.binary_macs += int(module.binary_macs(inputs[0] if inputs else None, output))
        elif owners_running[0]:
            return
        elif isinstance(module, _COUNTED):
            macs = shape_macs(module, inputs[0], _first_tensor(output))
            if binary:
                row.binary_macs += macs
            else:
                row.float_macs += macs
        elif binary:
            raise TypeError(
                f"binary.summary: BinaryLayer {row.name!r} ({row.cls}) is not a conv/linear module "
                "and defines no binary_macs(input, output)"
            )

    modes = {module: module.training for module in all_names.values()}
    handles = [module.register_forward_hook(hook) for module in modes]
    handles += [module.register_forward_pre_hook(pre_hook) for module in modes]
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    x = torch.randn(
        *input_shape,
        device=first.device if first is not None else None,
        dtype=first.dtype if first is not None else None,
    )
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training


def count_layers(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> list[LayerRow]:
    """Per-layer rows of ``model``: its state-dict entries by precision, and the MACs by precision of one forward
    pass on ``torch.randn(input_shape)`` (conventions in the module docstring).

    Returns one `LayerRow` per module that owns state-dict entries or is a conv / linear / binary layer, in
    ``named_modules`` order.

    Raises:
        TypeError: a `BinaryLayer` that is neither a conv / linear module nor defines ``binary_macs`` ran.
    """
    all_names: dict[str, nn.Module] = dict(model.named_modules(remove_duplicate=False))
    rows: dict[int, LayerRow] = {}
    for name, module in model.named_modules():
        rows[id(module)] = LayerRow(name=name, cls=type(module).__name__)
    for name, module in all_names.items():
        rows[id(module)].names.append(name)
    _count_params(model, rows, all_names)
    _count_macs(model, rows, all_names, tuple(input_shape))
    return [
        row
        for _, module in model.named_modules()
        if (row := rows[id(module)]).binary_params
        or row.float_params
        or isinstance(module, _COUNTED + (BinaryLayer,))
        or hasattr(module, "binary_macs")
    ]
