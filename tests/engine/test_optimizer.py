"""The training optimiser: fused AdamW where the device has the kernel, the per-op AdamW's update up to rounding."""

from __future__ import annotations

import torch

from engine.optimizer import adamw


def test_fused_adamw_follows_the_per_op_update():
    torch.manual_seed(0)
    start = [torch.randn(300, 7), torch.randn(5)]
    grads = [[torch.randn_like(p) * 10.0 ** -k for p in start] for k in range(4)]
    results = []
    for make in (lambda ps: adamw(ps, 1e-2, 0.01),
                 lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01, foreach=False)):
        params = [p.clone().requires_grad_() for p in start]
        optimizer = make(params)
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            optimizer.step()
        results.append((optimizer, [p.detach() for p in params]))
    (fused, ours), (_, reference) = results
    assert fused.param_groups[0]["fused"] is True
    for a, b, p0 in zip(ours, reference, start, strict=True):
        assert not torch.equal(a, p0)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_unfused_where_the_device_has_no_kernel():
    optimizer = adamw([torch.zeros(3, device="meta", requires_grad=True)], 1e-3, 0.01)
    assert not optimizer.param_groups[0]["fused"]
