"""Train a monocular-depth model (UPerNet or DPT, any binarization method) on NYUv2, KITTI or the demo.

    python train_depth.py CONFIG [--gpus 0,1] [--resume CKPT] [--weights CKPT] [KEY VALUE ...]

Loss: SILog ``10 sqrt(mean(d^2) - lambda mean(d)^2)``, ``d = log(pred) - log(gt)`` over ground truth deeper than
``TRAINING.LOSS_MIN_DEPTH`` (default: 1.0 m for KITTI, 0.1 m otherwise), lambda = ``TRAINING.VARIANCE_FOCUS``
Optimiser: AdamW + OneCycleLR stepped once per epoch. Validation: delta1..3, AbsRel, SqRel, RMSE, RMSE log,
log10, SILog per image with the Eigen/Garg crop and depth caps, averaged over all images of all processes
(README, Training recipe); the best ``valid/d1`` checkpoint and ``last.ckpt`` are kept.
"""

from __future__ import annotations

from typing import Any

import torch
from yacs.config import CfgNode

from engine.cli import build_parser, run_cli
from engine.losses import silog_loss
from engine.metrics import DepthMetric, depth_crop
from engine.run import fit
from engine.task_module import DenseTaskModule, denormalize
from models import build_model


def loss_min_depth(cfg: CfgNode) -> float:
    """Ground truth at or below this depth is left out of the loss: the key, or the authors' rule by data set."""
    if cfg.TRAINING.LOSS_MIN_DEPTH is not None:
        return float(cfg.TRAINING.LOSS_MIN_DEPTH)
    return 1.0 if cfg.DATASET.DATASET == "kitti" else 0.1


def inverse_depth_image(depth: torch.Tensor) -> torch.Tensor:
    """``[1, H, W]`` depth -> inverse depth scaled to [0, 1] for display (near = bright; no ground truth = 0)."""
    inv = torch.where(depth > 1e-3, 1.0 / depth.float().clamp(min=1e-3), torch.zeros_like(depth, dtype=torch.float))
    top = inv.max()
    return inv / top if top > 0 else inv


class DepthModule(DenseTaskModule):
    """A depth model with its SILog loss, optimiser, schedule and per-image metrics averaged over the set.

    Args:
        model_type, binary_type, max_depth, pretrained: passed to `models.build_model`.
        variance_focus, loss_min_depth: the SILog loss (README, Training recipe).
        min_depth_eval, max_depth_eval, crop: the evaluation protocol (README, Training recipe).
        max_lr, epochs, weight_decay: AdamW + OneCycleLR (README, Training recipe).
    """

    main_metric = "d1"

    def __init__(self, model_type: str, binary_type: str, max_depth: float, variance_focus: float,
                 loss_min_depth: float, min_depth_eval: float, max_depth_eval: float, crop: str | None,
                 max_lr: float, epochs: int, weight_decay: float = 0.01, pretrained: str | bool | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model("depth", model_type, binary_type, max_depth=max_depth,
                                 pretrained=pretrained)
        self.val_metric = DepthMetric(min_depth_eval, max_depth_eval, crop)
        self.test_metric = DepthMetric(min_depth_eval, max_depth_eval, crop)
        self._shown: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, cfg: CfgNode, pretrained: bool = True) -> DepthModule:
        """The module of ``cfg``; ``pretrained=False`` loads no pretrained weights (they come from a ckpt).

        MODEL.PRETRAINED empty means the standard weights of the `fp32` models (`models.pretrained`).
        """
        return cls(cfg.MODEL.MODEL_TYPE, cfg.MODEL.BINARY_TYPE, float(cfg.MODEL.MAX_DEPTH),
                   cfg.TRAINING.VARIANCE_FOCUS, loss_min_depth(cfg), cfg.ONLINE_EVAL.MIN_DEPTH_EVAL,
                   float(cfg.ONLINE_EVAL.MAX_DEPTH_EVAL),
                   depth_crop(cfg.ONLINE_EVAL.EIGEN_CROP, cfg.ONLINE_EVAL.GARG_CROP), cfg.TRAINING.MAX_LR,
                   cfg.TRAINING.NUM_EPOCHS, cfg.TRAINING.WEIGHT_DECAY,
                   (cfg.MODEL.PRETRAINED or True) if pretrained else None)

    @staticmethod
    def identity(cfg: CfgNode) -> dict[str, Any]:
        """The hyper-parameters a checkpoint must share with ``cfg`` to be loaded into its model."""
        return {"model_type": cfg.MODEL.MODEL_TYPE, "binary_type": cfg.MODEL.BINARY_TYPE,
                "max_depth": float(cfg.MODEL.MAX_DEPTH)}

    @staticmethod
    def validation_plan(cfg: CfgNode) -> tuple[str | None, int]:
        """(metric kept by the best checkpoint, validation period in epochs); (None, 0) without online eval."""
        if not cfg.ONLINE_EVAL.DO_ONLINE_EVAL:
            return None, 0
        return "valid/d1", cfg.ONLINE_EVAL.EVAL_FREQ

    def _loss(self, pred: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        return silog_loss(pred.float(), depth, hp.variance_focus, hp.loss_min_depth)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image, depth = batch
        loss = self._loss(self.model(image), depth)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=image.size(0))
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], metric: DepthMetric, stage: str) -> None:
        image, depth = batch
        pred = self.model(image).float()
        if (depth > self.hparams.loss_min_depth).any():
            self.log(f"{stage}/loss", self._loss(pred, depth), on_epoch=True, sync_dist=True,
                     batch_size=image.size(0))
        metric.update(pred, depth)
        if self._shown is None:
            self._shown = (image[0].detach(), depth[0].detach(), pred[0].detach())

    def _log_images(self) -> None:
        """Input, ground-truth and predicted inverse depth of the first validation image, to TensorBoard."""
        board = self._tensorboard()
        if board is None:
            return
        image, depth, pred = (t.cpu() for t in self._shown)
        step = self.global_step
        board.experiment.add_image("valid_viz/image", denormalize(image), step)
        board.experiment.add_image("valid_viz/depth_gt", inverse_depth_image(depth), step)
        board.experiment.add_image("valid_viz/depth_est", inverse_depth_image(pred), step)


def main() -> None:
    """Command-line entry point."""
    parser = build_parser(__doc__.splitlines()[0], test=False)
    run_cli(lambda args: fit(args, "depth", DepthModule), parser)


if __name__ == "__main__":
    main()
