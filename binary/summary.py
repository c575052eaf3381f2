"""Binary-aware model summary: per-layer 1-bit / 32-bit parameters and MACs by precision, and the paper's totals.

The counting convention is PAPER.md section 2 ("Params and OPs convention") as settled in section 8.10:

    Params = sum over 32-bit state-dict entries of numel + (1/32) * sum over 1-bit weights of numel
    OPs    = MACs_float + MACs_binary / 64

* Params run over ``model.state_dict()``: BatchNorm running statistics and ``num_batches_tracked`` count, and a
  module registered under several names (the shared FPN smooth conv) counts once per name.  A weight is 1-bit
  when it is the ``weight`` of a `binary.base.BinaryLayer` module; every other entry is 32-bit (the strict
  count, ``params``).  The authors' count (``params_paper``) of a model with binary weights also divides the
  ``weight`` of their final full-precision classifier by 32 (it sits in their list of binary keys); that quirk
  reproduces Table 1.  A float model's authors' count equals its strict count.
* MACs follow thop (bias adds nothing) and are counted from one forward pass, every time a module runs:
  convolution ``out_numel * in_channels / groups * prod(kernel_size)``, transposed convolution
  ``in_numel * out_channels / groups * prod(kernel_size)`` (each input element meets every weight of its
  group), linear ``out_numel * in_features``, all for the given input shape, batch included.  A
  `BinaryLayer`'s MACs are binary.  Any module may define ``binary_macs(input, output) -> int`` (``input`` is
  its first positional argument): it then owns every MAC of its call (a fused unit that runs its conv's weights
  without calling the conv module), and hooks of the modules called inside it count nothing.  Otherwise conv /
  linear children are counted by their own hooks.  Matrix products outside such modules (attention scores)
  and elementwise work (norms, activations) are not counted.
* Memory packs 1-bit weights (numel / 8 bytes) and stores every other entry in 4 bytes; the compression ratio
  is the all-32-bit memory over that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from binary.base import BinaryLayer, shape_macs

_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


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


@dataclass
class ModelSummary:
    """Totals of `summary` (PAPER.md 8.10) and its per-layer rows.

    Attributes:
        input_shape: the input the forward pass ran on, batch included.
        rows: one `LayerRow` per module that owns state-dict entries or is a conv / linear / binary layer.
        classifier: qualified name of the module whose entries ``params_paper`` also divides by 32, or None.
        binary_params: number of 1-bit weight entries.
        float_params: number of 32-bit state-dict entries.
        params: strict count, ``float_params + binary_params / 32``.
        params_paper: the authors' count, ``params`` with the classifier's weight also divided by 32 (models with
            binary weights only).
        float_macs, binary_macs: MACs by precision over the forward pass.
        ops: ``float_macs + binary_macs / 64``.
        memory_kib: ``(binary_params / 8 + 4 * float_params) / 1024``.
        compression_ratio: ``4 * (binary_params + float_params)`` bytes over the memory above.
    """

    input_shape: tuple[int, ...]
    rows: list[LayerRow]
    classifier: str | None
    binary_params: int
    float_params: int
    params: float
    params_paper: float
    float_macs: int
    binary_macs: int
    ops: float
    memory_kib: float
    compression_ratio: float

    def to_dict(self) -> dict:
        """JSON-safe dict of every field plus ``params_k``, ``params_paper_k`` and ``ops_g``."""
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["params_k"] = self.params / 1e3
        out["params_paper_k"] = self.params_paper / 1e3
        out["ops_g"] = self.ops / 1e9
        return out

    def __str__(self) -> str:
        header = ("Layer", "Class", "Calls", "1-bit params", "32-bit params", "Float MACs", "Binary MACs")
        lines = [
            (
                (row.name or "(model)") + "".join(f" ={alias}" for alias in row.names[1:]),
                row.cls,
                str(row.calls),
                f"{row.binary_params:,}",
                f"{row.float_params:,}",
                f"{row.float_macs:,}",
                f"{row.binary_macs:,}",
            )
            for row in self.rows
        ]
        widths = [max(len(text) for text in column) for column in zip(header, *lines, strict=False)]

        def fmt(cells: tuple[str, ...]) -> str:
            left = [cell.ljust(width) for cell, width in zip(cells[:2], widths[:2], strict=True)]
            right = [cell.rjust(width) for cell, width in zip(cells[2:], widths[2:], strict=True)]
            return "  ".join(left + right)

        rule = "-" * len(fmt(header))
        classifier = f"classifier '{self.classifier}' also / 32" if self.classifier else "no classifier given"
        totals = [
            f"Input shape: {tuple(self.input_shape)}",
            f"Params (strict): {self.params / 1e3:,.1f}K ({self.params:,.2f}; "
            f"1-bit {self.binary_params:,}, 32-bit {self.float_params:,})",
            f"Params (authors', {classifier}): {self.params_paper / 1e3:,.1f}K ({self.params_paper:,.2f})",
            f"MACs: float {self.float_macs:,}, binary {self.binary_macs:,}",
            f"OPs (float + binary / 64): {self.ops / 1e9:,.3f} G ({self.ops:,.2f})",
            f"Memory: {self.memory_kib:,.2f} KiB (1-bit weights packed), "
            f"compression ratio {self.compression_ratio:.2f}x vs all 32-bit",
        ]
        return "\n".join([fmt(header), rule, *map(fmt, lines), rule, *totals])


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


def summary(
    model: nn.Module,
    input_shape: tuple[int, ...] | list[int],
    classifier: str | None = None,
    print_table: bool = True,
) -> ModelSummary:
    """Count Params, OPs and memory of ``model`` with one forward pass on ``torch.randn(input_shape)``.

    The pass runs in eval mode without gradients; every module's training flag is restored afterwards.

    Args:
        model: any ``nn.Module`` whose forward takes one tensor.
        input_shape: input shape, batch included (e.g. ``(1, 3, 480, 480)``).
        classifier: qualified name of the final full-precision classifier whose weight ``params_paper`` divides
            by 32 when the model has binary weights; None uses
            ``model.classifier_name`` when the model has one, else ``params_paper == params``.
        print_table: print the table and totals.

    Returns:
        A `ModelSummary` (see the module docstring for the equations, PAPER.md 8.10).

    Raises:
        ValueError: ``classifier`` names no module of ``model``.
        TypeError: a `BinaryLayer` that is neither a conv / linear module nor defines ``binary_macs`` ran.
    """
    all_names: dict[str, nn.Module] = dict(model.named_modules(remove_duplicate=False))
    if classifier is None:
        classifier = getattr(model, "classifier_name", None)
    if classifier is not None and classifier not in all_names:
        raise ValueError(f"binary.summary: classifier {classifier!r} is not a module of {type(model).__name__}")

    rows: dict[int, LayerRow] = {}
    for name, module in model.named_modules():
        rows[id(module)] = LayerRow(name=name, cls=type(module).__name__)
    for name, module in all_names.items():
        rows[id(module)].names.append(name)

    binary_keys = {
        f"{name}.weight" if name else "weight"
        for name, module in all_names.items()
        if isinstance(module, BinaryLayer) and isinstance(getattr(module, "weight", None), torch.Tensor)
    }
    classifier_params = 0
    state = model.state_dict()
    has_binary = any(key in binary_keys for key in state)
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        row = rows[id(all_names[_owner(key, all_names)])]
        if key in binary_keys:
            row.binary_params += value.numel()
        else:
            row.float_params += value.numel()
            if has_binary and key == (f"{classifier}.weight" if classifier else "weight"):
                classifier_params += value.numel()

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

    kept = [
        row
        for _, module in model.named_modules()
        if (row := rows[id(module)]).binary_params
        or row.float_params
        or isinstance(module, _COUNTED + (BinaryLayer,))
        or hasattr(module, "binary_macs")
    ]
    binary_params = sum(row.binary_params for row in kept)
    float_params = sum(row.float_params for row in kept)
    float_macs = sum(row.float_macs for row in kept)
    binary_macs = sum(row.binary_macs for row in kept)
    params = float_params + binary_params / 32
    memory_bytes = binary_params / 8 + 4 * float_params
    result = ModelSummary(
        input_shape=tuple(int(s) for s in input_shape),
        rows=kept,
        classifier=classifier,
        binary_params=binary_params,
        float_params=float_params,
        params=params,
        params_paper=params - classifier_params + classifier_params / 32,
        float_macs=float_macs,
        binary_macs=binary_macs,
        ops=float_macs + binary_macs / 64,
        memory_kib=memory_bytes / 1024,
        compression_ratio=4 * (binary_params + float_params) / memory_bytes if memory_bytes else 1.0,
    )
    if print_table:
        print(result)
    return result
