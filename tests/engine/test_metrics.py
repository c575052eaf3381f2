"""Metrics on hand-made cases with known answers, and the DDP sum across two CPU processes (gloo)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.losses import silog_loss
from engine.metrics import DEPTH_METRIC_NAMES, DepthMetric, SegmentationMetric, crop_mask, depth_crop
from tests.engine.script_processes import WARM_START_METHOD

# ----------------------------------------------------------------------------------------------- segmentation

# 3 classes (0, 1, 2) + ignore slot 3.  Worked out by hand:
#   class 0: gt {(0,0),(0,1)}, pred {(0,0),(1,1)} (pred 0 at (1,2) is on an ignored pixel) -> inter 1, union 3
#   class 1: gt {(0,2),(0,3)}, pred {(0,1),(0,2),(0,3)}                                     -> inter 2, union 3
#   class 2: gt {(1,0),(1,1)}, pred {(1,0)}                                                 -> inter 1, union 2
#   labelled 6 pixels, correct 4.
SEG_TARGET = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, 3]]])
SEG_PRED = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 3]]])


def test_segmentation_hand_case():
    metric = SegmentationMetric(4, ignore_index=3)
    metric.update(SEG_PRED, SEG_TARGET)
    out = metric.compute()
    assert torch.allclose(out["IoU"], torch.tensor([1 / 3, 2 / 3, 1 / 2]))
    assert out["mIoU"].item() == pytest.approx(0.5)
    assert out["mIoU_present"].item() == pytest.approx(0.5)
    assert out["pixAcc"].item() == pytest.approx(4 / 6)


def test_segmentation_ignored_pixels_count_nowhere():
    # Changing the prediction on ignored pixels (label 3, or 255 outside [0, num_classes)) changes nothing.
    target = torch.cat([SEG_TARGET, torch.full((1, 2, 4), 255)], dim=1)
    pred = torch.cat([SEG_PRED, torch.tensor([[[0, 1, 2, 0], [1, 2, 0, 1]]])], dim=1)
    pred[0, 1, 2:] = torch.tensor([1, 2])
    metric = SegmentationMetric(4, ignore_index=3)
    metric.update(pred, target)
    out = metric.compute()
    assert torch.allclose(out["IoU"], torch.tensor([1 / 3, 2 / 3, 1 / 2]))
    assert out["pixAcc"].item() == pytest.approx(4 / 6)
    assert metric.labelled.item() == 6


def test_segmentation_zero_union_class_counts_as_zero():
    # Same data with 4 real classes (ignore 4): class 3 never appears, IoU 0, still in the authors' mean.
    metric = SegmentationMetric(5, ignore_index=4)
    metric.update(SEG_PRED, torch.where(SEG_TARGET == 3, 4, SEG_TARGET))
    out = metric.compute()
    assert torch.allclose(out["IoU"], torch.tensor([1 / 3, 2 / 3, 1 / 2, 0.0]))
    assert out["mIoU"].item() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 4)
    assert out["mIoU_present"].item() == pytest.approx(0.5)


def test_segmentation_prediction_of_ignore_slot_is_wrong():
    # target [0, 0], pred [0, ignore slot]: class 0 inter 1, union 2; classes 1, 2 absent.
    metric = SegmentationMetric(4, ignore_index=3)
    metric.update(torch.tensor([[0, 3]]), torch.tensor([[0, 0]]))
    out = metric.compute()
    assert torch.allclose(out["IoU"], torch.tensor([0.5, 0.0, 0.0]))
    assert out["pixAcc"].item() == pytest.approx(0.5)
    assert out["mIoU"].item() == pytest.approx(0.5 / 3)
    assert out["mIoU_present"].item() == pytest.approx(0.5)


def test_segmentation_class_absent_from_one_batch_uses_whole_set_sums():
    # batch 1 holds classes 0 and 1 only, batch 2 class 2 only.  Whole set by hand:
    #   class 0: gt 2, pred 3, inter 2 -> 2/3;  class 1: gt 2, pred 2, inter 1 -> 1/3
    #   class 2: gt 4, pred 3, inter 3 -> 3/4
    metric = SegmentationMetric(4, ignore_index=3)
    metric.update(torch.tensor([[0, 0, 1, 0]]), torch.tensor([[0, 0, 1, 1]]))
    metric.update(torch.tensor([[2, 2, 1, 2]]), torch.tensor([[2, 2, 2, 2]]))
    out = metric.compute()
    assert torch.allclose(out["IoU"], torch.tensor([2 / 3, 1 / 3, 3 / 4]))
    assert out["mIoU"].item() == pytest.approx((2 / 3 + 1 / 3 + 3 / 4) / 3)
    assert out["pixAcc"].item() == pytest.approx(6 / 8)


def _reference_iou(pred: torch.Tensor, target: torch.Tensor, classes: list[int], ignore: int) -> list[float]:
    """Per-class IoU by counting pixel sets one class at a time."""
    keep = target != ignore
    ious = []
    for c in classes:
        p, t = (pred == c) & keep, (target == c) & keep
        union = (p | t).sum().item()
        ious.append((p & t).sum().item() / union if union else 0.0)
    return ious


def test_segmentation_accumulation_equals_one_update_and_reference():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 7, (6, 9, 11), generator=gen)
    pred = torch.randint(0, 7, (6, 9, 11), generator=gen)
    whole, parts = SegmentationMetric(7, ignore_index=6), SegmentationMetric(7, ignore_index=6)
    whole.update(pred, target)
    for sl in (slice(0, 1), slice(1, 4), slice(4, 6)):
        parts.update(pred[sl], target[sl])
    a, b = whole.compute(), parts.compute()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    expected = _reference_iou(pred, target, list(range(6)), ignore=6)
    assert torch.allclose(a["IoU"], torch.tensor(expected))
    keep = target != 6
    assert a["pixAcc"].item() == pytest.approx(((pred == target) & keep).sum().item() / keep.sum().item())


def test_segmentation_logits_and_ignore_conventions():
    logits = torch.nn.functional.one_hot(SEG_PRED, 4).permute(0, 3, 1, 2).float()
    from_logits = SegmentationMetric(4, ignore_index=3)
    from_logits.update(logits, SEG_TARGET)
    assert from_logits.compute()["mIoU"].item() == pytest.approx(0.5)
    # ADE20K-style (151, ignore 150) and (150, ignore 255) evaluate the same 150 classes.
    target = torch.tensor([[0, 149, 150, 3]])
    pred = torch.tensor([[0, 149, 7, 4]])
    slot, outside = SegmentationMetric(151, 150), SegmentationMetric(150, 255)
    slot.update(pred, target)
    outside.update(pred, target.masked_fill(target == 150, 255))
    assert slot.compute()["IoU"].shape == (150,)
    assert torch.equal(slot.compute()["IoU"], outside.compute()["IoU"])
    with pytest.raises(ValueError, match="does not match"):
        slot.update(pred, target[:, :3])


# ------------------------------------------------------------------------------------------------------ depth

GT = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # [1, 1, 2, 2]


def _depth(pred: torch.Tensor, gt: torch.Tensor, **kwargs) -> dict[str, float]:
    metric = DepthMetric(**kwargs)
    metric.update(pred, gt)
    return {k: v.item() for k, v in metric.compute().items()}


def test_depth_pred_twice_gt():
    out = _depth(2 * GT, GT, max_depth=10.0)
    # ratio 2 everywhere: 2 > 1.25^3 = 1.953125, so no delta passes.
    assert out["d1"] == out["d2"] == out["d3"] == 0.0
    assert out["abs_rel"] == pytest.approx(1.0)
    assert out["sq_rel"] == pytest.approx((1 + 2 + 3 + 4) / 4)  # (y - 2y)^2 / y = y
    assert out["rmse"] == pytest.approx(math.sqrt((1 + 4 + 9 + 16) / 4))
    assert out["rmse_log"] == pytest.approx(math.log(2))
    assert out["log10"] == pytest.approx(math.log10(2))
    assert out["silog"] == pytest.approx(0.0, abs=1e-5)  # a constant log error is scale


def test_depth_mixed_errors():
    # errors e = ln(yhat) - ln(y) = [0, 1, 0, 1]; ratios [1, e, 1, e]; 1.25^3 < e.
    gt = torch.ones(1, 1, 2, 2)
    pred = torch.tensor([[[[1.0, math.e], [1.0, math.e]]]])
    out = _depth(pred, gt, max_depth=10.0)
    assert out["d1"] == out["d2"] == out["d3"] == pytest.approx(0.5)
    assert out["abs_rel"] == pytest.approx((math.e - 1) / 2)
    assert out["sq_rel"] == pytest.approx((math.e - 1) ** 2 / 2)
    assert out["rmse"] == pytest.approx(math.sqrt((math.e - 1) ** 2 / 2))
    assert out["rmse_log"] == pytest.approx(math.sqrt(0.5))
    assert out["log10"] == pytest.approx(math.log10(math.e) / 2)
    assert out["silog"] == pytest.approx(100 * math.sqrt(0.5 - 0.25))
    close = _depth(1.2 * gt, gt, max_depth=10.0)
    assert close["d1"] == close["d2"] == close["d3"] == 1.0


def test_depth_prediction_clamped_and_made_finite():
    gt = torch.ones(1, 2, 2)
    pred = torch.tensor([[[float("nan"), float("inf")], [-1.0, 20.0]]])  # -> [1e-3, 10, 1e-3, 10]
    out = _depth(pred, gt, min_depth=1e-3, max_depth=10.0)
    assert out["abs_rel"] == pytest.approx((0.999 + 9 + 0.999 + 9) / 4)
    assert out["d3"] == 0.0


def test_depth_invalid_ground_truth_excluded():
    # Only the pixels with 1e-3 < y < 10 count: 0, 1e-4, 10 (= max), 50 and nan are dropped.
    gt = torch.tensor([[[2.0, 0.0, 1e-4, 10.0], [4.0, 50.0, float("nan"), 5.0]]])
    pred = torch.tensor([[[2.0, 7.0, 9.0, 0.1], [8.0, 0.2, 3.0, 5.0]]])
    out = _depth(pred, gt, min_depth=1e-3, max_depth=10.0)
    # valid: (2, 2), (4, 8), (5, 5) -> abs_rel = (0 + 1 + 0) / 3, d1 = 2/3
    assert out["abs_rel"] == pytest.approx(1 / 3)
    assert out["d1"] == pytest.approx(2 / 3)
    assert out["rmse"] == pytest.approx(math.sqrt(16 / 3))


def test_depth_averaged_per_image_and_empty_image_skipped():
    # Image A: perfect on 4 pixels; image B: pred = 2y on its single valid pixel; image C: no valid pixel.
    gt = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[4.0, 1.0], [1.0, 1.0]], [[5.0, 5.0], [5.0, 5.0]]])
    metric = DepthMetric(max_depth=10.0)
    metric.update(pred, gt)
    out = metric.compute()
    assert metric.num_images.item() == 2
    assert out["abs_rel"].item() == pytest.approx(0.5)  # per image (0 + 1) / 2, not pooled 1/5
    assert out["d1"].item() == pytest.approx(0.5)
    one_by_one = DepthMetric(max_depth=10.0)
    for i in range(3):
        one_by_one.update(pred[i : i + 1], gt[i : i + 1])
    for key, value in one_by_one.compute().items():
        assert torch.allclose(value, out[key]), key
    empty = DepthMetric(max_depth=10.0)
    empty.update(pred[2:], gt[2:])
    assert math.isnan(empty.compute()["abs_rel"].item())


def _reference_depth(pred: torch.Tensor, gt: torch.Tensor, lo: float, hi: float) -> dict[str, float]:
    """Each metric image by image on the gathered valid pixels, then the plain mean over the counted images."""
    rows = []
    for p, y in zip(pred.double(), gt.double(), strict=True):
        keep = (y > lo) & (y < hi)
        if not keep.any():
            continue
        p, y = p[keep].clamp(lo, hi), y[keep]
        ratio = torch.max(y / p, p / y)
        e = p.log() - y.log()
        rows.append({
            "d1": (ratio < 1.25).double().mean(), "d2": (ratio < 1.5625).double().mean(),
            "d3": (ratio < 1.953125).double().mean(), "abs_rel": ((y - p).abs() / y).mean(),
            "sq_rel": ((y - p) ** 2 / y).mean(), "rmse": ((y - p) ** 2).mean().sqrt(),
            "rmse_log": (e**2).mean().sqrt(), "log10": (p.log10() - y.log10()).abs().mean(),
            "silog": 100 * ((e**2).mean() - e.mean() ** 2).sqrt(),
        })
    return {k: sum(r[k].item() for r in rows) / len(rows) for k in DEPTH_METRIC_NAMES}


def test_depth_random_batch_against_reference():
    gen = torch.Generator().manual_seed(1)
    gt = torch.rand(4, 1, 9, 13, generator=gen) * 14  # some beyond max_depth 10
    gt[gt < 1.0] = 0.0
    gt[2] = 0.0  # no ground truth at all: skipped
    pred = torch.rand(4, 1, 9, 13, generator=gen) * 12
    out = _depth(pred, gt, min_depth=1e-3, max_depth=10.0)
    expected = _reference_depth(pred[:, 0], gt[:, 0], 1e-3, 10.0)
    for key in DEPTH_METRIC_NAMES:
        assert out[key] == pytest.approx(expected[key], rel=1e-5), key


def test_crop_masks_exact_indices():
    eigen = torch.zeros(480, 640, dtype=torch.bool)
    eigen[45:471, 41:601] = True
    assert torch.equal(crop_mask(480, 640, "eigen"), eigen)
    garg = torch.zeros(352, 1216, dtype=torch.bool)
    garg[143:349, 43:1172] = True  # int(0.40810811*352)=143, int(0.99189189*352)=349, cols 43.7 -> 43, 1172.3 -> 1172
    assert torch.equal(crop_mask(352, 1216, "garg"), garg)
    half = torch.zeros(240, 320, dtype=torch.bool)
    half[22:235, 20:300] = True  # Eigen scaled: 45*240//480, 471*240//480, 41*320//640, 601*320//640
    assert torch.equal(crop_mask(240, 320, "eigen"), half)
    assert crop_mask(3, 5, None).all()
    with pytest.raises(ValueError, match="unknown crop"):
        crop_mask(3, 5, "kb")
    assert depth_crop(True, False) == "eigen" and depth_crop(True, True) == "garg" and depth_crop(False, False) is None


@pytest.mark.parametrize(("crop", "shape", "max_depth"), [("eigen", (480, 640), 10.0), ("garg", (352, 1216), 80.0)])
def test_depth_crop_applied(crop: str, shape: tuple[int, int], max_depth: float):
    gt = torch.full((1, 1, *shape), 5.0)
    pred = torch.where(crop_mask(*shape, crop), 5.0, 9.0).expand(1, 1, *shape)
    assert _depth(pred, gt, max_depth=max_depth, crop=crop)["abs_rel"] == 0.0
    assert _depth(pred, gt, max_depth=max_depth, crop=None)["abs_rel"] > 0.0


# ------------------------------------------------------------------------------------------------------ SILog


def _silog_reference(pred: list[float], target: list[float], lam: float, min_depth: float) -> float:
    d = [math.log(p + 1e-7) - math.log(t + 1e-7) for p, t in zip(pred, target, strict=True) if t > min_depth]
    mean_sq = sum(x * x for x in d) / len(d)
    mean = sum(d) / len(d)
    return 10 * math.sqrt(mean_sq - lam * mean * mean)


def test_silog_loss_against_formula():
    pred = [2.0, 3.0, 0.7, 5.0, 1.5, 9.0]
    target = [1.0, 3.5, 0.05, 0.0, 2.5, 1.2]
    p, t = torch.tensor(pred).view(1, 1, 2, 3), torch.tensor(target).view(1, 1, 2, 3)
    assert silog_loss(p, t, 0.85, min_depth=0.1).item() == pytest.approx(_silog_reference(pred, target, 0.85, 0.1))
    assert silog_loss(p, t, 0.85, min_depth=1.0).item() == pytest.approx(_silog_reference(pred, target, 0.85, 1.0))
    assert silog_loss(p, t, 0.5, min_depth=0.1).item() == pytest.approx(_silog_reference(pred, target, 0.5, 0.1))


def test_silog_loss_gradient_robust():
    target = torch.tensor([[[[1.0, 2.0], [3.0, 0.0]]]])
    perfect = target.clone().clamp_min(0.5).requires_grad_()
    loss = silog_loss(perfect, target)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=2e-5)
    assert torch.isfinite(perfect.grad).all()
    pred = torch.tensor([[[[1.5, 1.0], [4.0, 3.0]]]], requires_grad=True)
    silog_loss(pred, target).backward()
    assert pred.grad[0, 0, 1, 1] == 0  # no ground truth there
    assert pred.grad[0, 0, :, :].abs().sum() > 0
    nothing = torch.ones(1, 1, 2, 2, requires_grad=True)
    empty = silog_loss(nothing, torch.zeros(1, 1, 2, 2))
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(nothing.grad, torch.zeros(1, 1, 2, 2))
    assert silog_loss(target.bfloat16().clamp_min(0.5), target.bfloat16()).dtype == torch.float32


# -------------------------------------------------------------------------------------------------------- DDP


def _ddp_data() -> tuple[torch.Tensor, ...]:
    """Segmentation and depth batches; rank 0 takes the first 3 images of each, rank 1 the rest."""
    gen = torch.Generator().manual_seed(3)
    seg_target = torch.randint(0, 5, (5, 6, 7), generator=gen)
    seg_target[3:] = torch.randint(0, 2, (2, 6, 7), generator=gen)  # rank 1 sees classes 0 and 1 only
    noise = torch.randint(0, 5, (5, 6, 7), generator=gen)
    seg_pred = torch.where(torch.rand(5, 6, 7, generator=gen) < 0.6, seg_target, noise)
    depth_gt = torch.rand(5, 1, 6, 8, generator=gen) * 12
    depth_gt[4] = 0.0  # an image without ground truth, on rank 1
    depth_pred = depth_gt * (0.5 + torch.rand(5, 1, 6, 8, generator=gen)) + 0.1
    return seg_pred, seg_target, depth_pred, depth_gt


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        seg_pred, seg_target, depth_pred, depth_gt = _ddp_data()
        part = slice(0, 3) if rank == 0 else slice(3, 5)
        seg, depth = SegmentationMetric(5, ignore_index=4), DepthMetric(max_depth=10.0)
        seg.update(seg_pred[part], seg_target[part])
        depth.update(depth_pred[part], depth_gt[part])
        torch.save({"seg": seg.compute(), "depth": depth.compute()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_single_process(tmp_path):
    mp.start_processes(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method=WARM_START_METHOD)
    seg_pred, seg_target, depth_pred, depth_gt = _ddp_data()
    seg, depth = SegmentationMetric(5, ignore_index=4), DepthMetric(max_depth=10.0)
    seg.update(seg_pred, seg_target)
    depth.update(depth_pred, depth_gt)
    expected = {"seg": seg.compute(), "depth": depth.compute()}
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for group in ("seg", "depth"):
            for key, value in expected[group].items():
                assert torch.allclose(got[group][key], value, atol=1e-6), (rank, group, key)
    # The test can tell: averaging the two processes' own results gives a different number.
    halves = []
    for part in (slice(0, 3), slice(3, 5)):
        m, d = SegmentationMetric(5, ignore_index=4), DepthMetric(max_depth=10.0)
        m.update(seg_pred[part], seg_target[part])
        d.update(depth_pred[part], depth_gt[part])
        halves.append((m.compute()["mIoU"], d.compute()["abs_rel"]))
    assert abs((halves[0][0] + halves[1][0]) / 2 - expected["seg"]["mIoU"]) > 1e-3
    assert abs((halves[0][1] + halves[1][1]) / 2 - expected["depth"]["abs_rel"]) > 1e-3
    assert set(expected["depth"]) == set(DEPTH_METRIC_NAMES)
