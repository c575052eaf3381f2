"""Faults during training: kill and resume, non-finite loss, atomic and failing checkpoint writes, a
resumed run whose config changed, an unwritable run folder.

The end-to-end cases run ``train_segmentation.py`` as a separate process on the demo config with tiny overrides,
forked from a warm server (tests/engine/script_processes.py), and stop it with real signals. Faults that cannot be
caused from outside (a NaN loss, a full disk) are injected by patching one library function in that process before
the script starts (see `mark_training_steps`); the production code carries no test hook.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml

from configs import ConfigError, load_config
from engine.callbacks import EpochSeed, NonFiniteLossGuard, epoch_seed
from engine.checkpoints import (
    AtomicCheckpointIO,
    atomic_save,
    check_resume_config,
    config_changes,
    load_checkpoint,
    remove_stale_temporaries,
)
from engine.cli import Devices
from engine.errors import CheckpointWriteError, EmptyLoss
from engine.task_module import DenseTaskModule
from engine.trainer import RUN_DIR_ENV, build_trainer, run_dir
from tests.engine.script_processes import Finished, ScriptProcess, run_script, script_env

REPO = Path(__file__).resolve().parents[2]
SEG_DEMO = "configs/segmentation/upernet_bidense_demo.yaml"
STEPS = 3  # training batches per epoch
RUN = "segmentation/upernet_bidense_demo"

# Faults injected into a run before the script starts (the `prepare` of `ScriptProcess`): each patches one library
# function in the forked process only.


def mark_training_steps() -> None:
    """Each training loss (cross-entropy under autograd, not validation) prints a line "train step"."""
    cross_entropy = F.cross_entropy

    def marked(*args, **kwargs):
        if torch.is_grad_enabled():
            print("train step", flush=True)
        return cross_entropy(*args, **kwargs)

    F.cross_entropy = marked


def nan_training_loss() -> None:
    """Each training loss is NaN."""
    cross_entropy = F.cross_entropy

    def nan(*args, **kwargs):
        loss = cross_entropy(*args, **kwargs)
        return loss * float("nan") if torch.is_grad_enabled() else loss

    F.cross_entropy = nan


def third_save_fails() -> None:
    """The third torch.save call (the first checkpoint of the second epoch) fails with ENOSPC."""
    save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(obj, f, *args, **kwargs)

    torch.save = full_disk


ENV = {"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def env() -> dict[str, str]:
    """One thread (runs compared bit for bit compute alike), no warnings, no inherited run folder."""
    return script_env(**ENV)


def start(*args: str, logs: Path, prepare: Callable[[], None] | None = None) -> ScriptProcess:
    """``python train_segmentation.py SEG_DEMO *args`` with `env`, forked from the warm server."""
    return ScriptProcess("train_segmentation.py", [SEG_DEMO, *args], env(), logs, prepare)


def train(*args: str, logs: Path, prepare: Callable[[], None] | None = None, ok: bool = True) -> Finished:
    done = run_script("train_segmentation.py", SEG_DEMO, *args, folder=logs, prepare=prepare, **ENV)
    if ok:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def tiny(data: Path, out: Path, epochs: int = 2) -> list[str]:
    return ["DATASET.DATA_PATH", str(data), "OUTPUT_DIR", str(out), "DATASET.BASE_SIZE", "32",
            "DATASET.CROP_SIZE", "32", "TRAINING.BATCH_SIZE", "4", "TRAINING.BATCH_SIZE_ON_1_GPU", "4",
            "TRAINING.LIMIT_TRAIN_BATCHES", str(STEPS), "TRAINING.LIMIT_VAL_BATCHES", "2", "TRAINING.NUM_THREADS",
            "0", "TRAINING.LOG_EVERY_N_STEPS", "1", "TRAINING.MAX_LR", "1e-3", "TRAINING.NUM_EPOCHS", str(epochs)]


def error_line(proc: Finished) -> str:
    """The one-line error a failed run ends with (progress bars may precede it on stderr); no traceback."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if line.strip()][-1]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path: Path) -> dict:
    return load_checkpoint(path, lightning=False)


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
    out_a, out_b, logs = (tmp_path_factory.mktemp(name) for name in ("a", "b", "logs"))
    train(*tiny(data, out_a), logs=logs)
    killed = start(*tiny(data, out_b), logs=logs, prepare=mark_training_steps)
    try:
        # the loss of the second epoch's first batch: kill in the middle of that step
        steps = killed.wait_for_output("train step", STEPS + 1)
        assert killed.process.is_alive() and steps == STEPS + 1, "the run ended before it could be killed"
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(30).returncode == -signal.SIGKILL
    finally:
        killed.kill()
    return {"data": data, "a": out_a / RUN / "version_0", "b_out": out_b, "b0": out_b / RUN / "version_0",
            "logs": logs}


def test_sigkill_then_resume_matches_the_uninterrupted_run(runs):
    """Same final weights (bit for bit) and same epoch-1 metrics as the run that was never killed."""
    last_b0 = runs["b0"] / "checkpoints" / "last.ckpt"
    assert load(last_b0)["epoch"] == 0
    assert not list((runs["b0"] / "checkpoints").glob(".*.tmp"))
    train(*tiny(runs["data"], runs["b_out"]), "--resume", str(last_b0), logs=runs["logs"])
    resumed = runs["b_out"] / RUN / "version_1"
    a, b = load(runs["a"] / "checkpoints" / "last.ckpt"), load(resumed / "checkpoints" / "last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 2 * STEPS)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    metrics = epoch_metrics(runs["a"], 1)
    assert {"train/loss_epoch", "valid/mIoU"} <= set(metrics)
    assert epoch_metrics(resumed, 1) == metrics


def signal_in_step(args: list[str], step: int, signum: int, logs: Path,
                   before: Callable[[], None] = lambda: None) -> Finished:
    """Start a marked run; while it computes training loss number ``step`` (1-based), call ``before`` and send
    ``signum``; wait for the run to end."""
    process = start(*args, logs=logs, prepare=mark_training_steps)
    try:
        seen = process.wait_for_output("train step", step)
        assert process.process.is_alive() and seen == step, process.stderr()[-3000:]
        before()
        os.kill(process.pid, signum)
        return process.wait(120)
    finally:
        process.kill()


def test_sigterm_keeps_last_ckpt_says_how_to_resume_and_the_resume_matches(runs, tmp_path):
    """SIGTERM (preemption) in epoch 1: exit 143, one line with the exact command to continue, epoch 0's
    last.ckpt untouched; running that command ends with the weights of the run that was never stopped."""
    out = tmp_path / "out"
    args = tiny(runs["data"], out)
    last = out / RUN / "version_0" / "checkpoints" / "last.ckpt"
    digests = []
    proc = signal_in_step(args, STEPS + 1, signal.SIGTERM, tmp_path, lambda: digests.append(digest(last)))
    stderr = proc.stderr
    assert proc.returncode == 143, stderr[-3000:]
    line = [line for line in stderr.splitlines() if line.strip()][-1]
    resume = ["python", "train_segmentation.py", SEG_DEMO, "--resume", str(last), *args]
    assert line == (f"train_segmentation.py: interrupted by SIGTERM in epoch 1; checkpoint {last} is kept and the "
                    f"epoch restarts from it; continue with: {shlex.join(resume)}")
    assert digests == [digest(last)] and load(last)["epoch"] == 0
    assert not list(last.parent.glob(".*.tmp"))
    _, script, *rest = shlex.split(line.split("continue with: ", 1)[1])
    continued = ScriptProcess(script, rest, env(), tmp_path).wait()
    assert continued.returncode == 0, continued.stderr[-3000:]
    a = load(runs["a"] / "checkpoints" / "last.ckpt")
    b = load(out / RUN / "version_1" / "checkpoints" / "last.ckpt")
    assert (b["epoch"], b["global_step"]) == (1, 2 * STEPS)
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name


def test_sigint_before_the_first_checkpoint(runs, tmp_path):
    """Ctrl-C in the first training step: exit 130 and the command that starts the run again (no checkpoint)."""
    out = tmp_path / "out"
    args = tiny(runs["data"], out)
    proc = signal_in_step(args, 1, signal.SIGINT, tmp_path)
    stderr = proc.stderr
    assert proc.returncode == 130, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1] == ("train_segmentation.py: interrupted by SIGINT in epoch 0, before any checkpoint was written; "
                         f"start again with: {shlex.join(['python', 'train_segmentation.py', SEG_DEMO, *args])}")
    assert not list((out / RUN / "version_0" / "checkpoints").glob("*"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(runs):
    """Resume for epoch 1 (with an allowed config change) under a NaN loss: a one-line error naming the epoch and
    step, last.ckpt byte-identical, no checkpoint written by the failed run."""
    last = runs["b0"] / "checkpoints" / "last.ckpt"
    before = digest(last)
    proc = train(*tiny(runs["data"], runs["b_out"]), "TRAINING.MAX_LR", "2e-3", "--resume", str(last),
                 "--allow-config-change", logs=runs["logs"], prepare=nan_training_loss, ok=False)
    assert "resuming with a changed config (--allow-config-change): TRAINING.MAX_LR 0.001 -> 0.002" in proc.stdout
    line = error_line(proc)
    assert line.startswith("train_segmentation.py: error: non-finite training loss (nan) at epoch 1, step 3 "
                           "(batch 0 of the epoch)"), line
    assert f"last good checkpoint: {last}" in line
    assert digest(last) == before
    folders = sorted((runs["b_out"] / RUN).iterdir())
    failed = folders[-1]
    assert failed.name not in ("version_0", "version_1") and not list(failed.rglob("*.ckpt"))


def test_resume_with_a_changed_config_is_refused(runs, run_main):
    last = runs["b0"] / "checkpoints" / "last.ckpt"
    before = sorted(p.name for p in (runs["b_out"] / RUN).iterdir())
    ran = run_main("train_segmentation", SEG_DEMO, *tiny(runs["data"], runs["b_out"]), "TRAINING.MAX_LR",
                   "2e-3", "DATASET.CROP_SIZE", "48", "--resume", str(last))
    assert ran.code == 1 and ran.err == [(
        f"train_segmentation.py: error: --resume {last}: the config differs from the one the checkpoint was trained "
        "with (checkpoint -> now): DATASET.CROP_SIZE 32 -> 48; TRAINING.MAX_LR 0.001 -> 0.002; pass "
        "--allow-config-change to resume anyway")]
    assert sorted(p.name for p in (runs["b_out"] / RUN).iterdir()) == before


def test_full_disk_mid_run_keeps_the_previous_checkpoint(runs, tmp_path):
    """The first checkpoint write of epoch 1 fails with ENOSPC: one line naming the file, epoch 0's files intact."""
    proc = train(*tiny(runs["data"], tmp_path), logs=tmp_path / "logs", prepare=third_save_fails, ok=False)
    line = error_line(proc)
    folder = tmp_path / RUN / "version_0" / "checkpoints"
    assert line.startswith(f"train_segmentation.py: error: cannot save checkpoint {folder}/"), line
    assert "No space left on device; the previous file there (if any) is intact" in line
    assert load(folder / "last.ckpt")["epoch"] == 0
    assert [load(p)["epoch"] for p in folder.glob("best-*.ckpt")] == [0]
    assert not list(folder.glob(".*.tmp"))


def test_unwritable_run_folder_is_a_one_line_error(tmp_path, run_main):
    blocker = tmp_path / "out"
    blocker.write_text("a file where the run folder should go\n")
    ran = run_main("train_segmentation", SEG_DEMO, "OUTPUT_DIR", str(blocker), "DATASET.DATA_PATH",
                   str(tmp_path / "data"))
    assert ran.code == 1 and len(ran.err) == 1
    line = ran.err[0]
    assert line.startswith(f"train_segmentation.py: error: cannot create the run folder {blocker}/{RUN} "
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
    assert torch.equal(load(path)["w"], torch.arange(4.0))
    monkeypatch.setattr(torch, "save", half_then(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(CheckpointWriteError) as err:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(4)}, path)
    assert str(err.value) == (f"cannot save checkpoint {path}: No space left on device; the previous file there "
                              "(if any) is intact")
    assert torch.equal(load(path)["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    monkeypatch.setattr(torch, "save", real_save)
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(4)}, path)
    assert torch.equal(load(path)["w"], torch.ones(4))


def test_sigkill_while_saving_leaves_a_whole_file(tmp_path):
    """A process rewriting a 16 MB checkpoint in a loop is SIGKILLed: the file still loads, whole."""
    path = tmp_path / "last.ckpt"
    atomic_save({"step": -1, "w": torch.full((4 << 20,), -1.0)}, path)
    writer = tmp_path / "rewrite.py"
    writer.write_text("import sys, torch\nfrom engine.checkpoints import atomic_save\nfor step in range(10**6):\n"
                      "    atomic_save({'step': step, 'w': torch.full((4 << 20,), float(step))}, sys.argv[1])\n")
    process = ScriptProcess(str(writer), [str(path)], env(), tmp_path / "logs")
    try:
        deadline = time.monotonic() + 60
        while load(path)["step"] < 1 and process.process.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.13)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
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


# Run folders, temporary files, full disks.


def test_concurrent_runs_claim_distinct_folders(tmp_path, monkeypatch):
    """16 threads and 4 processes claim a run folder of the same config at the same moment: 20 distinct folders,
    all created. The segmentation and depth demos (same config name) land in different folders."""
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cfg = load_config("segmentation", REPO / SEG_DEMO, ["OUTPUT_DIR", str(tmp_path)])
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(20)
    results = ctx.Queue()

    def claim() -> None:
        barrier.wait()
        results.put(str(run_dir(cfg, SEG_DEMO, "segmentation")))

    procs = [ctx.Process(target=claim) for _ in range(4)]
    for proc in procs:
        proc.start()
    with ThreadPoolExecutor(16) as pool:
        for future in [pool.submit(claim) for _ in range(16)]:
            future.result()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    folders = [results.get(timeout=10) for _ in range(20)]
    assert len(set(folders)) == 20 and all(Path(f).is_dir() for f in folders)
    assert sorted(p.name for p in (tmp_path / RUN).iterdir()) == sorted(f"version_{i}" for i in range(20))
    depth = load_config("depth", REPO / "configs/depth/upernet_bidense_demo.yaml", ["OUTPUT_DIR", str(tmp_path)])
    assert run_dir(depth, "configs/depth/upernet_bidense_demo.yaml", "depth") == (
        tmp_path / "depth" / "upernet_bidense_demo" / "version_0")


def test_stale_temporary_files_are_removed_on_start(tmp_path, monkeypatch):
    """A new run of the config removes the temporary files of killed writers (process gone, older than a minute);
    a live writer's file and a fresh one stay. A --resume cleans the resumed folder the same way."""
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    folder = tmp_path / RUN / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    old = time.time() - 3600
    stale = folder / f".last.ckpt.{dead}.tmp"
    live = folder / f".last.ckpt.{os.getpid()}.tmp"
    fresh = folder / f".best-epoch003.ckpt.{dead}.tmp"
    other = folder / ".notes.tmp"
    for path in (stale, live, fresh, other):
        path.write_bytes(b"partial")
    for path in (stale, live, other):
        os.utime(path, (old, old))
    cfg = load_config("segmentation", REPO / SEG_DEMO, ["OUTPUT_DIR", str(tmp_path)])
    assert run_dir(cfg, SEG_DEMO, "segmentation").name == "version_1"
    assert not stale.exists() and live.exists() and fresh.exists() and other.exists()
    os.utime(fresh, (old, old))
    assert remove_stale_temporaries([folder]) == [fresh]


def test_full_file_system_keeps_the_previous_checkpoint(tmp_path):
    """On a real 1 MiB tmpfs: writing a 2 MiB checkpoint fails with the one-line message, the previous checkpoint
    is intact and no temporary file remains (needs root to mount; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    except OSError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        path = mount / "last.ckpt"
        atomic_save({"w": torch.arange(4.0)}, path)
        with pytest.raises(CheckpointWriteError) as err:
            atomic_save({"w": torch.zeros(1 << 19)}, path)
        assert str(err.value) == (f"cannot save checkpoint {path}: No space left on device; the previous file there "
                                  "(if any) is intact")
        assert torch.equal(load(path)["w"], torch.arange(4.0))
        assert sorted(p.name for p in mount.iterdir()) == ["last.ckpt"]
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# The RuntimeError torch's zip writer raises when a write comes up short (a full disk), exactly as torch words it.
TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


def test_torch_writer_errors_are_one_line_and_keep_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_save({"w": torch.arange(4.0)}, path)

    def short_write(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise RuntimeError(TORCH_SHORT_WRITE)

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(CheckpointWriteError) as err:
        atomic_save({"w": torch.zeros(4)}, path)
    assert str(err.value) == (f"cannot save checkpoint {path}: RuntimeError: {TORCH_SHORT_WRITE}; the previous file "
                              "there (if any) is intact")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100 << 30, 100 << 30, 4096))
    with pytest.raises(CheckpointWriteError, match="last.ckpt: No space left on device; the previous file"):
        atomic_save({"w": torch.zeros(4)}, path)
    assert torch.equal(load(path)["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# The schedule on resume and the empty-loss guard, through Lightning's real loops on a tiny task module.


class Tiny(DenseTaskModule):
    """A linear model on random data with the task modules' optimiser, schedule and guards."""

    main_metric = "loss"

    def __init__(self, epochs: int, max_lr: float = 1e-2, weight_decay: float = 0.01, counted: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = torch.nn.Linear(3, 1)
        self.lrs: dict[int, tuple[float, float]] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.count_loss_pixels(torch.tensor(x.shape[0] if self.hparams.counted else 0))
        return ((self.model(x) - y) ** 2).mean()

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        group = self.trainer.optimizers[0].param_groups[0]
        self.lrs[self.current_epoch] = (group["lr"], group["betas"][0])

    def empty_loss_message(self, epoch: int) -> str:
        return f"nothing counted in epoch {epoch}"


def tiny_fit(module: Tiny, epochs: int, folder: Path, resume: Path | None = None) -> L.Trainer:
    data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randn(8, 1))
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1, limit_val_batches=0,
                        plugins=[AtomicCheckpointIO()], default_root_dir=folder)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4), ckpt_path=resume)
    return trainer


def one_cycle_after(steps: int, epochs: int, max_lr: float) -> tuple[float, float]:
    """(lr, beta1) of a fresh AdamW + OneCycleLR(max_lr, epochs) after ``steps`` epoch steps."""
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=max_lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, epochs=epochs, steps_per_epoch=1)
    for _ in range(steps):
        opt.step()
        schedule.step()
    return opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]


@pytest.mark.parametrize(("epochs", "max_lr"), [(4, 1e-2), (5, 3e-2), (3, 1e-2)])
def test_resume_follows_a_changed_schedule(epochs, max_lr, tmp_path):
    """Two epochs of a 2-epoch schedule, then resumed with NUM_EPOCHS / MAX_LR changed: the resumed epochs run at
    the new schedule's learning rate and momentum for their epoch, to the end, without the old schedule's
    'Tried to step 3 times' crash; the weights come from the checkpoint."""
    first = tiny_fit(Tiny(2), 2, tmp_path)
    ckpt = tmp_path / "two.ckpt"
    first.save_checkpoint(ckpt)
    resumed = Tiny(epochs, max_lr)
    tiny_fit(resumed, epochs, tmp_path, resume=ckpt)
    assert sorted(resumed.lrs) == list(range(2, epochs))
    for epoch, (lr, beta1) in resumed.lrs.items():
        want_lr, want_beta1 = one_cycle_after(epoch, epochs, max_lr)
        assert lr == pytest.approx(want_lr, rel=1e-12) and beta1 == pytest.approx(want_beta1, rel=1e-12), epoch
    saved = tmp_path / "end.ckpt"
    resumed.trainer.save_checkpoint(saved)
    state = load(saved)["lr_schedulers"][0]
    assert (state["total_steps"], state["last_epoch"]) == (epochs, epochs)


def test_unchanged_resume_keeps_the_stored_schedule(tmp_path):
    first = tiny_fit(Tiny(4), 2, tmp_path)
    ckpt = tmp_path / "two.ckpt"
    first.save_checkpoint(ckpt)
    stored = load(ckpt)
    resumed = Tiny(4)
    resumed.on_load_checkpoint(stored)
    assert stored["lr_schedulers"][0] == load(ckpt)["lr_schedulers"][0]
    assert stored["optimizer_states"][0]["param_groups"] == load(ckpt)["optimizer_states"][0]["param_groups"]


def test_an_epoch_without_loss_pixels_stops_the_run(tmp_path):
    with pytest.raises(EmptyLoss, match="^nothing counted in epoch 0$"):
        tiny_fit(Tiny(2, counted=False), 2, tmp_path)
    tiny_fit(Tiny(1), 1, tmp_path)


def test_task_modules_name_the_key_of_an_empty_loss():
    """Segmentation: an all-ignored batch has loss 0 (not NaN) and zero gradients, and the message names
    MODEL.NUM_CLASSES; depth: the message names TRAINING.LOSS_MIN_DEPTH and its value."""
    from train_depth import DepthModule
    from train_segmentation import SegmentationModule

    seg = SegmentationModule("upernet", "bidense", 7, "demo", 1e-3, 2)
    logits = torch.randn(2, 7, 4, 4, requires_grad=True)
    loss, count = seg._loss(logits, torch.full((2, 4, 4), 6))
    loss.backward()
    assert loss.item() == 0.0 and count.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))
    mask = torch.randint(0, 7, (2, 4, 4))
    loss, count = seg._loss(logits, mask)
    reference = torch.nn.functional.cross_entropy(logits, mask, ignore_index=6)
    assert count.item() == (mask != 6).sum().item() and loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert seg.empty_loss_message(3).startswith("every training pixel of epoch 3 has the ignore label 6 "
                                                "(MODEL.NUM_CLASSES - 1)")
    depth = DepthModule("upernet", "bidense", 10.0, 0.85, 20.0, 1e-3, 10.0, None, 1e-3, 2)
    assert depth.empty_loss_message(0) == ("no ground-truth depth of epoch 0 lies above TRAINING.LOSS_MIN_DEPTH "
                                           "(20.0 m): the loss was 0 for the whole epoch; lower "
                                           "TRAINING.LOSS_MIN_DEPTH or check the depth maps under DATASET.GT_PATH")


def test_signals_become_interrupted_with_the_conventional_status():
    """Inside a Lightning loop: SIGTERMException (SIGTERM) -> 143, Lightning's sys.exit(1) after a KeyboardInterrupt
    (SIGINT) -> 130, any other exit unchanged. Outside: the installed SIGTERM handler raises at once."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from engine.interrupt import Interrupted, lightning_signals, sigterm_raises

    with pytest.raises(Interrupted) as err, lightning_signals(lambda s: f"stopped by {signal.Signals(s).name}"):
        raise SIGTERMException
    assert (err.value.exit_code, str(err.value)) == (143, "stopped by SIGTERM")
    with pytest.raises(Interrupted) as err, lightning_signals(lambda s: f"stopped by {signal.Signals(s).name}"):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)
    assert (err.value.exit_code, str(err.value)) == (130, "stopped by SIGINT")
    with pytest.raises(SystemExit) as plain, lightning_signals(str):
        sys.exit(3)
    assert plain.value.code == 3
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as err, sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert err.value.exit_code == 143 and "interrupted by SIGTERM before training" in str(err.value)
    assert signal.getsignal(signal.SIGTERM) == previous
