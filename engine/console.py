"""What a run prints at start-up: the binary-aware Params / OPs line, and Lightning's known-harmless notices silenced.

Lightning's own model summary counts every latent float weight of a binary model as a parameter ("40.0 M
Trainable params" for the 1.6 M-parameter BiDense UPerNet), so the Trainer runs with ``enable_model_summary=False``
and `params_ops_line` prints the project's count instead (README, "Parameters and OPs"):

    Params = 32-bit state-dict entries + 1-bit weights / 32
    OPs    = float MACs + binary MACs / 64

`silence_known_notices` removes four messages by their exact text, nothing else (README, Training and evaluation):
the logger / model-registry advert ("💡 Tip: ... litlogger / litmodels"), the CSV logger's "directory exists and is
not empty" when the run folder holds no ``metrics.csv`` yet (it then deletes nothing: the folder holds only the
``config.yaml`` this run wrote), the OneCycleLR "'interval': 'epoch'" question (one step per epoch is the released
schedule, README, Training recipe) and torch's ``LeafSpec`` deprecation raised inside Lightning.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from binary.report import summary as count_model

# Lightning's rank-zero info logger, which prints the adverts.
_LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"
_ADVERT_PREFIX = "💡 Tip: For seamless cloud "


class _DropAdverts(logging.Filter):
    """Drops Lightning's "💡 Tip: For seamless cloud ..." records (litlogger, litmodels adverts)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ADVERT_PREFIX)


def silence_known_notices(run_folder: Path | None = None) -> None:
    """Install the targeted filters of the module docstring (idempotent).

    ``run_folder``: the run's log folder; its "exists and is not empty" warning is silenced only while it holds no
    ``metrics.csv`` (the only file the CSV logger would delete).
    """
    lightning_info = logging.getLogger(_LIGHTNING_INFO_LOGGER)
    if not any(isinstance(f, _DropAdverts) for f in lightning_info.filters):
        lightning_info.addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=re.escape("A `OneCycleLR` scheduler is using 'interval': 'epoch'."),
                            category=RuntimeWarning)
    warnings.filterwarnings("ignore", message=re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
                            category=FutureWarning)
    if run_folder is not None and not (run_folder / "metrics.csv").exists():
        warnings.filterwarnings(
            "ignore", message=re.escape(f"Experiment logs directory {run_folder} exists and is not empty."))


def params_ops_line(model: nn.Module, input_hw: Sequence[int], device: torch.device | None = None) -> str:
    """One line with the binary-aware Params and OPs of ``model`` at a ``1 x 3 x H x W`` input.

    The count runs one forward pass of a copy of the model on ``device`` (default: where the model is), so the model
    itself is untouched (layers that initialise themselves on their first forward, such as BiT's elastic
    binarizer, still see the first training batch) and the global random streams are left as they were.
    """
    device = device or next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        counted = count_model(copy.deepcopy(model).to(device), (1, 3, *input_hw), print_table=False)
    return (f"Params {counted.params / 1e3:,.1f} K, OPs {counted.ops / 1e9:,.3f} G at 1x3x{input_hw[0]}x{input_hw[1]} "
            f"(1-bit weights count 1/32, binary MACs 1/64)")
