"""The standard pretrained weights of the `fp32` models (the paper's starred rows, arXiv 2411.10346 Tables 1-4):
ImageNet-1k ConvNeXt-T for UPerNet and DINOv2 ViT-S/14 for DPT.

``MODEL.PRETRAINED`` empty (the default of every shipped `fp32` config) means the standard weights: the official
checkpoint is taken from torch.hub's checkpoint cache (``torch.hub.get_dir()/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``) and downloaded there once when missing, as the released code did.  A local path
in ``MODEL.PRETRAINED`` overrides it.  The models trained from scratch (`fp32_0` and every binary method) start
from random weights.  README, "Pretrained weights".
"""

from __future__ import annotations

from pathlib import Path

import torch

from binary import Method

# name -> (description, URL).  ConvNeXt-T: the official ImageNet-1k EMA release, which is also the file behind
# timm's ``convnext_tiny.fb_in1k``; DINOv2: the official ViT-S/14 backbone that ``torch.hub.load("facebookresearch/
# dinov2", "dinov2_vits14")`` fetches.
STANDARD_WEIGHTS: dict[str, tuple[str, str]] = {
    "convnext_tiny": ("ImageNet-1k ConvNeXt-T",
                      "https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224_ema.pth"),
    "dinov2_vits14": ("DINOv2 ViT-S/14",
                      "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"),
}


class PretrainedWeightsUnavailable(RuntimeError):
    """The standard weights are neither in the cache nor downloadable; the message says which file to put where."""


def standard_weights(name: str) -> Path:
    """Local path of the standard checkpoint ``name`` (a key of `STANDARD_WEIGHTS`), downloaded into torch.hub's
    checkpoint cache when it is not there yet.

    Raises:
        KeyError: unknown ``name``.
        PretrainedWeightsUnavailable: not cached and the download failed (one line: the file, its URL, the cache
            folder to put it in, or ``MODEL.PRETRAINED``).
    """
    if name not in STANDARD_WEIGHTS:
        raise KeyError(f"no standard weights named {name!r}; available: {', '.join(STANDARD_WEIGHTS)}")
    description, url = STANDARD_WEIGHTS[name]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache / url.rsplit("/", 1)[1]
    if path.is_file():
        return path
    try:
        cache.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except OSError as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise PretrainedWeightsUnavailable(
            f"the {description} weights are not cached and cannot be downloaded ({reason}): put {path.name} "
            f"(from {url}) in {cache}/, or set MODEL.PRETRAINED to its local path"
        ) from err
    return path


def resolve_pretrained(pretrained: str | Path | bool | None, method: Method, name: str) -> Path | None:
    """The checkpoint a model of ``method`` loads: None (random init) for None, False or ""; for True the standard
    weights ``name`` (`standard_weights`) when ``method.standard`` or ``method.pretrained_backbone`` (`bibert`, as
    the authors' BiBERT model), else None (trained from scratch); a path as given.
    """
    if pretrained is None or pretrained is False or pretrained == "":
        return None
    if pretrained is True:
        return standard_weights(name) if method.standard or method.pretrained_backbone else None
    return Path(pretrained)
