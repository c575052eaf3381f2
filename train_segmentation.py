"""Train a semantic-segmentation model (UPerNet or DPT, any binarization method) on ADE20K, PASCAL VOC or the demo.

    python train_segmentation.py CONFIG [--gpus 0,1] [--resume CKPT] [--weights CKPT] [KEY VALUE ...]

Loss: cross-entropy with the last class index (``MODEL.NUM_CLASSES - 1``) ignored, which equals the released
code's class weight 0 on that slot. Optimiser: AdamW (weight decay ``TRAINING.WEIGHT_DECAY``) with OneCycleLR over
``NUM_EPOCHS`` stepped once per epoch. Validation: pixAcc and mIoU accumulated over the whole set and across
processes, computed once per epoch; the best ``valid/mIoU`` checkpoint and ``last.ckpt`` are kept. The recipe is the
released one (README, Training recipe; the whole-set mIoU: README, deviations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from yacs.config import CfgNode

from engine.cli import build_parser, run_cli
from engine.metrics import SegmentationMetric
from engine.predict import class_map, write_png
from engine.run import fit
from engine.task_module import DenseTaskModule, denormalize
from models import build_model

# ADE20K's 150 class colours (the data set's standard palette), RGB hex, class 0 first.
_ADE20K_PALETTE_HEX = (
    "787878b4787806e6e650323204c8037878508c8c8ccc05ffe6e6e604fa07e005ffebff0796053d78784608ff33ff0652"
    "8fff8cccff04ff3307cc46030066c83de6faff06330b66ffff0747ff09e00907e6dcdcdcff095c7009ff08ffd607ffe0"
    "ffb8060aff47ff290a07ffffe0ff086608ffff3d06ffc207ff7a0800ff14ff0829ff05990633ffeb0cffa0961400a3ff"
    "8c8c8cfa0a0f14ff001fff00ff1f00ffe00099ff000000ffff470000ebff00adff1f00ff0bc8c8ff520000fff5003dff"
    "00ff7000ff85ff0000ffa300ff6600c2ff00008fff33ff000052ff00ff2900ffad0a00ffadff0000ff99ff5c00ff00ff"
    "ff00f5ff0066ffad00ff0014ffb8b8001fff00ff3d0047ffff00cc00ffc200ff52000aff0070ff3300ff00c2ff007aff"
    "00ffa3ff990000ff0aff70008fff005200ffa3ff00ffeb0008b8aa8500ff00ff5cb800ffff001f00b8ff00d6ffff0070"
    "5cff0000e0ff70e0ff46b8a0a300ff9900ff47ff00ff00a3ffcc00ff008f00ffeb85ff00ff00ebf500ffff007afff500"
    "0abed4d6ff0000ccff1400ffffff000099ff0029ff00ffcc2900ff29ff00ad00ff00f5ff4700ff7a00ff00ffb8005cff"
    "b8ff000085ffffd60019c2c266ff005c00ff"
)


def voc_palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour map for ``n`` labels: the bits of the label spread over the high bits of R, G, B.

    Label ``c`` with bits ``b0 b1 b2 ...``: bit ``3j`` -> R bit ``7 - j``, ``3j+1`` -> G, ``3j+2`` -> B.
    """
    colours = np.zeros((n, 3), np.uint8)
    for label in range(n):
        c, shift = label, 7
        while c:
            for channel in range(3):
                colours[label, channel] |= ((c >> channel) & 1) << shift
            c >>= 3
            shift -= 1
    return colours


def palette(dataset: str, num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours for the training ids; the last row (the ignore slot) is the ignore colour.

    ADE20K: its own palette, ignore black (as its "other" label). Others (VOC, demo): the VOC colour map, ignore in
    VOC's border colour (224, 224, 192).
    """
    if dataset == "ade20k":
        ade = np.frombuffer(bytes.fromhex(_ADE20K_PALETTE_HEX), np.uint8).reshape(-1, 3)
        colours = np.concatenate([ade[: num_classes - 1], np.zeros((1, 3), np.uint8)])
    else:
        colours = np.concatenate([voc_palette(num_classes - 1), np.array([[224, 224, 192]], np.uint8)])
    if len(colours) != num_classes:
        raise ValueError(f"no palette of {num_classes} colours for {dataset}")
    return colours


class SegmentationModule(DenseTaskModule):
    """A segmentation model with its loss, optimiser, schedule and whole-set metrics.

    Args:
        model_type, binary_type, num_classes, pretrained: passed to `models.build_model`.
        dataset: the data set name (palette of the logged images).
        max_lr, epochs, weight_decay: AdamW + OneCycleLR (README, Training recipe).
    """

    main_metric = "mIoU"

    def __init__(self, model_type: str, binary_type: str, num_classes: int, dataset: str, max_lr: float,
                 epochs: int, weight_decay: float = 0.01, pretrained: str | bool | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model("segmentation", model_type, binary_type, num_classes=num_classes,
                                 pretrained=pretrained)
        self.ignore_index = num_classes - 1
        self.val_metric = SegmentationMetric(num_classes, self.ignore_index)
        self.test_metric = SegmentationMetric(num_classes, self.ignore_index)
        self._palette = torch.from_numpy(palette(dataset, num_classes))
        self._shown: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, cfg: CfgNode, pretrained: bool = True) -> SegmentationModule:
        """The module of ``cfg``; ``pretrained=False`` loads no pretrained weights (they come from a ckpt).

        MODEL.PRETRAINED empty means the standard weights of the `fp32` models (`models.pretrained`).
        """
        return cls(cfg.MODEL.MODEL_TYPE, cfg.MODEL.BINARY_TYPE, cfg.MODEL.NUM_CLASSES, cfg.DATASET.DATASET,
                   cfg.TRAINING.MAX_LR, cfg.TRAINING.NUM_EPOCHS, cfg.TRAINING.WEIGHT_DECAY,
                   (cfg.MODEL.PRETRAINED or True) if pretrained else None)

    @staticmethod
    def identity(cfg: CfgNode) -> dict[str, Any]:
        """The hyper-parameters a checkpoint must share with ``cfg`` to be loaded into its model."""
        return {"model_type": cfg.MODEL.MODEL_TYPE, "binary_type": cfg.MODEL.BINARY_TYPE,
                "num_classes": cfg.MODEL.NUM_CLASSES}

    @staticmethod
    def validation_plan(cfg: CfgNode) -> tuple[str | None, int]:
        """(metric kept by the best checkpoint, validation period in epochs)."""
        return "valid/mIoU", cfg.TRAINING.EVAL_FREQ

    def _loss(self, logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy averaged over the pixels not ignored, their count); 0, still connected to ``logits``,
        when every pixel is ignored (where ``CrossEntropyLoss`` would give NaN)."""
        count = (mask != self.ignore_index).sum()
        total = F.cross_entropy(logits, mask, ignore_index=self.ignore_index, reduction="sum")
        return total / count.clamp(min=1), count

    def empty_loss_message(self, epoch: int) -> str:
        """Every training pixel of the epoch carried the ignore label."""
        return (f"every training pixel of epoch {epoch} has the ignore label {self.ignore_index} "
                f"(MODEL.NUM_CLASSES - 1): the loss was empty for the whole epoch; check MODEL.NUM_CLASSES and the "
                f"label files under DATASET.DATA_PATH")

    @staticmethod
    def inference_size(cfg: CfgNode, height: int, width: int) -> tuple[int, int]:
        """The size predict mode runs an image at: the validation scale, short side ``DATASET.CROP_SIZE`` and long
        side ``int(long * CROP_SIZE / short)`` (`SegmentationValTransform` without its centre crop)."""
        s = cfg.DATASET.CROP_SIZE
        if width > height:
            return s, int(width * s / height)
        return int(height * s / width), s

    @staticmethod
    def write_prediction(cfg: CfgNode, image: np.ndarray, output: torch.Tensor, folder: Path,
                         stem: str) -> list[Path]:
        """Predict mode's files for RGB ``image`` ``[H, W, 3]`` and its logits ``output`` ``[C, h, w]``, all H x W:

        ``<stem>_classes.png`` the class ids (uint8; uint16 beyond 256 classes), argmax of the logits resized
        bilinearly to H x W; ``<stem>_colour.png`` their colours (`palette` of ``DATASET.DATASET``);
        ``<stem>_side_by_side.png`` image | colours | overlay (mean of image and colours).
        """
        ids = class_map(output, image.shape[:2]).cpu().numpy()
        ids = ids.astype(np.uint8 if cfg.MODEL.NUM_CLASSES <= 256 else np.uint16)
        colours = palette(cfg.DATASET.DATASET, cfg.MODEL.NUM_CLASSES)[ids]
        overlay = ((image.astype(np.uint16) + colours) // 2).astype(np.uint8)
        return [
            write_png(folder / f"{stem}_classes.png", ids),
            write_png(folder / f"{stem}_colour.png", colours),
            write_png(folder / f"{stem}_side_by_side.png", np.concatenate([image, colours, overlay], axis=1)),
        ]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image, mask = batch
        loss, count = self._loss(self.model(image), mask)
        self.count_loss_pixels(count)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=image.size(0))
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], metric: SegmentationMetric, stage: str) -> None:
        image, mask = batch
        logits = self.model(image)
        self.log(f"{stage}/loss", self._loss(logits, mask)[0], on_epoch=True, sync_dist=True,
                 batch_size=image.size(0))
        pred = logits.argmax(dim=1)
        metric.update(pred, mask)
        if self._shown is None:
            self._shown = (image[0].detach(), mask[0].detach(), pred[0].detach())

    def _log_images(self) -> None:
        """Input, colour-coded ground truth and prediction of the first validation image, to TensorBoard."""
        board = self._tensorboard()
        if board is None:
            return
        image, mask, pred = (t.cpu() for t in self._shown)
        colours = self._palette
        step = self.global_step
        board.experiment.add_image("valid_viz/image", denormalize(image), step)
        board.experiment.add_image("valid_viz/mask_gt", colours[mask].permute(2, 0, 1), step)
        board.experiment.add_image("valid_viz/mask_est", colours[pred].permute(2, 0, 1), step)


def main() -> None:
    """Command-line entry point."""
    parser = build_parser(__doc__.splitlines()[0], test=False)
    run_cli(lambda args: fit(args, "segmentation", SegmentationModule), parser)


if __name__ == "__main__":
    main()
