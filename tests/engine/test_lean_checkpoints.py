"""The checkpoints of a training run: last.ckpt (full state) every epoch, the best epoch weights-only.

A toy LightningModule under the project's Trainer (`engine.trainer.build_trainer`): its validation metric falls
every epoch, so only epoch 0 is the best while last.ckpt must still follow every epoch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from configs import load_config
from engine.checkpoints import CONFIG_KEY
from engine.cli import Devices
from engine.task_module import DenseTaskModule
from engine.trainer import build_trainer

REPO = Path(__file__).resolve().parents[2]


class Toy(DenseTaskModule):
    """One linear layer; ``valid/mIoU`` = 1 - epoch / 10, so the best epoch is 0."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"model_type": "toy", "max_lr": 0.1, "epochs": 3, "weight_decay": 0.0})
        self.model = torch.nn.Linear(4, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.count_loss_pixels(torch.tensor(y.numel()))
        return torch.nn.functional.mse_loss(self.model(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("valid/mIoU", 1.0 - self.current_epoch / 10)

    def on_validation_epoch_start(self) -> None:
        """No metric objects in the toy."""

    def on_validation_epoch_end(self) -> None:
        """No metric objects in the toy."""


def test_last_every_epoch_best_weights_only(tmp_path):
    cfg = load_config("segmentation", REPO / "configs/segmentation/upernet_bidense_demo.yaml",
                      ["OUTPUT_DIR", str(tmp_path), "TRAINING.NUM_EPOCHS", "3", "TRAINING.BATCH_SIZE", "4",
                       "TRAINING.BATCH_SIZE_ON_1_GPU", "4", "TRAINING.LOG_EVERY_N_STEPS", "1"])
    folder = tmp_path / "run"
    trainer = build_trainer(cfg, Devices("cpu", 1), folder, "valid/mIoU")
    data = TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
    module = Toy()
    module.recorded_config = cfg.dump()
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    files = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert files == ["best-epoch000.ckpt", "last.ckpt"]
    last = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(folder / "checkpoints" / "best-epoch000.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 6 and best["epoch"] == 0
    assert {"optimizer_states", "lr_schedulers", "callbacks"} <= set(last)
    assert not {"optimizer_states", "lr_schedulers", "callbacks"} & set(best)
    assert best[CONFIG_KEY] == last[CONFIG_KEY] == cfg.dump()
    assert best["hyper_parameters"]["model_type"] == "toy"
    assert not torch.equal(best["state_dict"]["model.weight"], last["state_dict"]["model.weight"])
    torch.testing.assert_close(last["state_dict"]["model.weight"], module.model.weight.detach())
    best_state = next(v for k, v in last["callbacks"].items() if "valid/mIoU" in k)
    assert float(best_state["best_model_score"]) == 1.0 and best_state["best_model_path"].endswith("best-epoch000.ckpt")
