"""DINOv2 ViT-S/14 (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", arXiv 2304.07193),
defined once; a binarization `Method` supplies its linear layers, attention core and MLP nonlinearity.

Block (pre-norm, layer scale; as released):

    x = x + ls1 * proj( attention( qkv( LN1(x) ) ) )
    x = x + ls2 * fc2( act( fc1( LN2(x) ) ) )

``qkv``, ``proj``, ``fc1``, ``fc2`` come from ``method.linear`` (roles "qkv", "proj", "fc1", "fc2"), the attention
core from ``method.attention`` and ``act`` from ``method.vit_act``.  The patch embedding (Conv2d 14x14, stride 14),
LayerNorms (eps 1e-6), position embedding, cls token and LayerScale stay full precision (as released).  With
`fp32` / `fp32_0` every layer is the official float one and the state-dict keys are exactly those of the official
``dinov2_vits14_pretrain.pth`` (cls_token, pos_embed, mask_token, patch_embed.proj.*, blocks.N.{norm1, attn.qkv,
attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}, norm.*), which `VisionTransformer.load_pretrained` loads
from a local path.  With `bidense` / `bivit` the blocks are the BiViT-binarised ones (as released; README, deviations).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from binary import Method


class PatchEmbed(nn.Module):
    """Full-precision patch embedding: Conv2d(3, dim, p, stride p), then flatten to tokens (B, H/p * W/p, dim)."""

    def __init__(self, patch_size: int, embed_dim: int, in_channels: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"ViT input size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class LayerScale(nn.Module):
    """Per-channel scale ``gamma * x`` (gamma of shape (dim,), initialised to ``init_values``)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention: ``proj(core(q, k, v))`` with ``q, k, v = split(qkv(x))`` per head.

    ``core`` maps (B, heads, N, head_dim) tensors to the same shape (softmax attention for the float methods,
    the method's binary attention otherwise).
    """

    def __init__(self, method: Method, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = method.linear(dim, 3 * dim, bias=True, role="qkv")
        self.core = method.attention(dim // num_heads, num_heads)
        self.proj = method.linear(dim, dim, bias=True, role="proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.core(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Token MLP ``fc2(act(fc1(x)))`` with hidden width ``mlp_ratio * dim``."""

    def __init__(self, method: Method, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = method.linear(dim, hidden, bias=True, role="fc1")
        self.act = method.vit_act(hidden)
        self.fc2 = method.linear(hidden, dim, bias=True, role="fc2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """DINOv2 transformer block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(self, method: Method, dim: int, num_heads: int, mlp_ratio: float, init_values: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(method, dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(method, dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """DINOv2 vision transformer with one cls token, learned absolute position embedding and no registers.

    Args:
        method: the binarization method supplying the block layers.
        img_size: training resolution; the position embedding holds ``(img_size // patch_size) ** 2`` patch
            positions plus the cls position and is interpolated to other grids.
        patch_size, embed_dim, depth, num_heads, mlp_ratio: the usual ViT sizes.
        init_values: LayerScale initialisation.
        interpolate_offset: DINOv2's 0.1 added to the target grid before computing the bicubic scale factor.

    Initialisation, as released: the float methods follow DINOv2 (position embedding trunc-normal(0.02), cls
    token normal(1e-6), mask token 0, ``nn.Linear`` layers trunc-normal(0.02) with zero bias); the released binary
    backbones never call that initialisation, so with a binary method the position embedding, cls token and mask
    token start at zero and every layer keeps its own initialisation.
    """

    def __init__(
        self,
        method: Method,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        init_values: float = 1.0,
        interpolate_offset: float = 0.1,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.interpolate_offset = interpolate_offset
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img_size // patch_size) ** 2 + 1, embed_dim))
        # DINOv2's masked-token embedding: unused by dense prediction, kept as a buffer for the checkpoint layout
        # (a parameter that never gets a gradient would stop DDP).
        self.register_buffer("mask_token", torch.zeros(1, embed_dim))
        self.blocks = nn.ModuleList(
            [Block(method, embed_dim, num_heads, mlp_ratio, init_values) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if not method.binary:
            self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # DINOv2's trunc_normal_(std=0.02) truncates at +-2, i.e. 100 standard deviations: a plain normal draw
        # (clamped for the letter of it) has the same distribution and is ten times faster.
        nn.init.normal_(self.pos_embed, std=0.02).clamp_(-2.0, 2.0)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if type(module) is nn.Linear:
                nn.init.normal_(module.weight, std=0.02).clamp_(-2.0, 2.0)
                nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embedding (1, 1 + grid_h * grid_w, dim) for a ``grid_h x grid_w`` patch grid.

        The stored M x M patch embedding is resampled bicubically (no antialias) with scale factors
        ``((grid_h + offset) / M, (grid_w + offset) / M)``, as DINOv2 does; the cls position is kept. As there, the
        whole embedding passes through float32 on the way (a no-op in float32 training; in float64 it rounds the
        cls position and its gradient as the released model does).
        """
        side = math.isqrt(self.pos_embed.shape[1] - 1)
        if grid_h == grid_w == side:
            return self.pos_embed
        pos = self.pos_embed.float()
        patch_pos = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        scale = ((grid_h + self.interpolate_offset) / side, (grid_w + self.interpolate_offset) / side)
        patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", align_corners=False)
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(f"position embedding resampled to {tuple(patch_pos.shape[-2:])}, "
                               f"expected {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((pos[:, :1], patch_pos), dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) -> tokens (B, 1 + HW/p^2, dim): patch embedding, cls token, position embedding."""
        grid_h, grid_w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        return tokens + self.interpolate_pos_encoding(grid_h, grid_w)

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | list[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last ``n`` blocks (an int) or of the blocks indexed by ``n`` (a list), in block order.

        Each output is passed through the final LayerNorm when ``norm`` and split into patch tokens
        (B, N, dim) and the cls token (B, dim).  With ``reshape`` the patch tokens become grids
        (B, dim, H/p, W/p).  Returns a tuple of patch outputs, or of (patch, cls) pairs with
        ``return_class_token``.
        """
        grid_h, grid_w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        depth = len(self.blocks)
        take = set(range(depth - n, depth)) if isinstance(n, int) else set(n)
        if not take or not all(0 <= i < depth for i in take):
            raise ValueError(f"cannot take blocks {n!r} of a {depth}-block ViT")
        tokens = self.prepare_tokens(x)
        outputs = []
        for i, block in enumerate(self.blocks[: max(take) + 1]):
            tokens = block(tokens)
            if i in take:
                outputs.append(self.norm(tokens) if norm else tokens)
        patches = [out[:, 1:] for out in outputs]
        if reshape:
            patches = [p.transpose(1, 2).reshape(p.shape[0], -1, grid_h, grid_w).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, [out[:, 0] for out in outputs], strict=True))
        return tuple(patches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens of the last block, (B, 1 + HW/p^2, dim), cls token first."""
        tokens = self.prepare_tokens(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def load_pretrained(self, path: str | Path) -> None:
        """Load an official DINOv2 state dict (e.g. ``dinov2_vits14_pretrain.pth``) from a local file.

        Every key of the file must land in this model with the same shape and every model entry must be
        present in the file; otherwise a one-line error names the file and the first bad key.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"DINOv2 checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path}: not a readable PyTorch state dict ({type(err).__name__}: {err})") from err
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
        own = self.state_dict()
        for key, value in state.items():
            if key not in own:
                raise ValueError(f"{path}: unexpected key {key!r} (not in the DINOv2 ViT-S/14 layout)")
            if not isinstance(value, torch.Tensor) or value.shape != own[key].shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{path}: key {key!r} has shape {shape}, expected {tuple(own[key].shape)}")
        missing = [key for key in own if key not in state]
        if missing:
            raise ValueError(f"{path}: missing key {missing[0]!r} ({len(missing)} missing in all)")
        self.load_state_dict(state, strict=True)


def dinov2_vits14(method: Method, pretrained: str | Path | None = None, img_size: int = 518) -> VisionTransformer:
    """DINOv2 ViT-S/14 (embed 384, depth 12, heads 6, MLP ratio 4, LayerScale 1.0, img 518; as released)
    built from ``method``'s layers, loading the official checkpoint at ``pretrained`` when given."""
    model = VisionTransformer(method, img_size=img_size)
    if pretrained is not None:
        model.load_pretrained(pretrained)
    return model
