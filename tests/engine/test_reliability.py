"""Faults during training: kill and resume, non-finite loss, atomic and failing checkpoint writes, a
resumed run whose config changed, an unwritable run folder.

The end-to-end cases run ``train_segmentation.py`` in a subprocess on the demo config with tiny overrides (as
tests/engine/test_pipeline_e2e.py does). Faults that cannot be caused from outside (a NaN loss, a full disk) are
injected by starting the real script through a small launcher that patches one library function first (see `launch`);
the production code carries no test hook.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from configs import ConfigError, load_config
from engine.callbacks import EpochSeed, NonFiniteLossGuard, epoch_seed
from engine.checkpoints import AtomicCheckpointIO, atomic_save, check_resume_config, config_changes
from engine.cli import Devices
from engine.errors import CheckpointWriteError
from engine.trainer import build_trainer

REPO = Path(__file__).resolve().parents[2]
SEG_DEMO = "configs/segmentation/upernet_bidense_demo.yaml"
STEPS = 3  # training batches per epoch
RUN = "upernet_bidense_demo"

# Start a script as ``python -c LAUNCHER <patch> script args``: apply the named patch, then run the script as
# __main__. "mark": each training loss (cross-entropy under autograd, not validation) prints a line "train step".
# "nan": each training loss is NaN. "enospc": the third torch.save call (the first checkpoint of the second epoch)
# fails with ENOSPC.
LAUNCHER = """
import errno, os, runpy, sys
import torch
import torch.nn.functional as F
patch, script = sys.argv[1], sys.argv[2]
ce = F.cross_entropy
if patch == "mark":
    def marked(*a, **k):
        if torch.is_grad_enabled():
            print("train step", flush=True)
        return ce(*a, **k)
    F.cross_entropy = marked
elif patch == "nan":
    F.cross_entropy = lambda *a, **k: ce(*a, **k) * float("nan") if torch.is_grad_enabled() else ce(*a, **k)
elif patch == "enospc":
    save, calls = torch.save, []
    def full_disk(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(obj, f, *a, **k)
    torch.save = full_disk
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def env() -> dict[str, str]:
    """One thread (runs compared bit for bit compute alike), no warnings, no inherited run folder."""
    out = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out.pop("BIDENSE_RUN_DIR", None)
    return out


def command(*args: str, patch: str | None = None) -> list[str]:
    prefix = [sys.executable, "-c", LAUNCHER, patch] if patch else [sys.executable]
    return [*prefix, "train_segmentation.py", SEG_DEMO, *args]


def train(*args: str, patch: str | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(*args, patch=patch), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def tiny(data: Path, out: Path, epochs: int = 2) -> list[str]:
    return ["DATASET.DATA_PATH", str(data), "OUTPUT_DIR", str(out), "DATASET.BASE_SIZE", "32",
            "DATASET.CROP_SIZE", "32", "TRAINING.BATCH_SIZE", "4", "TRAINING.BATCH_SIZE_ON_1_GPU", "4",
            "TRAINING.LIMIT_TRAIN_BATCHES", str(STEPS), "TRAINING.LIMIT_VAL_BATCHES", "2", "TRAINING.NUM_THREADS",
            "0", "TRAINING.LOG_EVERY_N_STEPS", "1", "TRAINING.MAX_LR", "1e-3", "TRAINING.NUM_EPOCHS", str(epochs)]


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one-line error a failed run ends with (progress bars may precede it on stderr); no traceback."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if line.strip()][-1]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def epoch_metrics(folder: Path, epoch: int) -> dict[str, str]:
    import csv

    with open(folder / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("epoch") == str(epoch)]
    keys = ("train/loss_epoch", "valid/mIoU", "valid/pixAcc", "valid/loss")
    return {k: r[k] for r in rows for k in keys if r.get(k)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A: two epochs uninterrupted. B: the same run SIGKILLed during its second epoch, then resumed."""
    data = tmp_path_factory.mktemp("data")
    out_a, out_b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    train(*tiny(data, out_a))
    killed = subprocess.Popen(command(*tiny(data, out_b), patch="mark"), cwd=REPO, env=env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        steps = 0
        for line in killed.stdout:
            steps += line.count("train step")  # the progress bar shares stdout, without newlines
            if steps == STEPS + 1:  # the loss of the second epoch's first batch: kill in the middle of that step
                break
        assert killed.poll() is None and steps == STEPS + 1, "the run ended before it could be killed"
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        killed.kill()
        killed.stdout.close()
    return {"data": data, "a": out_a / RUN / "version_0", "b_out": out_b, "b0": out_b / RUN / "version_0"}


def test_sigkill_then_resume_matches_the_uninterrupted_run(runs):
    """Same final weights (bit for bit) and same epoch-1 metrics as the run that was never killed."""
    last_b0 = runs["b0"] / "checkpoints" / "last.ckpt"
    assert load(last_b0)["epoch"] == 0
    assert not list((runs["b0"] / "checkpoints").glob(".*.tmp"))
    train(*tiny(runs["data"], runs["b_out"]), "--resume", str(last_b0))
    resumed = runs["b_out"] / RUN / "version_1"
    a, b = load(runs["a"] / "checkpoints" / "last.ckpt"), load(resumed / "checkpoints" / "last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 2 * STEPS)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    metrics = epoch_metrics(runs["a"], 1)
    assert {"train/loss_epoch", "valid/mIoU"} <= set(metrics)
    assert epoch_metrics(resumed, 1) == metrics


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(runs):
    """Resume for epoch 1 (with an allowed config change) under a NaN loss: a one-line error naming the epoch and
    step, last.ckpt byte-identical, no checkpoint written by the failed run."""
    last = runs["b0"] / "checkpoints" / "last.ckpt"
    before = digest(last)
    proc = train(*tiny(runs["data"], runs["b_out"]), "TRAINING.MAX_LR", "2e-3", "--resume", str(last),
                 "--allow-config-change", patch="nan", ok=False)
    assert "resuming with a changed config (--allow-config-change): TRAINING.MAX_LR 0.001 -> 0.002" in proc.stdout
    line = error_line(proc)
    assert line.startswith("train_segmentation.py: error: non-finite training loss (nan) at epoch 1, step 3 "
                           "(batch 0 of the epoch)"), line
    assert f"last good checkpoint: {last}" in line
    assert digest(last) == before
    folders = sorted((runs["b_out"] / RUN).iterdir())
    failed = folders[-1]
    assert failed.name not in ("version_0", "version_1") and not list(failed.rglob("*.ckpt"))


def test_resume_with_a_changed_config_is_refused(runs):
    last = runs["b0"] / "checkpoints" / "last.ckpt"
    before = sorted(p.name for p in (runs["b_out"] / RUN).iterdir())
    proc = train(*tiny(runs["data"], runs["b_out"]), "TRAINING.MAX_LR", "2e-3", "DATASET.CROP_SIZE", "48",
                 "--resume", str(last), ok=False)
    assert error_line(proc) == (
        f"train_segmentation.py: error: --resume {last}: the config differs from the one the checkpoint was trained "
        "with (checkpoint -> now): DATASET.CROP_SIZE 32 -> 48; TRAINING.MAX_LR 0.001 -> 0.002; pass "
        "--allow-config-change to resume anyway")
    assert len(proc.stderr.splitlines()) == 1
    assert sorted(p.name for p in (runs["b_out"] / RUN).iterdir()) == before


def test_full_disk_mid_run_keeps_the_previous_checkpoint(runs, tmp_path):
    """The first checkpoint write of epoch 1 fails with ENOSPC: one line naming the file, epoch 0's files intact."""
    proc = train(*tiny(runs["data"], tmp_path), patch="enospc", ok=False)
    line = error_line(proc)
    folder = tmp_path / RUN / "version_0" / "checkpoints"
    assert line.startswith(f"train_segmentation.py: error: cannot save checkpoint {folder}/"), line
    assert "No space left on device; the previous file there (if any) is intact" in line
    assert load(folder / "last.ckpt")["epoch"] == 0
    assert [load(p)["epoch"] for p in folder.glob("best-*.ckpt")] == [0]
    assert not list(folder.glob(".*.tmp"))


def test_unwritable_run_folder_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("a file where the run folder should go\n")
    proc = train("OUTPUT_DIR", str(blocker), "DATASET.DATA_PATH", str(tmp_path / "data"), ok=False)
    line = error_line(proc)
    assert line.startswith(f"train_segmentation.py: error: cannot write the run folder {blocker}/{RUN}/version_0 "
                           f"(OUTPUT_DIR {blocker}): Not a directory"), line
    assert blocker.read_text() == "a file where the run folder should go\n"


# Unit level: the IO plugin, the guard, the seeds, the config comparison.


def test_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """A write that dies half-way (killed) or fails (ENOSPC): the old file loads unchanged, no temporary remains."""
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.arange(4.0)}, path)
    real_save = torch.save

    def half_then(error):
        def save(obj, f, *args, **kwargs):
            f.write(b"PK\x03\x04 half a zip")
            raise error
        return save

    monkeypatch.setattr(torch, "save", half_then(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(4)}, path)
    assert torch.equal(torch.load(path)["w"], torch.arange(4.0))
    monkeypatch.setattr(torch, "save", half_then(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(CheckpointWriteError) as err:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(4)}, path)
    assert str(err.value) == (f"cannot save checkpoint {path}: No space left on device; the previous file there "
                              "(if any) is intact")
    assert torch.equal(torch.load(path)["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    monkeypatch.setattr(torch, "save", real_save)
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(4)}, path)
    assert torch.equal(torch.load(path)["w"], torch.ones(4))


def test_sigkill_while_saving_leaves_a_whole_file(tmp_path):
    """A process rewriting a 16 MB checkpoint in a loop is SIGKILLed: the file still loads, whole."""
    path = tmp_path / "last.ckpt"
    atomic_save({"step": -1, "w": torch.full((4 << 20,), -1.0)}, path)
    code = ("import sys, torch\nfrom engine.checkpoints import atomic_save\nfor step in range(10**6):\n"
            "    atomic_save({'step': step, 'w': torch.full((4 << 20,), float(step))}, sys.argv[1])\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, env=env())
    try:
        deadline = time.monotonic() + 60
        while load(path)["step"] < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.13)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    ckpt = load(path)
    assert ckpt["step"] >= 1 and torch.equal(ckpt["w"], torch.full((4 << 20,), float(ckpt["step"])))


def test_trainer_uses_the_fault_handling(tmp_path):
    cfg = load_config("segmentation", REPO / SEG_DEMO, ["OUTPUT_DIR", str(tmp_path)])
    trainer = build_trainer(cfg, Devices("cpu", 1), tmp_path / "run", "valid/mIoU")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    kinds = {type(c) for c in trainer.callbacks}
    assert {NonFiniteLossGuard, EpochSeed} <= kinds
    assert not trainer.checkpoint_callback.save_on_exception


def test_epoch_seed_depends_on_seed_epoch_and_rank_only():
    seeds = {epoch_seed(s, e, r) for s in (1, 2) for e in (0, 1, 2) for r in (0, 1)}
    assert len(seeds) == 12 and epoch_seed(1, 2, 0) == epoch_seed(1, 2, 0)


def test_config_comparison(tmp_path):
    old = {"TRAINING": {"MAX_LR": 1e-3, "NUM_THREADS": 1, "STOP_AT_EPOCH": 2}, "OUTPUT_DIR": "a"}
    new = {"TRAINING": {"MAX_LR": 2e-3, "NUM_THREADS": 4, "STOP_AT_EPOCH": 0}, "OUTPUT_DIR": "b"}
    assert config_changes(old, new) == ["TRAINING.MAX_LR 0.001 -> 0.002"]
    cfg = load_config("segmentation", REPO / SEG_DEMO)
    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.dump())
    ckpt = run / "checkpoints" / "last.ckpt"
    assert check_resume_config({}, ckpt, cfg, allow=False) == []
    changed = load_config("segmentation", REPO / SEG_DEMO, ["MODEL.NUM_CLASSES", "9"])
    with pytest.raises(ConfigError, match=r"MODEL.NUM_CLASSES 7 -> 9; pass --allow-config-change"):
        check_resume_config({}, ckpt, changed, allow=False)
    stored = yaml.safe_load(changed.dump())
    stored["RANDOM_SEED"] = 5
    assert check_resume_config({"bidense_config": yaml.safe_dump(stored)}, ckpt, changed, allow=True) == [
        "RANDOM_SEED 5 -> 1"]
    assert check_resume_config({}, tmp_path / "elsewhere" / "x.ckpt", changed, allow=False) == []


def test_unreadable_yaml_is_a_one_line_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"TRAINING:\n  MAX_LR: 1e-4  # \xe9t\xe9\n")
    with pytest.raises(ConfigError) as err:
        load_config("segmentation", path)
    assert str(err.value).startswith(f"config file {path} cannot be read: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("how", ["--debug", "BIDENSE_DEBUG"])
def test_debug_shows_the_traceback(how, tmp_path, monkeypatch):
    """Without it the same error is one line and exit status 1 (test_pipeline_e2e.py); with it, it raises."""
    import train_segmentation

    monkeypatch.chdir(REPO)
    monkeypatch.delenv("BIDENSE_DEBUG", raising=False)
    args = [SEG_DEMO, "OUTPUT_DIR", str(tmp_path), "TRAINING.MAX_LRR", "1"]
    if how == "--debug":
        args.append("--debug")
    else:
        monkeypatch.setenv("BIDENSE_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["train_segmentation.py", *args])
    with pytest.raises(ConfigError, match="unknown key TRAINING.MAX_LRR"):
        train_segmentation.main()
    assert not any(tmp_path.iterdir())
