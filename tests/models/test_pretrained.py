"""Standard pretrained weights of the fp32 models: torch.hub cache, local override, one-line offline error
(README, "Pretrained weights").  The suite's conftest makes every download fail and gives each test an empty
torch.hub folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from binary import get_method
from models import build_model
from models.backbones.convnext import ConvNeXt
from models.backbones.vit import dinov2_vits14
from models.pretrained import STANDARD_WEIGHTS, PretrainedWeightsUnavailable, standard_weights


def _cache() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


@pytest.mark.parametrize(("model_type", "name"), [("upernet", "convnext_tiny"), ("dpt", "dinov2_vits14")])
def test_offline_without_a_cached_file_names_the_file_and_where_to_put_it(model_type: str, name: str) -> None:
    filename = STANDARD_WEIGHTS[name][1].rsplit("/", 1)[1]
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        build_model("segmentation", model_type, "fp32", num_classes=3, pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert filename in message and str(_cache()) in message and "MODEL.PRETRAINED" in message
    assert STANDARD_WEIGHTS[name][1] in message


def test_a_cached_standard_checkpoint_is_loaded_without_network() -> None:
    source = ConvNeXt(get_method("fp32"))
    _cache().mkdir(parents=True)
    torch.save({"model": source.state_dict()}, _cache() / "convnext_tiny_1k_224_ema.pth")
    model = build_model("segmentation", "upernet", "fp32", num_classes=3, pretrained=True)
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_a_download_lands_in_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    fetched = []

    def download(url: str, dst: str, progress: bool = True) -> None:
        fetched.append(url)
        torch.save(dinov2_vits14(get_method("fp32")).state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    path = standard_weights("dinov2_vits14")
    assert path == _cache() / "dinov2_vits14_pretrain.pth" and path.is_file()
    assert fetched == [STANDARD_WEIGHTS["dinov2_vits14"][1]]
    assert standard_weights("dinov2_vits14") == path and len(fetched) == 1  # cached: no second download


def test_a_local_path_overrides_the_standard_weights(tmp_path: Path) -> None:
    source = dinov2_vits14(get_method("fp32"))
    path = tmp_path / "mine.pth"
    torch.save(source.state_dict(), path)
    model = build_model("depth", "dpt", "fp32", max_depth=10.0, pretrained=str(path))  # downloads would fail
    assert torch.equal(model.backbone.pos_embed, source.pos_embed)


@pytest.mark.parametrize("model_type", ["upernet", "dpt"])
@pytest.mark.parametrize("method", ["fp32_0", "bidense"])
def test_models_trained_from_scratch_ignore_the_default(model_type: str, method: str) -> None:
    model = build_model("depth", model_type, method, max_depth=10.0, pretrained=True)  # no download attempted
    assert not _cache().exists()
    assert model is not None


def test_training_config_default_asks_for_the_standard_weights() -> None:
    from configs import load_config
    from configs.loading import ConfigError
    from engine.run import build_module
    from train_segmentation import SegmentationModule

    yaml = Path(__file__).resolve().parents[2] / "configs" / "segmentation" / "upernet_fp32_ade20k.yaml"
    cfg = load_config("segmentation", yaml)
    assert cfg.MODEL.PRETRAINED == ""
    with pytest.raises(ConfigError, match="convnext_tiny_1k_224_ema.pth") as info:
        build_module(SegmentationModule, cfg)
    assert "\n" not in str(info.value)
    build_module(SegmentationModule, cfg, pretrained=False)  # weights from a checkpoint: nothing fetched


def test_bibert_backbone_starts_from_dinov2_as_the_authors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The authors' BiBERT DPT loaded the DINOv2 ViT-S/14 weights into its binarized backbone (strict: the same
    keys); the default does the same, through the standard weights."""
    source = dinov2_vits14(get_method("fp32"))

    def download(url: str, dst: str, progress: bool = True) -> None:
        torch.save(source.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    model = build_model("depth", "dpt", "bibert", max_depth=10.0, pretrained=True)
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
