"""End to end from the command line on the demo set: train, resume, test, DDP on the CPU, one-line errors.

Each script runs as its own process as a user would run it, with tiny overrides (32-pixel crops, a few steps):
from the shell where a fresh interpreter matters (what the console shows, an error from the shell), otherwise
forked from a warm server (tests/engine/script_processes.py), or in this process (`run_main`).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.checkpoints import load_checkpoint
from models.pack import main as pack_main
from tests.engine.script_processes import Finished, run_script

REPO = Path(__file__).resolve().parents[2]
SEG_DEMO = "configs/segmentation/upernet_bidense_demo.yaml"
DEPTH_DEMO = "configs/depth/upernet_bidense_demo.yaml"
STEPS = 3  # training batches per epoch
DDP_IMAGES = 6  # validation images per process in the DDP evaluation


def run_warm(script: str, *args: str, folder: Path, **env_vars: str) -> Finished:
    """``python script *args`` forked from the warm server (`run_script`); it must succeed."""
    done = run_script(script, *args, folder=folder, PYTHONWARNINGS="ignore", **env_vars)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run(script: str, *args: str, expect_ok: bool = True, **env_vars: str) -> subprocess.CompletedProcess:
    """``python script *args`` started from the shell, a fresh interpreter."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **env_vars}
    env.pop("BIDENSE_RUN_DIR", None)
    proc = subprocess.run([sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def tiny(data: Path, out: Path) -> list[str]:
    """Overrides that make the segmentation demo a seconds-long run."""
    return ["DATASET.DATA_PATH", str(data), "OUTPUT_DIR", str(out), "DATASET.BASE_SIZE", "32",
            "DATASET.CROP_SIZE", "32", "TRAINING.BATCH_SIZE", "4", "TRAINING.BATCH_SIZE_ON_1_GPU", "4",
            "TRAINING.LIMIT_TRAIN_BATCHES", str(STEPS), "TRAINING.LIMIT_VAL_BATCHES", "2", "TRAINING.NUM_THREADS",
            "0", "TRAINING.LOG_EVERY_N_STEPS", "1", "TRAINING.MAX_LR", "1e-3"]


def read_csv(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def epoch_values(rows: list[dict[str, str]], key: str) -> dict[int, float]:
    return {int(r["epoch"]): float(r[key]) for r in rows if r.get(key) and r.get("epoch")}


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict[str, Path]:
    """Two epochs of a three-epoch schedule (STOP_AT_EPOCH 2), then --resume for the last epoch."""
    out = tmp_path_factory.mktemp("runs")
    first = run("train_segmentation.py", SEG_DEMO, *tiny(data, out), "TRAINING.NUM_EPOCHS", "3",
                "TRAINING.STOP_AT_EPOCH", "2", PYTHONWARNINGS="")  # the warnings a user sees
    run_a = out / "segmentation" / "upernet_bidense_demo" / "version_0"
    assert f"run folder: {run_a}" in first.stdout
    run_warm("train_segmentation.py", SEG_DEMO, *tiny(data, out), "TRAINING.NUM_EPOCHS", "3",
             "--resume", str(run_a / "checkpoints" / "last.ckpt"), folder=tmp_path_factory.mktemp("logs"))
    return {"a": run_a, "b": out / "segmentation" / "upernet_bidense_demo" / "version_1", "data": data, "out": out,
            "console": first.stdout + first.stderr}


def test_training_writes_run_folder_and_loss_falls(trained):
    run_a = trained["a"]
    ckpts = sorted(p.name for p in (run_a / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(name.startswith("best-epoch") for name in ckpts)
    assert "DATASET: demo" in (run_a / "config.yaml").read_text()
    assert list(run_a.glob("events.out.tfevents.*"))
    rows = read_csv(run_a)
    assert len([r for r in rows if r.get("train/loss_step")]) == 2 * STEPS
    assert sorted(epoch_values(rows, "train/loss_epoch")) == [0, 1]
    val_loss = epoch_values(rows, "valid/loss")  # the same images each epoch (3 training batches are too noisy)
    assert sorted(val_loss) == [0, 1] and val_loss[1] < val_loss[0]
    miou = epoch_values(rows, "valid/mIoU")
    assert sorted(miou) == [0, 1] and all(0.0 <= v <= 1.0 for v in miou.values())
    ckpt = load_checkpoint(run_a / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2 * STEPS
    assert ckpt["hyper_parameters"]["binary_type"] == "bidense" and ckpt["hyper_parameters"]["num_classes"] == 7


def test_console_shows_binary_counts_and_no_known_noise(trained):
    """The binary-aware Params / OPs line instead of Lightning's summary (which counts latent float weights:
    "40.0 M"), and none of the four known-harmless notices."""
    console = trained["console"]
    counts = re.search(r"upernet bidense: Params ([\d,.]+) K, OPs ([\d.]+) G at 1x3x32x32", console)
    assert counts, console[-3000:]
    assert 1000 < float(counts.group(1).replace(",", "")) < 2500 and 0 < float(counts.group(2)) < 1
    for noise in ("Trainable params", "Total params", "litlogger", "litmodels", "exists and is not empty",
                  "OneCycleLR", "LeafSpec"):
        assert noise not in console, noise


def test_best_checkpoint_is_weights_only_and_evaluates(trained, run_main):
    """best-epochNNN.ckpt: weights, identity, config and epoch, no optimizer state, about a third of last.ckpt;
    the test script evaluates it."""
    folder = trained["a"] / "checkpoints"
    best = next(folder.glob("best-epoch*.ckpt"))
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert {"state_dict", "hyper_parameters", "bidense_config", "epoch"} <= set(ckpt)
    assert not {"optimizer_states", "lr_schedulers", "callbacks"} & set(ckpt)
    assert "DATASET: demo" in ckpt["bidense_config"] and ckpt["hyper_parameters"]["num_classes"] == 7
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert torch.equal(last["state_dict"]["model.head.classifier.weight"],
                       ckpt["state_dict"]["model.head.classifier.weight"]) == (ckpt["epoch"] == last["epoch"])
    assert best.stat().st_size < 0.4 * (folder / "last.ckpt").stat().st_size
    assert run_main("test_segmentation", SEG_DEMO, str(best), *tiny(trained["data"], trained["out"])).code == 0
    result = json.loads(best.with_name(best.stem + ".test.json").read_text())
    assert result["epoch"] == ckpt["epoch"] and 0.0 <= result["metrics"]["mIoU"] <= 1.0


def test_resume_from_a_best_checkpoint_is_one_line(trained, tmp_path, run_main):
    best = next((trained["a"] / "checkpoints").glob("best-epoch*.ckpt"))
    ran = run_main("train_segmentation", SEG_DEMO, "--resume", str(best), *tiny(trained["data"], tmp_path))
    assert ran.code == 1 and len(ran.err) == 1
    assert "holds the weights only" in ran.err[0] and f"--weights {best}" in ran.err[0]
    assert not any(tmp_path.iterdir())


def test_resume_continues_the_schedule(trained):
    """The resumed run trains epoch 2 only, from global step 2 x STEPS, at OneCycleLR's epoch-2 learning rate."""
    rows = read_csv(trained["b"])
    assert sorted(epoch_values(rows, "valid/mIoU")) == [2]
    ckpt = load_checkpoint(trained["b"] / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 3 * STEPS
    lr_logged = [float(r["lr-AdamW"]) for r in rows if r.get("lr-AdamW")]
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, epochs=3, steps_per_epoch=1)
    for _ in range(2):
        opt.step()
        schedule.step()
    assert lr_logged and lr_logged[0] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)


def test_test_script_writes_json_and_ddp_matches_one_process(trained, tmp_path):
    """mIoU accumulated over a set is the same with one process and with two DDP processes: the first 12 validation
    images, 6 per process (the distributed sampler deals them out in turn).

    Batches of one image and one thread per process, so that both runs compute every image alike (a binary
    network turns the last-bit differences of batched or multi-threaded convolutions into flipped signs).
    """
    ckpt = trained["b"] / "checkpoints" / "last.ckpt"
    args = [SEG_DEMO, str(ckpt), *tiny(trained["data"], trained["out"]), "TRAINING.BATCH_SIZE_ON_1_GPU", "1"]
    single = run_warm("test_segmentation.py", *args, "TRAINING.LIMIT_VAL_BATCHES", str(2 * DDP_IMAGES),
                      "--cpu-processes", "1", folder=tmp_path, OMP_NUM_THREADS="1")
    assert "mIoU" in single.stdout
    result = json.loads(ckpt.with_name("last.test.json").read_text())
    one = result["metrics"]
    assert 0.0 <= one["mIoU"] <= 1.0 and 0.0 < one["pixAcc"] <= 1.0 and result["epoch"] == 2
    run_warm("test_segmentation.py", *args, "TRAINING.LIMIT_VAL_BATCHES", str(DDP_IMAGES), "--cpu-processes", "2",
             folder=tmp_path, OMP_NUM_THREADS="1")
    two = json.loads(ckpt.with_name("last.test.json").read_text())["metrics"]
    for key in ("mIoU", "pixAcc", "mIoU_present"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


def test_packed_checkpoint_evaluates_like_the_ckpt(trained, tmp_path, run_main):
    """train -> python -m models.pack -> test_segmentation.py: the packed file gives the .ckpt's metrics exactly;
    --resume refuses it in one line. (In-process: both evaluations run in one process alike.)"""
    ckpt = trained["b"] / "checkpoints" / "last.ckpt"
    packed = tmp_path / "last-1bit.pt"  # any name: the format marker identifies the file
    assert pack_main([str(ckpt), str(packed)]) == 0
    assert packed.stat().st_size * 10 < ckpt.stat().st_size
    copy = tmp_path / "last.ckpt"
    copy.write_bytes(ckpt.read_bytes())
    args = [*tiny(trained["data"], tmp_path), "TRAINING.LIMIT_VAL_BATCHES", "8", "TRAINING.BATCH_SIZE_ON_1_GPU", "1"]
    assert run_main("test_segmentation", SEG_DEMO, str(copy), *args).code == 0
    assert run_main("test_segmentation", SEG_DEMO, str(packed), *args).code == 0
    from_ckpt = json.loads(copy.with_name("last.test.json").read_text())
    from_packed = json.loads(packed.with_name("last-1bit.test.json").read_text())
    assert from_packed["metrics"] == from_ckpt["metrics"] and from_packed["epoch"] == from_ckpt["epoch"]
    ran = run_main("train_segmentation", SEG_DEMO, *tiny(trained["data"], tmp_path / "runs"), "--resume", str(packed))
    assert ran.code == 1 and len(ran.err) == 1 and "is a packed 1-bit file" in ran.err[0] and str(packed) in ran.err[0]


def test_checkpoint_for_another_model_is_refused(trained, run_main):
    ckpt = trained["a"] / "checkpoints" / "last.ckpt"
    ran = run_main("test_segmentation", SEG_DEMO, str(ckpt), *tiny(trained["data"], trained["out"]),
                   "MODEL.BINARY_TYPE", "react")
    assert ran.code == 1 and len(ran.err) == 1 and "does not match the config" in ran.err[0]
    assert "binary_type 'bidense' vs 'react'" in ran.err[0]


def test_unknown_key_fails_in_one_line_from_the_shell(tmp_path):
    proc = run("train_segmentation.py", SEG_DEMO, "OUTPUT_DIR", str(tmp_path), "TRAINING.MAX_LRR", "1",
               expect_ok=False)
    assert proc.returncode == 1
    assert one_line_error(proc) == ("train_segmentation.py: error: command-line override: unknown key "
                                    "TRAINING.MAX_LRR (did you mean TRAINING.MAX_LR?)")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("train_segmentation", [SEG_DEMO, "TRAINING.MAX_LR"], "overrides must be KEY VALUE pairs"),
        ("train_segmentation", [SEG_DEMO, "--gpus", "0,,1"], "expected comma-separated GPU indices"),
        ("train_segmentation", [SEG_DEMO, "--gpus", "a"], "expected comma-separated GPU indices"),
        ("train_segmentation", [SEG_DEMO, "MODEL.BINARY_TYPE", "bidence"], "bidence"),
        ("train_segmentation", [SEG_DEMO, "MODEL.MODEL_TYPE", "segformer"], "segformer"),
        ("train_segmentation", [SEG_DEMO, "DATASET.DATASET", "cityscapes"], "cityscapes"),
        ("train_depth", ["nope.yaml"], "config file nope.yaml not found"),
        ("train_depth", [DEPTH_DEMO, "--resume", "missing.ckpt"], "checkpoint missing.ckpt not found"),
        ("test_depth", [DEPTH_DEMO, "missing.ckpt"], "checkpoint missing.ckpt not found"),
        ("train_segmentation", [SEG_DEMO, "--cpu-processes", "x"], "--cpu-processes: invalid int value: 'x'"),
        ("train_segmentation", [SEG_DEMO, "MODEL.BINARY_TYPE", "fp32", "MODEL.PRETRAINED", "README.md"],
         "MODEL.PRETRAINED file README.md cannot be loaded: UnpicklingError"),
        ("train_segmentation", [SEG_DEMO, "TRAINING.NUM_NODES", "2"],
         "TRAINING.NUM_NODES 2: start one process per GPU on each of the 2 nodes with torchrun"),
        ("train_depth", [DEPTH_DEMO, "TRAINING.BATCH_SIZE", "12"],
         "TRAINING.BATCH_SIZE 12 is not a multiple of TRAINING.BATCH_SIZE_ON_1_GPU 8 x 1 process(es)"),
        ("train_depth", [DEPTH_DEMO, "--resume", "configs"], "checkpoint configs is not a file"),
    ],
)
def test_bad_input_fails_in_one_line(script, args, message, tmp_path, monkeypatch, run_main):
    """In-process (fast): exit status 1, one line on stderr naming the culprit, nothing written."""
    if ("--gpus" in args or "TRAINING.BATCH_SIZE" in args) and torch.cuda.is_available():
        pytest.skip("runs where no GPU is visible")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    ran = run_main(script, *args, "OUTPUT_DIR", str(tmp_path), "DATASET.DATA_PATH", str(tmp_path / "data"))
    assert ran.code == 1
    assert len(ran.err) == 1 and message in ran.err[0], ran.err
    assert not any(tmp_path.iterdir())


def test_cuda_asked_where_none(monkeypatch, run_main):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ran = run_main("test_depth", DEPTH_DEMO, "x.ckpt", "--gpus", "0")
    assert ran.code == 1 and any("--gpus 0: no CUDA GPU is visible on this machine" in line for line in ran.err)


def test_depth_train_then_test(data, tmp_path, run_main):
    overrides = ["DATASET.DATA_PATH", str(data), "OUTPUT_DIR", str(tmp_path), "DATASET.INPUT_HEIGHT", "32",
                 "DATASET.INPUT_WIDTH", "32", "TRAINING.BATCH_SIZE_ON_1_GPU", "2", "TRAINING.BATCH_SIZE", "2",
                 "TRAINING.LIMIT_TRAIN_BATCHES", "2", "TRAINING.LIMIT_VAL_BATCHES", "2", "TRAINING.NUM_EPOCHS", "1",
                 "TRAINING.NUM_THREADS", "0"]
    run_warm("train_depth.py", DEPTH_DEMO, *overrides, folder=tmp_path / "logs")
    folder = tmp_path / "depth" / "upernet_bidense_demo" / "version_0"
    assert 0.0 <= epoch_values(read_csv(folder), "valid/d1")[0] <= 1.0
    ckpt = folder / "checkpoints" / "last.ckpt"
    ran = run_main("test_depth", DEPTH_DEMO, str(ckpt), *overrides)
    assert ran.code == 0
    metrics = json.loads(ckpt.with_name("last.test.json").read_text())["metrics"]
    assert {"d1", "d2", "d3", "abs_rel", "rmse"} <= set(metrics) and "d1" in ran.out
    assert metrics["d1"] <= metrics["d2"] <= metrics["d3"] <= 1.0


@pytest.mark.parametrize(("script", "args"), [
    ("train_segmentation", ["--resume", "{ckpt}"]),
    ("train_segmentation", ["--weights", "{ckpt}"]),
    ("test_segmentation", ["{ckpt}"]),
])
def test_a_crafted_checkpoint_never_runs(script, args, tmp_path, run_main):
    """A checkpoint whose pickle would create a file when unpickled: every script refuses it in one line naming
    the file and the type it needs, and the file is never created."""
    marker = tmp_path / "payload-ran"
    ckpt = tmp_path / "evil.ckpt"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    torch.save({"state_dict": {}, "epoch": 0, "loops": Payload()}, ckpt)
    ran = run_main(script, SEG_DEMO, *(a.format(ckpt=ckpt) for a in args), "OUTPUT_DIR", str(tmp_path / "runs"),
                   "DATASET.DATA_PATH", str(tmp_path / "data"))
    assert ran.code == 1
    assert ran.err == [f"{script}.py: error: checkpoint {ckpt} is refused: it contains io.open, which is not a tensor "
                     "or plain value and could run code when loaded"]
    assert not marker.exists() and not (tmp_path / "runs").exists()
