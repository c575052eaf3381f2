"""Packed 1-bit checkpoints: ``python -m models.pack CKPT OUT`` and ``python -m models.pack --table``.

``CKPT`` is a checkpoint of the training scripts (full or weights only). The model it names (task, model type,
method, classes / maximum depth, from its hyper-parameters) is rebuilt, its weights loaded, and its state packed by
`binary.packing.pack_state`: every binary layer's weight as signs, 8 per byte, plus its per-channel scales; every
other entry in its own precision (README, "Packed 1-bit checkpoints"). The file holds only tensors, strings,
numbers, lists and dicts (``torch.load(weights_only=True)`` reads it), with a format marker and version:

    {"format": FORMAT, "version": VERSION, "hyper_parameters": {...}, "epoch": int | None,
     "model": pack_state(model), "extra": {other state-dict entries of the checkpoint}}

`load_packed` returns the checkpoint's state dict (keys as in the ``.ckpt``) and hyper-parameters;
`checkpoint_from_packed` turns an already-read file into the ``{"state_dict", "hyper_parameters", "epoch"}`` that
the test scripts use. ``--table`` prints, for every model type and method at the ADE20K head (151 outputs), the
size of the float32 weights as a ``.ckpt`` holds them, of the packed file, and their ratio.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from binary.packing import float_rows, pack_state, unpack_state
from configs.loading import ConfigError, first_line
from models import build_model, list_models, supported_methods

FORMAT = "bidense-packed-checkpoint"
VERSION = 1
_MODEL_PREFIX = "model."
_SIMPLE = (str, int, float, bool, type(None))


def task_of(hyper_parameters: dict[str, Any]) -> str:
    """"segmentation" for hyper-parameters with ``num_classes``, "depth" for ``max_depth``."""
    if "num_classes" in hyper_parameters:
        return "segmentation"
    if "max_depth" in hyper_parameters:
        return "depth"
    raise KeyError("neither num_classes nor max_depth")


def build_from_hyper_parameters(hyper_parameters: dict[str, Any]) -> nn.Module:
    """The bare model (``module.model`` of the training scripts) that the hyper-parameters describe."""
    task = task_of(hyper_parameters)
    size = {"num_classes": hyper_parameters["num_classes"]} if task == "segmentation" else {
        "max_depth": hyper_parameters["max_depth"]}
    return build_model(task, hyper_parameters["model_type"], hyper_parameters["binary_type"], **size)


def pack_checkpoint(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """The packed file's content for a training checkpoint (ConfigError naming ``path`` if it names no model or
    its weights do not fit the model it names)."""
    hyper = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if isinstance(v, _SIMPLE)}
    try:
        model = build_from_hyper_parameters(hyper)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"checkpoint {path} does not name a model (hyper-parameters model_type, binary_type and "
                          f"num_classes or max_depth): {err}") from err
    state = ckpt["state_dict"]
    weights = {k[len(_MODEL_PREFIX):]: v for k, v in state.items() if k.startswith(_MODEL_PREFIX)}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ConfigError(f"checkpoint {path}: its weights do not fit {hyper['model_type']} "
                          f"{hyper['binary_type']}: {str(err).splitlines()[1].strip()}") from err
    epoch = ckpt.get("epoch")
    return {
        "format": FORMAT,
        "version": VERSION,
        "hyper_parameters": hyper,
        "epoch": epoch if isinstance(epoch, int) else None,
        "model": pack_state(model),
        "extra": {k: v for k, v in state.items() if not k.startswith(_MODEL_PREFIX)},
    }


def is_packed(obj: Any) -> bool:
    """True for the content of a packed file (recognised by its format marker, whatever the file name)."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def checkpoint_from_packed(obj: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``{"format", "state_dict", "hyper_parameters", "epoch"}`` of a packed file's content, the state dict keyed as
    in the ``.ckpt`` it was packed from (``format`` keeps `is_packed` true). ConfigError naming ``path`` for a file
    of a newer format version."""
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ConfigError(f"packed checkpoint {path} has format version {version!r}; this code reads versions up to "
                          f"{VERSION} (update BiDense)")
    state = {_MODEL_PREFIX + k: v for k, v in unpack_state(obj["model"]).items()}
    state.update(obj["extra"])
    return {"format": FORMAT, "state_dict": state, "hyper_parameters": dict(obj["hyper_parameters"]),
            "epoch": obj.get("epoch")}


def load_packed(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, hyper-parameters) of a packed file, read with ``weights_only=True``.

    Raises ConfigError naming the file when it is missing, unreadable, not a packed checkpoint or of a newer
    format version.
    """
    path = Path(path)
    obj = _read(path, "packed checkpoint")
    if not is_packed(obj):
        raise ConfigError(f"{path} is not a packed BiDense checkpoint (no format marker {FORMAT!r}; pack a .ckpt "
                          "with python -m models.pack)")
    ckpt = checkpoint_from_packed(obj, path)
    return ckpt["state_dict"], ckpt["hyper_parameters"]


def _read(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; ConfigError naming ``what`` and the file when it is
    missing or cannot be read."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a file it cannot read
        raise ConfigError(f"{what} {path} cannot be loaded: {type(err).__name__}: {first_line(err)}") from err


def _save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _size(obj: Any) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def size_table(num_classes: int = 151, seed: int = 0) -> list[dict[str, Any]]:
    """For every model type and method (segmentation, ``num_classes`` outputs, random weights): bytes of the float32
    weights as a ``.ckpt`` stores them (``{"state_dict": ...}``), of the packed file, and the rows kept in float32."""
    rows = []
    for model_type in list_models():
        for binary_type in supported_methods(model_type):
            torch.manual_seed(seed)
            hyper = {"model_type": model_type, "binary_type": binary_type, "num_classes": num_classes}
            model = build_from_hyper_parameters(hyper)
            ckpt = {"state_dict": {_MODEL_PREFIX + k: v for k, v in model.state_dict().items()},
                    "hyper_parameters": hyper}
            packed = pack_checkpoint(ckpt)
            kept, total = float_rows(packed["model"])
            rows.append({"model_type": model_type, "binary_type": binary_type, "float_bytes": _size(ckpt),
                         "packed_bytes": _size(packed), "float_rows": kept, "binary_rows": total})
    return rows


def format_size_table(rows: list[dict[str, Any]]) -> str:
    """The `size_table` rows as a Markdown table (MB = 10^6 bytes)."""
    lines = ["| Model | Method | float32 .ckpt weights (MB) | packed (MB) | ratio | rows kept in float32 |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model_type']} | {r['binary_type']} | {r['float_bytes'] / 1e6:,.1f} | "
                     f"{r['packed_bytes'] / 1e6:,.2f} | {r['float_bytes'] / r['packed_bytes']:.1f} | "
                     f"{r['float_rows']} / {r['binary_rows']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.pack", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, help="a .ckpt of the training scripts")
    parser.add_argument("out", nargs="?", type=Path, help="the packed file to write")
    parser.add_argument("--table", action="store_true", help="print the size table of every model and method")
    args = parser.parse_args(argv)
    if args.table:
        print(format_size_table(size_table()))
        return 0
    if args.checkpoint is None or args.out is None:
        parser.error("give CKPT and OUT, or --table")
    if args.out.resolve() == args.checkpoint.resolve():
        parser.exit(1, f"error: OUT {args.out} is the checkpoint itself; choose another file\n")
    try:
        ckpt = _read(args.checkpoint, "checkpoint")
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ConfigError(f"checkpoint {args.checkpoint} is not a checkpoint of the training scripts "
                              "(no state_dict)")
        packed = pack_checkpoint(ckpt, args.checkpoint)
        _save(packed, args.out)
    except (ConfigError, OSError) as err:
        parser.exit(1, f"error: {err}\n")
    kept, total = float_rows(packed["model"])
    float_bytes = _size({"state_dict": ckpt["state_dict"]})
    packed_bytes = args.out.stat().st_size
    print(f"{args.out}: {packed_bytes / 1e6:,.2f} MB ({float_bytes / packed_bytes:.1f}x smaller than the "
          f"{float_bytes / 1e6:,.1f} MB of float32 weights); {kept} of {total} binary rows kept in float32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
