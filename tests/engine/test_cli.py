"""Config loading, overrides, --gpus parsing and checkpoint checks: values and one-line errors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from configs import ConfigError, get_defaults, load_config
from engine.checkpoints import check_checkpoint_matches, check_not_finished, check_state_dict, load_checkpoint
from engine.cli import build_parser, parse_gpus
from engine.run import check_launcher
from engine.trainer import _limits, accumulation

REPO = Path(__file__).resolve().parents[2]

# The authors' released configs/depth/upernet_bidense_nyu.yaml, verbatim: it must load unchanged.
AUTHORS_NYU_YAML = """DATASET:
  DATASET: 'nyu'
  DATA_PATH: '../dataset/nyu_depth_v2/sync/'
  GT_PATH: '../dataset/nyu_depth_v2/sync/'
  FILENAMES_FILE: 'train_test_inputs/nyudepthv2_train_files_with_gt.txt'
  DATA_PATH_EVAL: '../dataset/nyu_depth_v2/official_splits/test/'
  GT_PATH_EVAL: '../dataset/nyu_depth_v2/official_splits/test/'
  FILENAMES_FILE_EVAL: 'train_test_inputs/nyudepthv2_test_files_with_gt.txt'

  INPUT_HEIGHT: 416
  INPUT_WIDTH: 544

PREPROCESSING:
  DO_RANDOM_ROTATE: True
  DEGREE: 2.5

TRAINING:
  NUM_THREADS: 16
  BATCH_SIZE: 32
  BATCH_SIZE_ON_1_GPU: 4
  NUM_EPOCHS: 50
  MAX_LR: 6e-5

ONLINE_EVAL:
  MIN_DEPTH_EVAL: 1e-3
  MAX_DEPTH_EVAL: 10
  GARG_CROP: False
  EIGEN_CROP: True

MODEL:
  MODEL_TYPE: 'upernet'
  BINARY_TYPE: 'bidense'
  MAX_DEPTH: 10"""

# The authors' configs/segmentation/upernet_bidense_ade20k.yaml, verbatim.
AUTHORS_ADE_YAML = """DATASET:
  DATASET: 'ade20k'
  DATA_PATH: '../dataset'

TRAINING:
  NUM_THREADS: 16
  BATCH_SIZE: 32
  BATCH_SIZE_ON_1_GPU: 4
  NUM_EPOCHS: 50
  MAX_LR: 1e-4
  EVAL_FREQ: 1

MODEL:
  MODEL_TYPE: 'upernet'
  BINARY_TYPE: 'bidense'
  NUM_CLASSES: 151
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_authors_yamls_load_unchanged(tmp_path):
    nyu = load_config("depth", write(tmp_path, AUTHORS_NYU_YAML, "nyu.yaml"))
    assert nyu.TRAINING.MAX_LR == pytest.approx(6e-5) and isinstance(nyu.TRAINING.MAX_LR, float)
    assert nyu.ONLINE_EVAL.MIN_DEPTH_EVAL == pytest.approx(1e-3)
    assert nyu.MODEL.MAX_DEPTH == 10.0 and nyu.ONLINE_EVAL.EIGEN_CROP is True
    assert nyu.DATASET.INPUT_HEIGHT == 416 and nyu.PREPROCESSING.DEGREE == 2.5
    ade = load_config("segmentation", write(tmp_path, AUTHORS_ADE_YAML, "ade.yaml"))
    assert (ade.TRAINING.BATCH_SIZE_ON_1_GPU, ade.MODEL.NUM_CLASSES, ade.TRAINING.MAX_LR) == (4, 151, 1e-4)
    assert ade.DATASET.TRAIN_SPLIT == "train" and ade.TRAINING.WEIGHT_DECAY == 0.01  # our additions' defaults


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_every_shipped_yaml_loads(task):
    paths = sorted((REPO / "configs" / task).glob("*.yaml"))
    assert len(paths) >= 8
    for path in paths:
        cfg = load_config(task, path)
        assert path.stem.startswith(f"{cfg.MODEL.MODEL_TYPE}_{cfg.MODEL.BINARY_TYPE}_")


def test_paper_settings_in_yamls():
    """Spot checks of the released per-config settings (README, Training recipe)."""
    seg = REPO / "configs" / "segmentation"
    depth = REPO / "configs" / "depth"
    voc = load_config("segmentation", seg / "upernet_bidense_pascal_voc.yaml")
    assert (voc.TRAINING.NUM_EPOCHS, voc.TRAINING.BATCH_SIZE_ON_1_GPU, voc.MODEL.NUM_CLASSES) == (200, 4, 22)
    assert voc.DATASET.TRAIN_SPLIT == "train"
    assert load_config("segmentation", seg / "dpt_bidense_ade20k.yaml").TRAINING.MAX_LR == 2e-4
    kitti = load_config("depth", depth / "upernet_fp32_kitti.yaml")
    assert (kitti.TRAINING.BATCH_SIZE, kitti.TRAINING.BATCH_SIZE_ON_1_GPU, kitti.MODEL.MAX_DEPTH) == (64, 16, 80.0)
    assert kitti.ONLINE_EVAL.GARG_CROP and kitti.PREPROCESSING.DO_KB_CROP and kitti.TRAINING.LOSS_MIN_DEPTH == 1.0
    assert load_config("depth", depth / "dpt_bidense_kitti.yaml").TRAINING.MAX_LR == 3e-5


def test_overrides_are_typed():
    cfg = load_config("segmentation", None, ["TRAINING.MAX_LR", "1", "TRAINING.PRECISION", "32",
                                             "DATASET.DATASET", "demo", "TRAINING.LIMIT_TRAIN_BATCHES", "3"])
    assert cfg.TRAINING.MAX_LR == 1.0 and isinstance(cfg.TRAINING.MAX_LR, float)
    assert cfg.TRAINING.PRECISION == "32" and cfg.DATASET.DATASET == "demo"
    depth = load_config("depth", None, ["TRAINING.LOSS_MIN_DEPTH", "0.5", "ONLINE_EVAL.EIGEN_CROP", "false"])
    assert depth.TRAINING.LOSS_MIN_DEPTH == 0.5 and depth.ONLINE_EVAL.EIGEN_CROP is False


@pytest.mark.parametrize(("written", "limit"), [("1", 1), ("3", 3), ("0.25", 0.25), ("3.0", 3), ("1.0", None)])
def test_batch_limits_follow_lightning(written, limit):
    """As Lightning's ``limit_*_batches``: an integer is a number of batches (``1`` is one batch, not all of them), a
    float <= 1 a fraction; the float 1.0 (all batches) passes nothing to the Trainer."""
    cfg = load_config("segmentation", None, ["TRAINING.LIMIT_VAL_BATCHES", written, "TRAINING.LIMIT_TRAIN_BATCHES",
                                             written])
    assert type(cfg.TRAINING.LIMIT_VAL_BATCHES) is type(ast.literal_eval(written))
    t = cfg.TRAINING
    got = _limits(limit_val_batches=t.LIMIT_VAL_BATCHES, limit_train_batches=t.LIMIT_TRAIN_BATCHES)
    want = {} if limit is None else {"limit_val_batches": limit, "limit_train_batches": limit}
    assert got == want and all(type(v) is type(limit) for v in got.values())
    again = load_config("segmentation", None, ["TRAINING.LIMIT_VAL_BATCHES", "2", "TRAINING.LIMIT_VAL_BATCHES",
                                               written])  # a later override replaces an integer by a float
    assert again.TRAINING.LIMIT_VAL_BATCHES == cfg.TRAINING.LIMIT_VAL_BATCHES
    assert type(again.TRAINING.LIMIT_VAL_BATCHES) is type(cfg.TRAINING.LIMIT_VAL_BATCHES)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["TRAINING.MAX_LRR", "1e-4"], "unknown key TRAINING.MAX_LRR (did you mean TRAINING.MAX_LR?)"),
        (["MODEL.NUM_CLASES", "7"], "did you mean MODEL.NUM_CLASSES?"),
        (["TRAINING.MAX_LR"], "overrides must be KEY VALUE pairs; got 1 tokens"),
        (["TRAINING.BATCH_SIZE", "abc"], "key TRAINING.BATCH_SIZE expects int, got 'abc'"),
        (["TRAINING.BATCH_SIZE", "2.5"], "key TRAINING.BATCH_SIZE expects int"),
        (["TRAINING.BATCH_SIZE", "0"], "key TRAINING.BATCH_SIZE must be positive"),
        (["TRAINING.PRECISION", "8"], "TRAINING.PRECISION '8' is not one of"),
        (["TRAINING.STOP_AT_EPOCH", "99"], "STOP_AT_EPOCH must lie in 0..NUM_EPOCHS"),
        (["RANDOM_SEED", "-1"], "key RANDOM_SEED must lie in 0..4294967295, got -1"),
        (["RANDOM_SEED", str(2**32)], "key RANDOM_SEED must lie in 0..4294967295, got 4294967296"),
        (["DATASET.CROP_SIZE", "1"], "key DATASET.CROP_SIZE must be at least 2 pixels, got 1"),
        (["DATASET.BASE_SIZE", "0"], "key DATASET.BASE_SIZE must be at least 2 pixels, got 0"),
        (["TRAINING.EVAL_FREQ", "-1"], "key TRAINING.EVAL_FREQ must not be negative (0 = never), got -1"),
    ],
)
def test_override_errors_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("segmentation", None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.yaml not found"):
        load_config("segmentation", tmp_path / "nope.yaml")
    bad = write(tmp_path, "TRAINING:\n  MAX_LR: [1,\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML at line \d+"):
        load_config("segmentation", bad)
    typo = write(tmp_path, "TRAINING:\n  BATCH_SIZ: 4\n", "typo.yaml")
    with pytest.raises(ConfigError, match=r"config .*typo.yaml: unknown key TRAINING.BATCH_SIZ \(did you mean "
                                          r"TRAINING.BATCH_SIZE\?\)"):
        load_config("segmentation", typo)
    wrong = write(tmp_path, "MODEL:\n  NUM_CLASSES: many\n", "wrong.yaml")
    with pytest.raises(ConfigError, match="wrong.yaml: key MODEL.NUM_CLASSES expects int, got 'many'"):
        load_config("segmentation", wrong)
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config("segmentation", write(tmp_path, "- 1\n- 2\n", "list.yaml"))


def test_defaults_are_all_commented():
    """Every key of default.py is preceded by a comment line (the "every key commented" rule)."""
    for task in ("segmentation", "depth"):
        lines = (REPO / "configs" / task / "default.py").read_text().splitlines()
        assigned = [i for i, line in enumerate(lines) if line.startswith("_C.") and "= CN()" not in line]
        assert len(assigned) == sum(1 for _ in _leaves(get_defaults(task)))
        assert all(lines[i - 1].startswith("#") for i in assigned), task


def _leaves(node, prefix=""):
    for key, value in node.items():
        if hasattr(value, "items"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_parse_gpus_on_this_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = parse_gpus(None)
    assert (auto.accelerator, auto.count) == ("cpu", 1) and "CPU" in auto.notice
    cpu = parse_gpus(None, cpu_processes=2)
    assert (cpu.accelerator, cpu.devices, cpu.count) == ("cpu", 2, 2)
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        parse_gpus("0")
    for bad in ("0,,1", "a", "-1", "", "\u00b2", "0,\u00b9", "1.0", "0x1", "+1"):
        with pytest.raises(ConfigError, match="expected comma-separated GPU indices"):
            parse_gpus(bad)
    with pytest.raises(ConfigError, match="exclude each other"):
        parse_gpus("0", cpu_processes=2)
    with pytest.raises(ConfigError, match="positive integer"):
        parse_gpus(None, cpu_processes=0)


def test_parse_gpus_with_two_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_gpus(None).devices == [0, 1]
    assert parse_gpus("1").devices == [1]
    with pytest.raises(ConfigError, match="GPU 3 does not exist \\(2 visible: 0..1\\)"):
        parse_gpus("0,3")
    with pytest.raises(ConfigError, match="repeated"):
        parse_gpus("1,1")


def test_accumulation_reaches_the_effective_batch(monkeypatch):
    """accumulate = BATCH_SIZE / (BATCH_SIZE_ON_1_GPU x devices x nodes) (README, Training and evaluation); a
    BATCH_SIZE that is not a multiple of the per-step batch is refused, naming the three factors."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cfg = load_config("segmentation", None, ["TRAINING.BATCH_SIZE", "32", "TRAINING.BATCH_SIZE_ON_1_GPU", "2"])
    assert accumulation(cfg, parse_gpus("0,1,2,3")) == 4
    assert accumulation(cfg, parse_gpus("0")) == 16
    two_nodes = load_config("segmentation", None, ["TRAINING.BATCH_SIZE_ON_1_GPU", "4", "TRAINING.NUM_NODES", "2"])
    assert accumulation(two_nodes, parse_gpus("0,1,2,3")) == 1
    with pytest.raises(ConfigError) as err:
        accumulation(cfg, parse_gpus("0,1,2"))
    assert str(err.value) == ("TRAINING.BATCH_SIZE 32 is not a multiple of TRAINING.BATCH_SIZE_ON_1_GPU 2 x 3 "
                              "process(es) x TRAINING.NUM_NODES 1 = 6: gradient accumulation cannot reach that "
                              "effective batch; change one of them")
    too_big = load_config("segmentation", None, ["TRAINING.BATCH_SIZE_ON_1_GPU", "8", "TRAINING.NUM_NODES", "2"])
    with pytest.raises(ConfigError, match="= 64: gradient accumulation cannot reach"):
        accumulation(too_big, parse_gpus("0,1,2,3"))


def test_parser_keeps_overrides_after_options():
    args = build_parser("t", test=False).parse_intermixed_args(
        ["c.yaml", "TRAINING.MAX_LR", "1e-3", "--gpus", "0", "MODEL.NUM_CLASSES", "7"])
    assert args.gpus == "0" and args.overrides == ["TRAINING.MAX_LR", "1e-3", "MODEL.NUM_CLASSES", "7"]
    test_args = build_parser("t", test=True).parse_intermixed_args(["c.yaml", "x.ckpt", "TRAINING.NUM_THREADS", "0"])
    assert test_args.checkpoint == "x.ckpt" and test_args.overrides == ["TRAINING.NUM_THREADS", "0"]


def test_checkpoint_checks(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint .*missing.ckpt not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.ckpt cannot be loaded"):
        load_checkpoint(junk)
    plain = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(1)}, plain)
    with pytest.raises(ConfigError, match="not a Lightning checkpoint"):
        load_checkpoint(plain)
    ckpt = {"state_dict": {}, "hyper_parameters": {"model_type": "upernet", "binary_type": "bidense", "num_classes": 7}}
    check_checkpoint_matches(ckpt, "a.ckpt", {"model_type": "upernet", "binary_type": "bidense", "num_classes": 7})
    with pytest.raises(ConfigError) as err:
        check_checkpoint_matches(ckpt, "a.ckpt", {"model_type": "upernet", "binary_type": "react", "num_classes": 151})
    assert str(err.value) == ("checkpoint a.ckpt does not match the config (checkpoint vs config): "
                              "binary_type 'bidense' vs 'react'; num_classes 7 vs 151")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["DATASET.INPUT_HEIGHT", "1"], "key DATASET.INPUT_HEIGHT must be at least 2 pixels, got 1"),
        (["ONLINE_EVAL.EVAL_FREQ", "-2"], "key ONLINE_EVAL.EVAL_FREQ must not be negative"),
        (["ONLINE_EVAL.MIN_DEPTH_EVAL", "10", "ONLINE_EVAL.MAX_DEPTH_EVAL", "1"],
         "keys ONLINE_EVAL.MIN_DEPTH_EVAL (10.0) and MAX_DEPTH_EVAL (1.0) must satisfy 0 <= MIN_DEPTH_EVAL < "
         "MAX_DEPTH_EVAL"),
        (["ONLINE_EVAL.MIN_DEPTH_EVAL", "5", "ONLINE_EVAL.MAX_DEPTH_EVAL", "5"], "MIN_DEPTH_EVAL < MAX_DEPTH_EVAL"),
    ],
)
def test_depth_range_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("depth", None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_empty_and_duplicate_yaml_and_file_paths_are_refused(tmp_path):
    for text in ("", "# nothing but a comment\n"):
        with pytest.raises(ConfigError, match=r"config file .*empty.yaml is empty"):
            load_config("segmentation", write(tmp_path, text, "empty.yaml"))
    twice = write(tmp_path, "TRAINING:\n  MAX_LR: 1e-4\n  BATCH_SIZE: 8\n  MAX_LR: 2e-4\n", "twice.yaml")
    with pytest.raises(ConfigError, match=r"twice.yaml is not valid YAML at line 4: key MAX_LR is given twice"):
        load_config("segmentation", twice)
    sections = write(tmp_path, "MODEL:\n  NUM_CLASSES: 7\nTRAINING:\n  MAX_LR: 1\nMODEL:\n  BINARY_TYPE: bnn\n",
                     "sections.yaml")
    with pytest.raises(ConfigError, match="at line 5: key MODEL is given twice"):
        load_config("segmentation", sections)
    a_file = write(tmp_path, "x", "data.txt")
    with pytest.raises(ConfigError, match=f"key DATASET.DATA_PATH {a_file} is a file; it must name a folder"):
        load_config("segmentation", None, ["DATASET.DATA_PATH", str(a_file)])
    with pytest.raises(ConfigError, match=f"key DATASET.GT_PATH_EVAL {a_file} is a file"):
        load_config("depth", None, ["DATASET.GT_PATH_EVAL", str(a_file)])


def test_argument_errors_exit_with_status_1(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser("t", test=True).parse_intermixed_args(["only-a-config.yaml", "--cpu-processes", "x"])
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--cpu-processes: invalid int value: 'x'" in lines[0]


def test_several_nodes_need_a_launcher(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    one = load_config("segmentation", None)
    check_launcher(one)
    two = load_config("segmentation", None, ["TRAINING.NUM_NODES", "2"])
    with pytest.raises(ConfigError) as err:
        check_launcher(two)
    assert str(err.value).startswith("TRAINING.NUM_NODES 2: start one process per GPU on each of the 2 nodes with "
                                     "torchrun (--nnodes 2")
    assert "SLURM srun (--nodes 2" in str(err.value)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "3")
    check_launcher(two)
    for key in ("SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key)
    for key, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "node0"}.items():
        monkeypatch.setenv(key, value)
    check_launcher(two)


class Payload:
    """Pickles as ``open(marker, "w")``: loading it with pickle creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_crafted_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": Payload(marker)}, evil)
    with pytest.raises(ConfigError) as err:
        load_checkpoint(evil)
    assert str(err.value) == (f"checkpoint {evil} is refused: it contains io.open, which is not a tensor or "
                              "plain value and could run code when loaded")
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


def test_checkpoint_weights_must_fit_the_model(tmp_path):
    model = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4), "c.bias": torch.zeros(1)}
    check_state_dict({"state_dict": dict(model)}, "x.ckpt", model)
    names = [f"decoder.block{i}.conv.weight" for i in range(40)]
    stored = {"a.weight": torch.zeros(3, 3), "extra": torch.zeros(1)}
    full = {**model, **{name: torch.zeros(1) for name in names}}
    with pytest.raises(ConfigError) as err:
        check_state_dict({"state_dict": stored}, "x.ckpt", full)
    message = str(err.value)
    assert message.startswith("checkpoint x.ckpt does not fit the model's weights: 42 missing: b.weight, c.bias, "
                              "decoder.block0.conv.weight, ")
    assert all(name in message for name in names) and "\n" not in message
    assert message.endswith("; 1 unexpected: extra; 1 of another shape (checkpoint vs model): a.weight (3, 3) vs "
                            "(2, 3)")


def test_resume_of_a_finished_run_has_nothing_to_do():
    cfg = load_config("segmentation", None, ["TRAINING.NUM_EPOCHS", "4"])
    progress = {"loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 4}}}}, "epoch": 3}
    with pytest.raises(ConfigError) as err:
        check_not_finished(progress, "last.ckpt", cfg)
    assert str(err.value) == ("--resume last.ckpt: the checkpoint has already trained 4 epochs and "
                              "TRAINING.NUM_EPOCHS 4 asks for 4: nothing to do (raise TRAINING.NUM_EPOCHS with "
                              "--allow-config-change to train longer)")
    check_not_finished({"epoch": 2}, "last.ckpt", cfg)
    stop = load_config("segmentation", None, ["TRAINING.NUM_EPOCHS", "4", "TRAINING.STOP_AT_EPOCH", "3"])
    with pytest.raises(ConfigError, match="trained 3 epochs and TRAINING.STOP_AT_EPOCH 3 asks for 3"):
        check_not_finished({"epoch": 2}, "last.ckpt", stop)
