"""models.pack: every model and method computes bit-identically after packing; the size targets; the command; the
file format and its one-line errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from configs.loading import ConfigError
from models.pack import FORMAT, VERSION, checkpoint_from_packed, load_packed, main, pack_checkpoint

CASES = [(model_type, binary_type) for model_type in models.list_models()
         for binary_type in models.supported_methods(model_type)]
NUM_CLASSES = 151  # the ADE20K head, as the README's size table
TARGET_BYTES = {("upernet", "bidense"): 8e6, ("dpt", "bidense"): 9e6}


def _randomise(model: nn.Module, seed: int) -> None:
    """Non-trivial biases, DAB / shift / PReLU / scale parameters and BatchNorm statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("weight") or p.dim() < 2:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(11)


def _ckpt(model: nn.Module, hyper: dict) -> dict:
    return {"state_dict": {"model." + k: v for k, v in model.state_dict().items()}, "hyper_parameters": hyper,
            "epoch": 4}


@pytest.mark.parametrize(("model_type", "binary_type"), CASES)
def test_packed_model_is_bit_identical(model_type, binary_type, tmp_path):
    torch.manual_seed(0)
    hyper = {"model_type": model_type, "binary_type": binary_type, "num_classes": NUM_CLASSES}
    model = models.build_model("segmentation", model_type, binary_type, num_classes=NUM_CLASSES)
    _randomise(model, 1)
    model.eval()
    path = tmp_path / "model.packed"
    torch.save(pack_checkpoint(_ckpt(model, hyper)), path)
    state, stored = load_packed(path)
    assert stored == hyper
    fresh = models.build_model("segmentation", model_type, binary_type, num_classes=NUM_CLASSES)
    fresh.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    fresh.eval()
    x = torch.randn(1, 3, 56 if model_type == "dpt" else 32, 56 if model_type == "dpt" else 32)
    with torch.no_grad():
        expected, got = model(x), fresh(x)
    assert torch.equal(got, expected)
    limit = TARGET_BYTES.get((model_type, binary_type))
    if limit is None:
        return
    assert path.stat().st_size <= limit


def test_command_packs_a_depth_checkpoint_and_reports_sizes(tmp_path, capsys):
    torch.manual_seed(0)
    hyper = {"model_type": "upernet", "binary_type": "bnn", "max_depth": 10.0, "dataset": "nyu", "max_lr": 6e-5}
    model = models.build_model("depth", "upernet", "bnn", max_depth=10.0)
    _randomise(model, 2)
    ckpt = tmp_path / "best.ckpt"
    torch.save({**_ckpt(model, hyper), "optimizer_states": [{}]}, ckpt)
    out = tmp_path / "best.bin"  # any name: the format marker identifies the file
    assert main([str(ckpt), str(out)]) == 0
    line = capsys.readouterr().out
    assert str(out) in line and "MB" in line and "x smaller" in line
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == FORMAT and raw["version"] == VERSION and raw["epoch"] == 4
    loaded = checkpoint_from_packed(raw, out)
    assert loaded["hyper_parameters"] == hyper and loaded["epoch"] == 4
    fresh = models.build_model("depth", "upernet", "bnn", max_depth=10.0).eval()
    fresh.load_state_dict({k.removeprefix("model."): v for k, v in loaded["state_dict"].items()})
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), model.eval()(x))


def test_files_of_another_kind_or_version_fail_in_one_line(tmp_path):
    other = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ConfigError, match=f"{other} is not a packed BiDense checkpoint") as err:
        load_packed(other)
    assert "\n" not in str(err.value)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ConfigError, match=f"packed checkpoint {text} cannot be loaded: ") as err:
        load_packed(text)
    assert "\n" not in str(err.value)
    newer = tmp_path / "newer.packed"
    torch.save({"format": FORMAT, "version": VERSION + 1}, newer)
    with pytest.raises(ConfigError, match=f"{newer} has format version {VERSION + 1}; this code reads versions up "
                                          f"to {VERSION}"):
        load_packed(newer)
    with pytest.raises(ConfigError, match="not found"):
        load_packed(tmp_path / "missing.packed")


def test_checkpoint_naming_no_model_or_other_weights_is_refused():
    model = models.build_model("segmentation", "upernet", "react", num_classes=5)
    with pytest.raises(ConfigError, match="does not name a model"):
        pack_checkpoint({"state_dict": {}, "hyper_parameters": {"model_type": "upernet"}}, "x.ckpt")
    hyper = {"model_type": "upernet", "binary_type": "bidense", "num_classes": 5}
    with pytest.raises(ConfigError, match="x.ckpt: its weights do not fit upernet bidense"):
        pack_checkpoint(_ckpt(model, hyper), "x.ckpt")


def test_command_refuses_to_overwrite_its_input(tmp_path, capsys):
    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main([str(ckpt), str(ckpt)])
    assert exit_info.value.code == 1 and "is the checkpoint itself" in capsys.readouterr().err
