"""Evaluation metrics: whole-set segmentation pixAcc / IoU, per-image depth errors.

Both metrics are `torchmetrics.Metric` subclasses whose states are plain sums (``dist_reduce_fx="sum"``), so
under DDP every process accumulates its own share of the evaluation set and ``compute()`` adds the states of
all processes before dividing once: nothing is averaged per process (README, deviations).  Call ``update``
per batch and ``compute`` once per epoch.

* `SegmentationMetric`: pixAcc and mIoU (README, Training recipe), intersections and unions summed over the whole
  set.
* `DepthMetric`: the BTS / authors' depth errors (README, Training recipe; Eigen crop for NYUv2, Garg crop for KITTI),
  computed per image and averaged over images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

DEPTH_METRIC_NAMES = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
DEPTH_CROPS = (None, "eigen", "garg")

# Eigen crop of NYUv2, defined on the 480x640 evaluation image: rows 45:471, cols 41:601 (BTS, the authors).
_EIGEN_ROWS = (45, 471, 480)
_EIGEN_COLS = (41, 601, 640)
# Garg crop of KITTI as fractions of the (KB-cropped, 352x1216) image, truncated with int() as BTS does.
_GARG_ROWS = (0.40810811, 0.99189189)
_GARG_COLS = (0.03594771, 0.96405229)


class SegmentationMetric(Metric):
    """Pixel accuracy and mean IoU over a whole evaluation set (README, Training recipe), summed across processes.

    Evaluated classes are ``{0, ..., num_classes - 1}`` minus ``ignore_index``: with the configs' ``NUM_CLASSES``
    (ADE20K 151, VOC 22, ignore slot last) that is 150 / 21 classes; ``SegmentationMetric(150, 255)`` evaluates
    the same 150.  A pixel whose label is ``ignore_index`` or outside ``[0, num_classes)`` is not labelled: it
    counts nowhere.  On a labelled pixel, a prediction that is not an evaluated class (e.g. the ignore slot of a
    151-way head) is simply wrong: it adds to the union of the true class and to no class's prediction area.

    States (summed over batches and processes): ``area_inter``, ``area_pred``, ``area_target`` (``[num_classes]``
    pixel counts) and the scalars ``correct``, ``labelled``.  ``compute()`` returns::

        pixAcc       = correct / labelled
        IoU[c]       = inter[c] / union[c],  union[c] = pred[c] + target[c] - inter[c];  IoU[c] = 0 if union[c] = 0
        mIoU         = mean of IoU over all evaluated classes                 (the authors' convention)
        mIoU_present = mean of IoU over the evaluated classes with union > 0  (classes in the ground truth or
                       in the predictions of the set)

    ``mIoU`` is the number to report: the authors set a zero union to infinity, so an absent class scores 0 and
    still counts in the mean; it equals ``mIoU_present`` whenever every class appears (the full ADE20K / VOC
    validation sets).  ``IoU`` is the ``[num_evaluated]`` vector in class-id order, ignore slot left out.
    With no labelled pixel at all, pixAcc and both means are 0.

    Deviation: the authors log pixAcc per batch and average the batch values; here it is correct / labelled
    pixels over the whole set, which does not depend on the batch size or the number of processes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"SegmentationMetric: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.evaluated_classes = [c for c in range(num_classes) if c != ignore_index]
        if not self.evaluated_classes:
            raise ValueError(f"SegmentationMetric: no class left to evaluate (num_classes={num_classes}, "
                             f"ignore_index={ignore_index})")
        for name in ("area_inter", "area_pred", "area_target"):
            self.add_state(name, default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("labelled", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch: ``preds`` class ids ``[B, H, W]`` (or logits ``[B, C, H, W]``), ``target`` ``[B, H, W]``."""
        if preds.dim() == target.dim() + 1:
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(f"SegmentationMetric.update: preds shape {tuple(preds.shape)} does not match "
                             f"target shape {tuple(target.shape)}")
        preds = preds.reshape(-1).long()
        target = target.reshape(-1).long()
        labelled = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            labelled &= target != self.ignore_index
        preds, target = preds[labelled], target[labelled]
        hit = preds == target
        n = self.num_classes
        self.area_inter += torch.bincount(target[hit], minlength=n)
        self.area_target += torch.bincount(target, minlength=n)
        self.area_pred += torch.bincount(preds[(preds >= 0) & (preds < n)], minlength=n)
        self.correct += hit.sum()
        self.labelled += target.numel()

    def compute(self) -> dict[str, Tensor]:
        """``{"pixAcc", "mIoU", "mIoU_present"}`` scalars and the per-class ``"IoU"`` vector (float32)."""
        keep = torch.tensor(self.evaluated_classes, device=self.area_inter.device)
        inter = self.area_inter[keep].double()
        union = (self.area_pred[keep] + self.area_target[keep] - self.area_inter[keep]).double()
        present = union > 0
        iou = torch.where(present, inter / union.clamp_min(1), torch.zeros_like(inter))
        miou_present = iou[present].mean() if present.any() else iou.new_zeros(())
        pix_acc = self.correct.double() / self.labelled.clamp_min(1).double()
        return {
            "pixAcc": pix_acc.float(),
            "mIoU": iou.mean().float(),
            "mIoU_present": miou_present.float(),
            "IoU": iou.float(),
        }


def crop_mask(height: int, width: int, crop: str | None, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``[height, width]`` evaluation region of a depth crop (README, Training recipe).

    * ``None``: the whole image.
    * ``"eigen"`` (NYUv2): rows 45:471 and cols 41:601 of the 480x640 image, exactly as BTS and the authors.
      The authors apply these fixed indices whatever the size; for another size we scale them proportionally,
      rows ``45*H//480 : 471*H//480`` and cols ``41*W//640 : 601*W//640`` (identical at 480x640).
    * ``"garg"`` (KITTI): rows ``int(0.40810811*H) : int(0.99189189*H)``, cols
      ``int(0.03594771*W) : int(0.96405229*W)``, as BTS and the authors (143:349, 43:1172 on 352x1216).

    The authors' KITTI variant of the Eigen crop (used only with ``dataset='kitti'`` and no Garg crop, which no
    config of theirs selects) is not provided.
    """
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    if crop is None:
        mask[:] = True
    elif crop == "eigen":
        (r0, r1, rh), (c0, c1, cw) = _EIGEN_ROWS, _EIGEN_COLS
        mask[r0 * height // rh:r1 * height // rh, c0 * width // cw:c1 * width // cw] = True
    elif crop == "garg":
        mask[int(_GARG_ROWS[0] * height):int(_GARG_ROWS[1] * height),
             int(_GARG_COLS[0] * width):int(_GARG_COLS[1] * width)] = True
    else:
        raise ValueError(f"crop_mask: unknown crop {crop!r}; valid crops: {DEPTH_CROPS}")
    return mask


def depth_crop(eigen_crop: bool, garg_crop: bool) -> str | None:
    """The crop named by the config flags ``ONLINE_EVAL.{EIGEN_CROP,GARG_CROP}``; Garg wins if both are set."""
    if garg_crop:
        return "garg"
    return "eigen" if eigen_crop else None


def _as_images(x: Tensor, name: str) -> Tensor:
    """``[B, 1, H, W]``, ``[B, H, W]`` or ``[H, W]`` depth maps as ``[B, H, W]``."""
    if x.dim() == 4 and x.size(1) == 1:
        return x[:, 0]
    if x.dim() == 3:
        return x
    if x.dim() == 2:
        return x.unsqueeze(0)
    raise ValueError(f"DepthMetric.update: {name} must be [B,1,H,W], [B,H,W] or [H,W], got {tuple(x.shape)}")


class DepthMetric(Metric):
    """Monocular depth errors (README, Training recipe), computed per image and averaged over images (all processes).

    Per image, as the authors (BTS ``compute_errors``):

    1. the prediction is made finite and clamped to ``[min_depth, max_depth]`` (nan -> min_depth, +inf ->
       max_depth, -inf -> min_depth);
    2. valid pixels: ``min_depth < y < max_depth`` inside the crop (`crop_mask`); nan ground truth is invalid;
    3. over the valid pixels, with ``e = ln(yhat) - ln(y)``::

           d_k      = mean[max(y/yhat, yhat/y) < 1.25^k]      k = 1, 2, 3
           abs_rel  = mean(|y - yhat| / y)                    sq_rel   = mean((y - yhat)^2 / y)
           rmse     = sqrt(mean((y - yhat)^2))                rmse_log = sqrt(mean(e^2))
           log10    = mean|log10(yhat) - log10(y)|            silog    = 100 * sqrt(mean(e^2) - mean(e)^2)

       (``silog`` is the x100, variance-focus-1 form of the authors' evaluation; its argument is clamped at 0
       against rounding.)

    ``compute()`` returns the mean of each over the images seen, as float32 scalars keyed by
    `DEPTH_METRIC_NAMES` (the authors log ``rmse`` / ``rmse_log`` as ``rms`` / ``log_rms``).  An image with no
    valid pixel (no ground truth inside the crop) is skipped: it adds to no sum and not to the image count.
    Before any counted image every value is nan.  Work is done in float64.  The authors evaluate with batch size
    1 and pool the pixels of a batch; here each image of a batch is its own term, which equals their number at
    batch size 1.  Defaults follow their configs: ``min_depth`` = ``ONLINE_EVAL.MIN_DEPTH_EVAL`` = 1e-3,
    ``max_depth`` = ``MAX_DEPTH_EVAL`` (10 NYUv2, 80 KITTI), ``crop`` "eigen" for NYUv2, "garg" for KITTI.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, crop: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if crop not in DEPTH_CROPS:
            raise ValueError(f"DepthMetric: unknown crop {crop!r}; valid crops: {DEPTH_CROPS}")
        if not 0 < min_depth < max_depth:
            raise ValueError(f"DepthMetric: need 0 < min_depth < max_depth, got min_depth={min_depth}, "
                             f"max_depth={max_depth}")
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.crop = crop
        for name in DEPTH_METRIC_NAMES:
            self.add_state(f"sum_{name}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of predicted and ground-truth depth maps in metres (``[B,1,H,W]``, ``[B,H,W]`` or ``[H,W]``)."""
        pred, gt = _as_images(preds, "preds").double(), _as_images(target, "target").double()
        if pred.shape != gt.shape:
            raise ValueError(f"DepthMetric.update: preds shape {tuple(preds.shape)} does not match target shape "
                             f"{tuple(target.shape)}")
        lo, hi = self.min_depth, self.max_depth
        pred = torch.nan_to_num(pred, nan=lo, posinf=hi, neginf=lo).clamp(lo, hi)
        valid = (gt > lo) & (gt < hi) & crop_mask(gt.size(-2), gt.size(-1), self.crop, gt.device)
        count = valid.sum(dim=(1, 2))
        kept = count > 0
        if not kept.any():
            return
        pred, gt, valid, count = pred[kept], gt[kept], valid[kept], count[kept].double()
        # Invalid pixels become y = yhat = 1, where every error term below is 0 (the deltas are masked).
        gt = torch.where(valid, gt, torch.ones_like(gt))
        pred = torch.where(valid, pred, torch.ones_like(pred))

        def mean(x: Tensor) -> Tensor:
            return x.sum(dim=(1, 2)) / count

        ratio = torch.maximum(gt / pred, pred / gt)
        diff = gt - pred
        err = torch.log(pred) - torch.log(gt)
        sq_err = err**2
        per_image = {
            "d1": mean(valid & (ratio < 1.25)),
            "d2": mean(valid & (ratio < 1.25**2)),
            "d3": mean(valid & (ratio < 1.25**3)),
            "abs_rel": mean(diff.abs() / gt),
            "sq_rel": mean(diff**2 / gt),
            "rmse": mean(diff**2).sqrt(),
            "rmse_log": mean(sq_err).sqrt(),
            "log10": mean(err.abs()) / math.log(10),
            "silog": (mean(sq_err) - mean(err) ** 2).clamp_min(0).sqrt() * 100,
        }
        for name, values in per_image.items():
            state = getattr(self, f"sum_{name}")
            setattr(self, f"sum_{name}", state + values.sum())
        self.num_images += int(kept.sum())

    def compute(self) -> dict[str, Tensor]:
        """Mean of each per-image metric over the images counted on all processes (float32 scalars)."""
        n = self.num_images.double()
        return {name: (getattr(self, f"sum_{name}") / n).float() for name in DEPTH_METRIC_NAMES}
