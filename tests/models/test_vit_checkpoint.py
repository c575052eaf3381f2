"""DINOv2 ViT-S/14 backbone: official checkpoint layout, loading errors, intermediate layers, position embedding."""

from __future__ import annotations

import pytest
import timm
import torch

from binary import get_method, list_methods
from models.backbones.vit import VisionTransformer, dinov2_vits14

DIM, HIDDEN, DEPTH = 384, 1536, 12


def official_layout(img_size: int = 518) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the official ``dinov2_vits14_pretrain.pth``, written out independently."""
    grid = img_size // 14
    layout = {
        "cls_token": (1, 1, DIM),
        "pos_embed": (1, grid * grid + 1, DIM),
        "mask_token": (1, DIM),
        "patch_embed.proj.weight": (DIM, 3, 14, 14),
        "patch_embed.proj.bias": (DIM,),
    }
    for i in range(DEPTH):
        block = {
            "norm1.weight": (DIM,), "norm1.bias": (DIM,),
            "attn.qkv.weight": (3 * DIM, DIM), "attn.qkv.bias": (3 * DIM,),
            "attn.proj.weight": (DIM, DIM), "attn.proj.bias": (DIM,),
            "ls1.gamma": (DIM,),
            "norm2.weight": (DIM,), "norm2.bias": (DIM,),
            "mlp.fc1.weight": (HIDDEN, DIM), "mlp.fc1.bias": (HIDDEN,),
            "mlp.fc2.weight": (DIM, HIDDEN), "mlp.fc2.bias": (DIM,),
            "ls2.gamma": (DIM,),
        }
        layout.update({f"blocks.{i}.{name}": shape for name, shape in block.items()})
    layout.update({"norm.weight": (DIM,), "norm.bias": (DIM,)})
    return layout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) for k, shape in official_layout().items()}
    path = tmp_path_factory.mktemp("ckpt") / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return str(path), state


def test_fp32_backbone_has_exactly_the_official_keys_and_size(fp32_backbone) -> None:
    model = fp32_backbone
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official_layout()
    assert sum(v.numel() for v in model.state_dict().values()) == 22_056_576  # DINOv2 ViT-S/14: 22.06M


def test_every_tensor_of_the_official_checkpoint_lands(checkpoint: tuple[str, dict[str, torch.Tensor]]) -> None:
    path, state = checkpoint
    model = dinov2_vits14(get_method("fp32"), pretrained=path)
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


@pytest.fixture(scope="module")
def fp32_backbone() -> VisionTransformer:
    return dinov2_vits14(get_method("fp32"))


def _save(tmp_path, state: dict[str, torch.Tensor]) -> str:
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("blocks.3.ls1.gamma"), "missing key 'blocks.3.ls1.gamma'"),
        (lambda s: s.__setitem__("blocks.0.attn.qkv.weight", torch.zeros(DIM, DIM)),
         "key 'blocks.0.attn.qkv.weight' has shape (384, 384), expected (1152, 384)"),
        (lambda s: s.__setitem__("head.weight", torch.zeros(1)), "unexpected key 'head.weight'"),
    ],
)
def test_bad_checkpoint_names_path_and_first_bad_key(tmp_path, checkpoint, fp32_backbone, edit, message) -> None:
    state = dict(checkpoint[1])
    edit(state)
    path = _save(tmp_path, state)
    with pytest.raises(ValueError) as err:
        fp32_backbone.load_pretrained(path)
    text = str(err.value)
    assert path in text and message in text and "\n" not in text


def test_missing_checkpoint_file_names_the_path(tmp_path, fp32_backbone) -> None:
    path = str(tmp_path / "nowhere" / "dinov2_vits14_pretrain.pth")
    with pytest.raises(FileNotFoundError, match="nowhere/dinov2_vits14_pretrain.pth"):
        fp32_backbone.load_pretrained(path)


def test_unreadable_checkpoint_names_the_path(tmp_path, fp32_backbone) -> None:
    path = tmp_path / "garbage.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        fp32_backbone.load_pretrained(path)


def test_fp32_backbone_matches_timm_dinov2_on_the_same_weights(tmp_path) -> None:
    """timm's independent DINOv2 ViT-S/14 gives the same tokens and intermediate layers for the same weights."""
    torch.manual_seed(0)
    reference = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=56).eval()
    state = dict(reference.state_dict())
    state["mask_token"] = torch.zeros(1, DIM)
    for key in state:
        if key.endswith("gamma"):  # timm initialises LayerScale at 1e-5; make the blocks matter
            state[key] = torch.rand(DIM) + 0.5
    path = tmp_path / "timm.pth"
    torch.save(state, path)
    reference.load_state_dict({k: v for k, v in state.items() if k != "mask_token"})
    model = dinov2_vits14(get_method("fp32"), pretrained=path, img_size=56).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(model(x), reference.forward_features(x), atol=1e-5)
        ours = model.get_intermediate_layers(x, 4, reshape=True)
        theirs = reference.get_intermediate_layers(x, 4, reshape=True, norm=True)
    assert len(ours) == 4
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == (2, DIM, 4, 4)
        assert torch.allclose(a, b, atol=1e-5)


def test_intermediate_layers_are_the_last_blocks_normed() -> None:
    model = VisionTransformer(get_method("fp32_0"), img_size=56, depth=6).eval()
    x = torch.randn(1, 3, 42, 70)
    with torch.no_grad():
        tokens = model.prepare_tokens(x)
        per_block = []
        for block in model.blocks:
            tokens = block(tokens)
            per_block.append(tokens)
        last4 = model.get_intermediate_layers(x, 4, return_class_token=True)
        raw = model.get_intermediate_layers(x, [0, 5], norm=False)
        grids = model.get_intermediate_layers(x, 2, reshape=True)
    assert len(last4) == 4
    for (patches, cls), expected in zip(last4, per_block[-4:], strict=True):
        normed = model.norm(expected)
        assert patches.shape == (1, 15, DIM) and cls.shape == (1, DIM)
        assert torch.allclose(patches, normed[:, 1:]) and torch.allclose(cls, normed[:, 0])
    assert torch.allclose(raw[0], per_block[0][:, 1:]) and torch.allclose(raw[1], per_block[5][:, 1:])
    # reshape: token t = row * grid_w + col lands at [row, col] of a (3, 5) grid
    flat = model.norm(per_block[-1])[:, 1:]
    assert grids[1].shape == (1, DIM, 3, 5)
    assert torch.allclose(grids[1][0, :, 1, 4], flat[0, 1 * 5 + 4])
    with pytest.raises(ValueError, match="cannot take blocks"):
        model.get_intermediate_layers(x, 7)


def test_pos_embed_interpolation_keeps_orientation_on_non_square_grids() -> None:
    model = VisionTransformer(get_method("fp32_0"), depth=1)
    side = 37
    rows = torch.arange(side, dtype=torch.float32).view(side, 1).expand(side, side)
    cols = torch.arange(side, dtype=torch.float32).view(1, side).expand(side, side)
    with torch.no_grad():
        model.pos_embed.zero_()
        model.pos_embed[0, 0] = 7.0
        model.pos_embed[0, 1:, 0] = rows.flatten()
        model.pos_embed[0, 1:, 1] = cols.flatten()
        model.pos_embed[0, 1:, 2] = 3.0
    pos = model.interpolate_pos_encoding(4, 6)
    assert pos.shape == (1, 1 + 24, DIM)
    assert torch.all(pos[0, 0] == model.pos_embed[0, 0])  # cls position untouched
    grid = pos[0, 1:].reshape(4, 6, DIM)
    assert torch.allclose(grid[..., 2], torch.full((4, 6), 3.0), atol=1e-5)  # bicubic keeps constants
    assert torch.allclose(grid[..., 0], grid[:, :1, 0].expand(4, 6), atol=1e-4)  # channel 0 varies by row only
    assert torch.allclose(grid[..., 1], grid[:1, :, 1].expand(4, 6), atol=1e-4)  # channel 1 varies by column only
    assert torch.all(grid[1:, 0, 0] > grid[:-1, 0, 0]) and torch.all(grid[0, 1:, 1] > grid[0, :-1, 1])
    assert model.interpolate_pos_encoding(side, side) is model.pos_embed
    tokens = model.prepare_tokens(torch.randn(2, 3, 56, 84))
    assert tokens.shape == (2, 25, DIM)


def test_resampled_pos_embed_passes_through_float32_in_float64() -> None:
    """As DINOv2: the whole embedding, cls position included, is rounded to float32 when resampled, and so is its
    gradient; at the stored grid nothing is rounded."""
    model = VisionTransformer(get_method("fp32_0"), img_size=56, depth=1).double()
    with torch.no_grad():
        model.pos_embed.copy_(torch.randn(model.pos_embed.shape, dtype=torch.float64))
    pos = model.interpolate_pos_encoding(2, 3)
    assert pos.dtype == torch.float64
    cls = model.pos_embed[0, 0]
    assert torch.equal(pos[0, 0], cls.float().double()) and not torch.equal(pos[0, 0], cls)
    weight = torch.randn(pos.shape, dtype=torch.float64)
    (pos * weight).sum().backward()
    assert torch.equal(model.pos_embed.grad[0, 0], weight[0, 0].float().double())
    model.pos_embed.grad = None
    (model.interpolate_pos_encoding(4, 4) * 1.0).sum().backward()
    assert torch.equal(model.pos_embed.grad, torch.ones_like(model.pos_embed))


def test_input_not_a_multiple_of_the_patch_fails_clearly() -> None:
    model = VisionTransformer(get_method("fp32_0"), img_size=56, depth=1)
    with pytest.raises(ValueError, match="50x56 is not a multiple of the patch size 14"):
        model(torch.randn(1, 3, 50, 56))


@pytest.mark.parametrize("binary_type", list_methods())
def test_every_method_builds_a_backbone_that_trains(binary_type: str) -> None:
    model = VisionTransformer(get_method(binary_type), img_size=56, depth=3)
    grids = model.get_intermediate_layers(torch.randn(1, 3, 28, 42), 2, reshape=True)
    assert [g.shape for g in grids] == [(1, DIM, 2, 3)] * 2
    sum(g.square().mean() for g in grids).backward()
    assert model.patch_embed.proj.weight.grad is not None
    assert model.blocks[0].attn.qkv.weight.grad is not None
