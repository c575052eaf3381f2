"""Optional ``torch.compile`` of the whole model (``TRAINING.COMPILE``; README, Training and evaluation).

The task module's ``model`` is compiled in place with ``nn.Module.compile``: the module object, its parameters and
its state-dict keys (``model.…``) stay those of the eager model, so checkpoints written by a compiled run load into
an eager one and back, and ``--resume`` may switch compilation on or off.
"""

from __future__ import annotations

from torch import nn


def compile_model(module: nn.Module, enabled: bool) -> nn.Module:
    """Compile ``module.model`` in place when ``enabled`` (default backend, Inductor); returns ``module``.

    Compilation is lazy: the first forward of each mode (training, evaluation) traces and compiles.
    """
    if enabled:
        module.model.compile()
    return module
