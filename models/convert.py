"""Convert a checkpoint trained with the authors' released code into this project's checkpoint layout.

    python -m models.convert RELEASED.ckpt OUT.ckpt [--task T] [--model-type M] [--binary-type B]
                             [--num-classes N] [--max-depth D]

RELEASED.ckpt is the authors' Lightning checkpoint (the model under ``state_dict`` with its module prefix, e.g.
``module.``; their loss weight beside it is ignored) or a bare state dict.  The model (task, model type, method,
classes, depth cap) is read from the checkpoint's ``hyper_parameters`` where the authors' trainer stored it;
options override or supply it.  OUT.ckpt is a checkpoint that ``test_segmentation.py`` / ``test_depth.py`` (and
``--weights`` training) load.

Name mapping (README, "Converting released checkpoints"), for every released model (UPerNet / DPT x
``bidense`` / ``fp32_0`` x segmentation / depth): after the module prefix is removed and the released entries that
no computation uses are dropped (`RELEASED_UNUSED`: the ConvNeXt ImageNet ``norm`` / ``head`` in UPerNet, the
never-called skip unit ``scratch.refinenet4.resConfUnit1`` of DPT), the two state dicts hold the same tensors:

1. an entry whose name, with the leaf aliases of `LEAF_ALIASES` (``binarizer.alpha`` = ``binarizer.a``, the BiViT
   attention ``scaling_factor`` = ``scale``), is a name of this model's state dict keeps it (the DINOv2 backbone
   and every other identically named tensor);
2. the remaining entries pair module by module (a module = the entries under one parent name): each released
   module, in state-dict order, takes the first module of this model not yet taken that holds the same entries
   (leaf names up to the aliases, element counts, in order); modules of one kind are registered in the same
   relative order in both codes.  A tensor is reshaped to this model's shape (the released per-channel biases
   are (1, C, 1, 1), here (C,)).

Anything else fails with one line naming the first released key that does not match.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Released entries that no computation reads, by model type: they are dropped.
RELEASED_UNUSED: dict[str, tuple[str, ...]] = {
    "upernet": ("backbone.norm.", "backbone.head."),
    "dpt": ("scratch.refinenet4.resConfUnit1.",),
}
# Released leaf name -> this project's leaf name.
LEAF_ALIASES: dict[str, str] = {"alpha": "a", "scaling_factor": "scale"}
RELEASED_METHODS = ("bidense", "fp32_0")


class ConversionError(ValueError):
    """A checkpoint that does not fit the model; the message is one line naming the file and the key at fault."""


def _leaf(key: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    return LEAF_ALIASES.get(leaf, leaf)


def _aliased(key: str) -> str:
    parent, _, leaf = key.rpartition(".")
    return f"{parent}.{_leaf(key)}" if parent else _leaf(key)


def strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's entries of a (Lightning) state dict: the prefix in front of ``backbone.`` (e.g. ``module.``) is
    removed and entries without it (the training module's own, such as a loss weight) are left out."""
    first = next((key for key in state if key.startswith("backbone.") or ".backbone." in key), None)
    if first is None:
        raise ConversionError("no backbone entry: not a checkpoint of a UPerNet or DPT model")
    prefix = first[: first.index("backbone.")]
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def match_names(released: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                model_type: str) -> dict[str, str]:
    """Released key (without prefix) -> key of ``target`` (this model's state dict), by the mapping of the module
    docstring; the released unused entries are left out.

    Raises:
        ConversionError: one line naming the first released key that does not match (or the first entry of
            ``target`` left without a released partner).
    """
    drop = RELEASED_UNUSED[model_type]
    kept = [key for key in released if not key.startswith(drop)]
    names = {key: _aliased(key) for key in kept if _aliased(key) in target}
    taken = set(names.values())
    for key in kept:
        if key in names:
            _check_size(key, released[key], names[key], target[names[key]])
    free = _modules([name for name in target if name not in taken], target)
    for module, keys in _modules([key for key in kept if key not in names], released).items():
        signature = _signature(keys, released)
        partner = next((m for m, ours in free.items() if _signature(ours, target) == signature), None)
        if partner is None:
            raise ConversionError(f"released key {keys[0]!r} does not match (no entry of the {model_type} model "
                                  f"left with the entries of {module!r}: "
                                  f"{', '.join(f'{leaf} {n}' for leaf, n in signature)})")
        names.update(zip(keys, free.pop(partner), strict=True))
    if free:
        first = next(iter(free.values()))[0]
        raise ConversionError(f"no released entry for {first!r} ({sum(map(len, free.values()))} missing in all)")
    return names


def _modules(keys: list[str], state: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Entries grouped by their module (the name without the leaf), in state-dict order."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.rpartition(".")[0], []).append(key)
    return groups


def _signature(keys: list[str], state: Mapping[str, torch.Tensor]) -> tuple[tuple[str, int], ...]:
    return tuple((_leaf(key), state[key].numel() if isinstance(state[key], torch.Tensor) else -1) for key in keys)


def released_to_ours(released: Mapping[str, torch.Tensor], model: nn.Module, model_type: str) -> dict[str, Any]:
    """``model``'s state dict filled from ``released`` (names without prefix) by `match_names`, each tensor
    reshaped to this model's shape (the released per-channel biases are (1, C, 1, 1), here (C,)).

    Raises:
        ConversionError: as `match_names`.
    """
    target = model.state_dict()
    out = {name: released[key].reshape(target[name].shape).to(target[name].dtype).clone()
           for key, name in match_names(released, target, model_type).items()}
    return {name: out[name] for name in target}


def _check_size(key: str, value: object, name: str, target: torch.Tensor) -> None:
    if not isinstance(value, torch.Tensor):
        raise ConversionError(f"released key {key!r} holds a {type(value).__name__}, not a tensor")
    if value.numel() != target.numel():
        raise ConversionError(f"released key {key!r} has shape {tuple(value.shape)}; {name!r} needs "
                              f"{tuple(target.shape)}")


def _identity(hparams: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Task, model type, method and head size from the options, else from the authors' hyper-parameters."""
    found = {
        "model_type": args.model_type or hparams.get("model_type"),
        "binary_type": args.binary_type or hparams.get("binary_type"),
        "num_classes": args.num_classes if args.num_classes is not None else hparams.get("num_classes"),
        "max_depth": args.max_depth if args.max_depth is not None else hparams.get("max_depth"),
    }
    task = args.task or ("segmentation" if found["num_classes"] is not None
                         else "depth" if found["max_depth"] is not None else None)
    found["task"] = task
    return found


def convert(source: str | Path, destination: str | Path, args: argparse.Namespace) -> dict[str, Any]:
    """Read the released checkpoint ``source``, write this project's checkpoint to ``destination``; returns its
    ``hyper_parameters``.  Every failure is a `ConversionError` (one line naming ``source`` and the key)."""
    from models import build_model, supported_methods

    source = Path(source)
    if not source.is_file():
        raise ConversionError(f"{source}: not found")
    try:
        ckpt = torch.load(source, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise ConversionError(f"{source}: cannot be loaded ({type(err).__name__})") from err
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{source}: expected a checkpoint dict, got {type(ckpt).__name__}")
    state = ckpt.get("state_dict", ckpt)
    hparams = ckpt.get("hyper_parameters") or {}
    try:
        released = strip_prefix(state)
        found = _identity(hparams, args)
        model_type = found["model_type"] or ("dpt" if any(k.startswith("scratch.") for k in released) else "upernet")
        task = found["task"]
        if task is None:
            raise ConversionError("the task is not stored in the checkpoint; pass --task segmentation|depth")
        if task == "segmentation" and found["num_classes"] is None:
            found["num_classes"] = int(next(reversed(released.values())).shape[0])
        if task == "depth" and found["max_depth"] is None:
            raise ConversionError("the depth cap is not stored in the checkpoint; pass --max-depth")
        methods = [found["binary_type"]] if found["binary_type"] else list(RELEASED_METHODS)
        kwargs = ({"num_classes": int(found["num_classes"])} if task == "segmentation"
                  else {"max_depth": float(found["max_depth"])})
        errors: list[str] = []
        for method in methods:
            if method not in supported_methods(model_type):
                raise ConversionError(f"{model_type} is not defined for method {method!r}")
            model = build_model(task, model_type, method, **kwargs)
            try:
                ours = released_to_ours(released, model, model_type)
            except ConversionError as err:
                errors.append(f"{method}: {err}")
                continue
            hyper = {"model_type": model_type, "binary_type": method, **kwargs, "converted_from": str(source)}
            torch.save({"state_dict": {f"model.{k}": v for k, v in ours.items()}, "hyper_parameters": hyper,
                        "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")}, destination)
            return hyper
        raise ConversionError(f"not a released {model_type} {task} model ({'; '.join(errors)})")
    except ConversionError as err:
        raise ConversionError(f"{source}: {err}") from None


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: convert, print one line; on failure one line on stderr and exit status 1."""
    parser = argparse.ArgumentParser(prog="python -m models.convert", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="checkpoint trained with the authors' code")
    parser.add_argument("destination", help="where to write this project's checkpoint")
    parser.add_argument("--task", choices=("segmentation", "depth"))
    parser.add_argument("--model-type", choices=("upernet", "dpt"))
    parser.add_argument("--binary-type", help="method (default: from the checkpoint, else bidense or fp32_0)")
    parser.add_argument("--num-classes", type=int, help="segmentation classes including the ignore slot")
    parser.add_argument("--max-depth", type=float, help="depth cap in metres")
    args = parser.parse_args(argv)
    try:
        hyper = convert(args.source, args.destination, args)
    except ConversionError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {args.destination}: {hyper['model_type']} {hyper['binary_type']} "
          f"({', '.join(f'{k}={v}' for k, v in hyper.items() if k in ('num_classes', 'max_depth'))})")


if __name__ == "__main__":
    main()
