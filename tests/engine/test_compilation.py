"""TRAINING.COMPILE: the model is compiled in place, keeps its state-dict keys and computes what the eager one does."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch._inductor.config
from torch import nn

from binary.layers import BiDenseConv2d, BiDenseConvTranspose2d, BypassDown
from configs import load_config
from engine.checkpoints import config_changes
from engine.compilation import compile_model
from train_depth import DepthModule
from train_segmentation import SegmentationModule

REPO = Path(__file__).resolve().parents[2]


class _Holder(nn.Module):
    """A task module's shape: the network under ``model`` (fused BiDense units with their DAB, binary conv,
    BatchNorm and bypass: an identity bypass, a strided unit, merged channels), something else beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(BiDenseConv2d(8, 8, 3, padding=1), BypassDown(8, 16, 2, 2),
                                   BiDenseConv2d(16, 6, 1))
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


@torch._inductor.config.patch({"cpp.vec_isa_ok": False})
def test_compiled_matches_eager_forward_backward_and_checkpoints():
    """Inductor-compiled in place: the train-mode forward, the input and parameter gradients and the BatchNorm
    running statistics equal the eager copy's (float64, within 1e-9); the compiled state dict loads strictly into
    an eager module and back, and the compiled module then computes what that eager module does, in training and
    in evaluation. Inductor writes scalar C++ kernels here: its vector ones are the same graph, but choosing their
    instruction set first builds and runs a probe per candidate (30 s of the test's 100 s on a cold cache)."""
    torch.manual_seed(0)
    eager = _Holder().double()
    compiled = compile_model(copy.deepcopy(eager), True)
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    results = []
    for holder in (eager, compiled):
        xi = x.clone().requires_grad_()
        y = holder.model(xi)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results.append((y, xi.grad, [p.grad for p in holder.model.parameters()],
                        [b.clone() for b in holder.model.buffers()]))
    (y0, dx0, grads0, buffers0), (y1, dx1, grads1, buffers1) = results
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dx1, dx0, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads1, grads0, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(buffers1, buffers0, rtol=1e-9, atol=1e-12)
    state = compiled.state_dict()
    assert list(state) == list(eager.state_dict())
    fresh = _Holder().double()
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.state_dict()[key], value) for key, value in state.items())
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(0.25)
    compiled.load_state_dict(fresh.state_dict())
    xg = x.clone().requires_grad_()  # as in the first call: the compiled training graph is reused, not recompiled
    torch.testing.assert_close(compiled.model(xg), fresh.model(xg), rtol=1e-10, atol=1e-12)
    compiled.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled.model(x), fresh.model(x), rtol=1e-10, atol=1e-12)
    torch._dynamo.reset()


def test_compile_may_change_on_resume():
    """Switching compilation on or off does not change the training; a checkpoint from before the key existed
    (no TRAINING.COMPILE) resumes without a reported change."""
    assert config_changes({"TRAINING": {"COMPILE": False}}, {"TRAINING": {"COMPILE": True}}) == []
    assert config_changes({"TRAINING": {}}, {"TRAINING": {"COMPILE": False}}) == []


def test_bidense_units_trace_into_one_graph():
    """Dynamo traces the fused BiDense units whole (forward, with its autograd function) on one and on several
    threads: their row blocking and workspace step aside while compiling, so the compiler sees one graph."""
    units = nn.Sequential(BiDenseConv2d(8, 8, 3, padding=1), BypassDown(8, 16, 2, 2),
                          BiDenseConvTranspose2d(16, 16, 2, stride=2, bypass=False), BiDenseConv2d(16, 6, 1))
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            torch._dynamo.reset()
            explained = torch._dynamo.explain(units)(x)
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    finally:
        torch.set_num_threads(threads)
        torch._dynamo.reset()
