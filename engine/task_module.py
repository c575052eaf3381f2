"""What the segmentation and depth LightningModules share: the evaluation lifecycle and the optimiser.

A task module (`train_segmentation.SegmentationModule`, `train_depth.DepthModule`) holds ``model``,
``val_metric`` and ``test_metric`` (torchmetrics, states summed across processes) and defines ``_evaluate``
(one batch: log the loss, update the metric, keep the first sample in ``_shown``), ``_log_images`` and
``empty_loss_message``. This base runs them: metrics are reset at each epoch start and computed once at its end
over the whole set of every process (README, Training recipe and deviations); the optimiser is AdamW with
OneCycleLR stepped once per epoch (README, Training recipe), re-created for the config's schedule when a resumed
run changed it; an epoch in which no pixel entered the training loss stops the run (README, Reliability). The
merged config of a training run (``recorded_config``, YAML text) goes into every checkpoint, the weights-only
best-epoch file included, under `engine.checkpoints.CONFIG_KEY`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics import Metric

from datasets.normalize import IMAGENET_MEAN, IMAGENET_STD
from engine.checkpoints import CONFIG_KEY
from engine.errors import EmptyLoss
from engine.optimizer import adamw


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised ``[3, H, W]`` -> RGB in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    return (image.float() * std + mean).clamp(0, 1)


class DenseTaskModule(L.LightningModule):
    """Base of the task modules. Subclasses set ``main_metric`` (shown in the progress bar) and define
    ``_evaluate(batch, metric, stage)`` and ``_log_images()``; hparams must hold ``max_lr``, ``epochs`` and
    ``weight_decay``."""

    main_metric: str
    model: torch.nn.Module
    val_metric: Metric
    test_metric: Metric
    _shown: tuple[torch.Tensor, ...] | None = None
    recorded_config: str | None = None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], metric: Metric, stage: str) -> None:
        raise NotImplementedError

    def _log_images(self) -> None:
        raise NotImplementedError

    def empty_loss_message(self, epoch: int) -> str:
        """The one line reported when no pixel of epoch ``epoch`` entered the training loss, naming the likely
        config key."""
        raise NotImplementedError

    def count_loss_pixels(self, count: torch.Tensor) -> None:
        """Add the number of pixels that entered this training batch's loss (a tensor: no device sync)."""
        self._loss_pixels = self._loss_pixels + count.detach()

    def on_train_epoch_start(self) -> None:
        self._loss_pixels = torch.zeros((), dtype=torch.float64, device=self.device)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the epoch's last training batch (before its validation and checkpoint): `EmptyLoss` when no pixel
        of any process entered the loss during the whole epoch."""
        if batch_idx + 1 < self.trainer.num_training_batches:
            return
        total = self.trainer.strategy.reduce(self._loss_pixels, reduce_op="sum")
        if float(total) == 0:
            raise EmptyLoss(self.empty_loss_message(self.current_epoch))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metric, "valid")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metric, "test")

    def on_validation_epoch_start(self) -> None:
        self.val_metric.reset()
        self._shown = None

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_metric, "valid")
        if not self.trainer.sanity_checking:
            self._log_images()
        self._shown = None

    def on_test_epoch_start(self) -> None:
        self.test_metric.reset()

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_metric, "test")

    def _log_metric(self, metric: Metric, stage: str) -> None:
        """Log the scalar entries of the whole-set result (already reduced over every process) under ``stage/``."""
        for name, value in metric.compute().items():
            if torch.as_tensor(value).numel() == 1:
                self.log(f"{stage}/{name}", torch.as_tensor(value, dtype=torch.float32, device=self.device),
                         prog_bar=name == self.main_metric)
        metric.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store ``recorded_config`` (read back by `engine.checkpoints.check_resume_config`); Lightning calls this
        for full and weights-only checkpoints alike."""
        if self.recorded_config is not None:
            checkpoint[CONFIG_KEY] = self.recorded_config

    def _tensorboard(self) -> TensorBoardLogger | None:
        """The TensorBoard logger when there is one and this is the global-zero process with a sample to show."""
        board = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if board is None or self._shown is None or not self.trainer.is_global_zero:
            return None
        return board

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW + OneCycleLR(max_lr, epochs, steps_per_epoch=1) stepped once per epoch (README, Training recipe)."""
        optimizer, scheduler = self._one_cycle(self.model.parameters())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def _one_cycle(self, params: Any) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR]:
        hp = self.hparams
        optimizer = adamw(params, hp.max_lr, hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hp.max_lr, epochs=hp.epochs,
                                                        steps_per_epoch=1)
        return optimizer, scheduler

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Follow the config's schedule when a resumed run changed it (``--allow-config-change``; README,
        Reliability).

        Lightning restores OneCycleLR and the optimizer's hyper-parameters from the checkpoint after this hook;
        when ``NUM_EPOCHS``, ``MAX_LR`` or ``WEIGHT_DECAY`` differ from the stored ones, the stored scheduler state
        is replaced by that of a new OneCycleLR for the config's values, stepped once per epoch already trained
        (the fast-forward), and every parameter group's learning rate, momentum (AdamW beta1), schedule bounds and
        weight decay by those of the new schedule at that step. The moments of AdamW are kept.
        """
        schedulers, optimizers = checkpoint.get("lr_schedulers"), checkpoint.get("optimizer_states")
        if not schedulers or not optimizers:
            return
        hp = self.hparams
        stored, groups = schedulers[0], optimizers[0]["param_groups"]
        if (stored.get("total_steps") == hp.epochs and all(g.get("max_lr") == hp.max_lr
                                                           and g.get("weight_decay") == hp.weight_decay
                                                           for g in groups)):
            return
        optimizer, scheduler = self._one_cycle([torch.zeros(1, requires_grad=True)])
        for _ in range(stored["last_epoch"]):
            optimizer.step()
            scheduler.step()
        schedulers[0] = scheduler.state_dict()
        fresh = {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}
        for group in groups:
            group.update(fresh)
