"""ConvNeXt-T (Liu et al., "A ConvNet for the 2020s", CVPR 2022), defined once for every binarization method.

The method (the released architectures; README, deviations) chooses the variant through its flags, never its name:

* ``method.standard`` (``fp32``, the paper's "ConvNeXt*" rows): the official ConvNeXt-T.  Stem conv 4x4/4 then
  LayerNorm; transitions LayerNorm then conv 2x2/2; block
  ``x + drop_path(gamma * pw2(GELU(pw1(LN(dw7x7(x))))))`` with layer scale ``gamma`` initialised to 1e-6.
  Module names follow the official release, so ``convnext_tiny_1k_224_ema.pth`` loads as is.
* ``method.bypass`` (``bidense``, ``cfb``): the released BiDense backbone, as released.  Block
  ``pw2(act(pw1(dw(x))))`` of conv units; every residual path is the full-precision bypass inside each unit
  (no LayerNorm, GELU, layer scale or block residual).
* otherwise (``fp32_0`` and the CNN baselines, as released): the BatchNorm mirror,
  ``y = x + dw(x)``, block output ``x + drop_path(pw2(act(pw1(y))))``.

For the two non-standard variants the stem is a full-precision conv 4x4/4 + BatchNorm2d and the transitions are
``method.down(d_i, d_{i+1}, 2, 2)``.  The unused ImageNet ``norm`` / ``head`` of the release are not built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from timm.layers import DropPath, trunc_normal_
from torch import nn

from binary import Method

CONVNEXT_TINY_DIMS = (96, 192, 384, 768)
CONVNEXT_TINY_DEPTHS = (3, 3, 9, 3)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (the official ``channels_first`` LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Official ConvNeXt block: ``x + drop_path(gamma * pw2(GELU(pw1(LN(dw7x7(x))))))`` (pw convs as Linear)."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class UnitBlock(nn.Module):
    """ConvNeXt block built from the method's conv units (as released).

    With ``method.bypass``: ``pw2(act(pw1(dw(x))))``, the units carrying the residual paths.
    Without: ``y = x + dw(x)``, output ``x + drop_path(pw2(act(pw1(y))))``.
    ``dw`` is 7x7 depthwise d->d, ``pw1`` 1x1 d->4d, ``pw2`` 1x1 4d->d, ``act = method.act(4d, "block")``.
    The convs carry a bias except in the bypass variant (as released: ``nn.Conv2d``'s default there, the
    BiDense unit's ``bias=False`` default here).
    """

    def __init__(self, method: Method, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        bias = not method.bypass
        self.dwconv = method.conv(dim, dim, 7, padding=3, groups=dim, bias=bias, role="dw")
        self.pwconv1 = method.conv(dim, 4 * dim, 1, bias=bias, role="pw1")
        self.act = method.act(4 * dim, "block")
        self.pwconv2 = method.conv(4 * dim, dim, 1, bias=bias, role="pw2")
        self.residual = not method.bypass
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.residual:
            return self.pwconv2(self.act(self.pwconv1(self.dwconv(x))))
        y = x + self.dwconv(x)
        return x + self.drop_path(self.pwconv2(self.act(self.pwconv1(y))))


class ConvNeXt(nn.Module):
    """ConvNeXt backbone returning the four stage outputs (strides 4, 8, 16, 32; channels ``dims``).

    Args:
        method: the binarization method supplying the layers (see the module docstring).
        dims: channels of the four stages.
        depths: blocks per stage.
        in_chans: input channels.
        drop_path_rate: stochastic depth, linearly increasing over the blocks (no effect with ``method.bypass``,
            as released).
        layer_scale_init_value: initial layer scale of the official block.
    """

    def __init__(
        self,
        method: Method,
        dims: Sequence[int] = CONVNEXT_TINY_DIMS,
        depths: Sequence[int] = CONVNEXT_TINY_DEPTHS,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-6,
    ) -> None:
        super().__init__()
        self.dims = list(dims)
        standard = method.standard
        stem_norm = LayerNorm2d(dims[0], eps=1e-6) if standard else nn.BatchNorm2d(dims[0])
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), stem_norm)])
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            if standard:
                layer = nn.Sequential(LayerNorm2d(d_in, eps=1e-6), nn.Conv2d(d_in, d_out, 2, stride=2))
            else:
                layer = method.down(d_in, d_out, 2, 2, role="down")
            self.downsample_layers.append(layer)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            start = sum(depths[:i])
            if standard:
                blocks = [ConvNeXtBlock(dim, rates[start + j], layer_scale_init_value) for j in range(depth)]
            else:
                blocks = [UnitBlock(method, dim, rates[start + j]) for j in range(depth)]
            self.stages.append(nn.Sequential(*blocks))
        if standard:
            self.apply(_official_init)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
            features.append(x)
        return features


def _official_init(module: nn.Module) -> None:
    """The official ConvNeXt initialisation: truncated normal (std 0.02) weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def timm_to_official_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm ConvNeXt state dict (``stem.*``, ``stages.i.downsample.*``, ``stages.i.blocks.j.*``) to the
    official layout (``downsample_layers.*``, ``stages.i.j.*``); timm's ``head.*`` is dropped."""
    block_names = {"conv_dw": "dwconv", "norm": "norm", "mlp.fc1": "pwconv1", "mlp.fc2": "pwconv2", "gamma": "gamma"}
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "stem":
            out["downsample_layers.0." + ".".join(parts[1:])] = value
        elif parts[0] == "stages" and parts[2] == "downsample":
            out[f"downsample_layers.{parts[1]}." + ".".join(parts[3:])] = value
        elif parts[0] == "stages" and parts[2] == "blocks":
            rest = ".".join(parts[4:])
            for timm_name, name in block_names.items():
                if rest == timm_name or rest.startswith(timm_name + "."):
                    out[f"stages.{parts[1]}.{parts[3]}.{name}{rest[len(timm_name):]}"] = value
                    break
            else:
                out[key] = value
        elif parts[0] != "head":
            out[key] = value
    return out


def load_convnext_checkpoint(backbone: ConvNeXt, path: str | Path) -> None:
    """Load ImageNet weights into a standard ConvNeXt from a local file.

    Accepts the official release (``convnext_tiny_1k_224_ema.pth``: tensors under ``"model"``, official names)
    or a timm ConvNeXt state dict (optionally under ``"state_dict"``).  The ImageNet ``norm`` / ``head`` entries
    are ignored; every backbone tensor must be present with the right shape.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a backbone tensor is missing from the file or has the wrong shape (one line naming the path
            and the first bad key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ConvNeXt checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    if any(key.startswith(("stem.", "stages.0.blocks.")) for key in checkpoint):
        checkpoint = timm_to_official_keys(checkpoint)
    expected = backbone.state_dict()
    for key, target in expected.items():
        if key not in checkpoint:
            raise ValueError(f"{path}: ConvNeXt checkpoint lacks {key!r} (expected shape {tuple(target.shape)})")
        if checkpoint[key].shape != target.shape:
            raise ValueError(
                f"{path}: ConvNeXt checkpoint {key!r} has shape {tuple(checkpoint[key].shape)}, "
                f"expected {tuple(target.shape)}"
            )
    backbone.load_state_dict({key: checkpoint[key] for key in expected})
