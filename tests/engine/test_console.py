"""The start-up console: the Params / OPs line leaves the model alone; only the four known notices are silenced."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from engine.console import params_ops_line, silence_known_notices
from models import build_model


def test_params_ops_line_leaves_the_model_and_random_streams_alone():
    """BiT's elastic binarizers initialise their step from their first input: the count must not be that input."""
    torch.manual_seed(0)
    model = build_model("segmentation", "dpt", "bit", num_classes=7)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    line = params_ops_line(model, (28, 28))
    assert re.fullmatch(r"Params [\d,]+\.\d K, OPs \d+\.\d{3} G at 1x3x28x28 \(1-bit weights count 1/32, "
                        r"binary MACs 1/64\)", line), line
    assert 1000 < float(line.split()[1].replace(",", "")) < 3000
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_only_the_known_notices_are_silenced(tmp_path: Path):
    fresh, used = tmp_path / "version_0", tmp_path / "version_1"
    fresh.mkdir()
    used.mkdir()
    (used / "metrics.csv").write_text("epoch\n")
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler = _Collect()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            silence_known_notices(fresh)
            silence_known_notices(fresh)  # idempotent
            for folder in (fresh, used):
                rank_zero_warn(f"Experiment logs directory {folder} exists and is not empty. Previous log files in "
                               "this directory will be deleted when the new ones are saved!")
            rank_zero_warn("A `OneCycleLR` scheduler is using 'interval': 'epoch'. Are you sure you didn't mean "
                           "'interval': 'step'?", category=RuntimeWarning)
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
                          "treespec.is_leaf()` instead.", FutureWarning, stacklevel=1)
            rank_zero_warn(f"Checkpoint directory {fresh} exists and is not empty.")
            rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
            rank_zero_info("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]")
            rank_zero_info("GPU available: False, used: False")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    shown = [str(w.message) for w in caught]
    assert len(shown) == 2, shown
    assert shown[0].startswith(f"Experiment logs directory {used} exists")
    assert shown[1] == f"Checkpoint directory {fresh} exists and is not empty."
    assert handler.messages == ["GPU available: False, used: False"]
