"""TRAINING.COMPILE: the model is compiled in place, keeps its state-dict keys and computes what the eager one does."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from configs import load_config
from engine.checkpoints import config_changes
from engine.compilation import compile_model
from train_depth import DepthModule
from train_segmentation import SegmentationModule

REPO = Path(__file__).resolve().parents[2]


class _Holder(nn.Module):
    """A task module's shape: the network under ``model``, something else beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 5, 1))
        self.head = nn.Linear(2, 2)


@pytest.mark.parametrize(("task", "cls", "config"), [
    ("segmentation", SegmentationModule, "configs/segmentation/upernet_bidense_demo.yaml"),
    ("depth", DepthModule, "configs/depth/upernet_bidense_demo.yaml"),
])
def test_task_module_keys_unchanged(task, cls, config):
    """The real task modules: compiled in place, the same object and the same state-dict keys (``model.…``)."""
    cfg = load_config(task, REPO / config, ["TRAINING.COMPILE", "True"])
    assert load_config(task, REPO / config).TRAINING.COMPILE is False
    module = cls.from_config(cfg, pretrained=False)
    keys = list(module.state_dict())
    inner = module.model
    assert compile_model(module, cfg.TRAINING.COMPILE) is module and module.model is inner
    assert module.model._compiled_call_impl is not None
    assert list(module.state_dict()) == keys and all(key.startswith("model.") for key in keys)


def test_disabled_leaves_the_model_eager():
    holder = _Holder()
    compile_model(holder, False)
    assert holder.model._compiled_call_impl is None


def test_compiled_matches_eager_forward_backward_and_checkpoints():
    """Train-mode forward, gradients and BN running statistics equal the eager copy's; the compiled state dict
    loads strictly into an eager module and back."""
    torch.manual_seed(0)
    eager = _Holder()
    compiled = compile_model(copy.deepcopy(eager), True)
    x = torch.randn(2, 3, 12, 12)
    outs = []
    for holder in (eager, compiled):
        y = holder.model(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    state = compiled.state_dict()
    assert list(state) == list(eager.state_dict())
    torch.testing.assert_close(state["model.1.running_mean"], eager.state_dict()["model.1.running_mean"])
    fresh = _Holder()
    fresh.load_state_dict(state)
    compiled.load_state_dict(fresh.state_dict())
    eager.eval()
    compiled.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled.model(x), fresh.model(x), rtol=1e-5, atol=1e-5)


def test_compile_may_change_on_resume():
    """Switching compilation on or off does not change the training; a checkpoint from before the key existed
    (no TRAINING.COMPILE) resumes without a reported change."""
    assert config_changes({"TRAINING": {"COMPILE": False}}, {"TRAINING": {"COMPILE": True}}) == []
    assert config_changes({"TRAINING": {}}, {"TRAINING": {"COMPILE": False}}) == []
