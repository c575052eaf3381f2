"""Binary-aware model summary: totals of the per-layer rows of `binary.counting` as the Params and OPs of
arXiv 2411.10346, Table 1, plus memory, and the table text.

The convention (README, "Training and evaluation", Parameters and OPs; "Where this implementation differs from
the released code, and why", Params and OPs resolution):

    Params = sum over 32-bit state-dict entries of numel + (1/32) * sum over 1-bit weights of numel
    OPs    = MACs_float + MACs_binary / 64

* ``params`` is the strict count.  The authors' count (``params_paper``) of a model with binary weights also
  divides the ``weight`` of their final full-precision classifier by 32 (it sits in their list of binary keys);
  that quirk reproduces Table 1.  A float model's authors' count equals its strict count.
* Memory packs 1-bit weights (numel / 8 bytes) and stores every other entry in 4 bytes; the compression ratio
  is the all-32-bit memory over that.

What counts as a parameter, a 1-bit weight and a MAC is defined in `binary.counting`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from binary.counting import LayerRow, binary_weight_keys, count_layers


@dataclass
class ModelSummary:
    """Totals of `summary` and its per-layer rows.

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


def _classifier_params(model: nn.Module, classifier: str | None) -> int:
    """Entries of the classifier's 32-bit weight that the authors' count divides by 32: none unless the model has
    1-bit weights (``classifier`` None or "" names the root module's own ``weight``)."""
    binary_keys = binary_weight_keys(model)
    key = f"{classifier}.weight" if classifier else "weight"
    state = model.state_dict()
    if key in binary_keys or not any(k in binary_keys for k in state):
        return 0
    return sum(value.numel() for k, value in state.items() if k == key)


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
        A `ModelSummary` (equations in the module docstring).

    Raises:
        ValueError: ``classifier`` names no module of ``model``.
        TypeError: a `BinaryLayer` that is neither a conv / linear module nor defines ``binary_macs`` ran.
    """
    if classifier is None:
        classifier = getattr(model, "classifier_name", None)
    if classifier is not None and classifier not in dict(model.named_modules(remove_duplicate=False)):
        raise ValueError(f"binary.summary: classifier {classifier!r} is not a module of {type(model).__name__}")
    rows = count_layers(model, input_shape)
    binary_params = sum(row.binary_params for row in rows)
    float_params = sum(row.float_params for row in rows)
    float_macs = sum(row.float_macs for row in rows)
    binary_macs = sum(row.binary_macs for row in rows)
    params = float_params + binary_params / 32
    classifier_params = _classifier_params(model, classifier)
    memory_bytes = binary_params / 8 + 4 * float_params
    result = ModelSummary(
        input_shape=tuple(int(s) for s in input_shape),
        rows=rows,
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
