"""The figures of the README's ``assets/`` folder, made by the project's own commands (README, Quick start and
Parameters and OPs):

    python -m engine.figures predictions CONFIG CKPT OUT.png [--n 3] [--height 160] [KEY VALUE ...]
    python -m engine.figures complexity OUT.png [CONFIG ...] [--counts FILE]

``predictions``: ``n`` images of the config's evaluation set (evenly spaced through it), one row each:
image | ground truth | prediction. The image and its ground truth are read by the data set's own loader at their
stored size (the loader's transform replaced by the identity, so labels are mapped and depths scaled as in
training); the prediction is predict mode's (`engine.predict.infer` at the task module's ``inference_size``,
the model loaded and checked by `engine.run.load_trained_module`). Segmentation: ground truth and prediction in
the data set's palette (`train_segmentation.palette`, the colours of the ``_colour.png`` files of predict mode).
Depth: `train_depth.colour_depth` of ground truth and prediction side by side in one call, so both share one
range (inverse depth scaled by the nearest depth of the two, inferno colour map; no ground truth is black).

``complexity``: Params (strict count, K) and OPs (G) of every method side by side, as counted by
`models.summary.summarize` at each config's evaluation input: by default every
``configs/segmentation/*_ade20k.yaml`` (UPerNet-ConvNeXt-T and DPT-ViT-S/14 at 480 x 480, ADE20K head), or the
configs named, or the rows of ``--counts FILE`` (one ``python -m models.summary CONFIG --json`` object per line).
Params = 32-bit state-dict entries + 1-bit weights / 32, OPs = float MACs + binary MACs / 64
(arXiv 2411.10346, Table 1).

Both figures are composed with PIL (already a dependency): a grid of pictures and a bar chart with linear axes
need no plotting library.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COMPLEXITY_CONFIGS = "configs/segmentation/*_ade20k.yaml"
# Order of the methods in the complexity figure: float models, the baselines, then the ablation and BiDense,
# as in arXiv 2411.10346, Table 1; methods not listed follow in name order.
METHOD_ORDER = ("fp32", "fp32_0", "bnn", "react", "adabin", "bisrnet", "bibert", "bit", "bivit", "cfb", "bidense")
MODEL_NAMES = {"upernet": "UPerNet-ConvNeXt-T", "dpt": "DPT-ViT-S/14"}
FLOAT_METHODS = ("fp32", "fp32_0")
BAR_COLOURS = {"float": (150, 150, 150), "binary": (76, 114, 176), "bidense": (221, 132, 82)}
GAP = 4
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled font at ``size`` pixels."""
    return ImageFont.load_default(size=size)


def fit_height(picture: np.ndarray, height: int, nearest: bool) -> Image.Image:
    """RGB ``[H, W, 3]`` uint8 -> a PIL image ``height`` pixels high, aspect kept (nearest for label colours)."""
    image = Image.fromarray(picture)
    width = max(1, round(picture.shape[1] * height / picture.shape[0]))
    return image.resize((width, height), Image.NEAREST if nearest else Image.BILINEAR)


def compose_grid(rows: Sequence[Sequence[Image.Image]], headers: Sequence[str], title: str) -> Image.Image:
    """The pictures of ``rows`` (equal sizes within a column) on a white sheet: a title line (its font shrunk, down
    to 9 pixels, until it fits the sheet), one header per column, ``GAP`` pixels between pictures."""
    header_font = font(14)
    widths = [max(row[c].width for row in rows) for c in range(len(headers))]
    heights = [max(p.height for p in row) for row in rows]
    top = 2 * GAP + 20 + 18
    sheet = Image.new("RGB", (sum(widths) + GAP * (len(widths) + 1), top + sum(heights) + GAP * len(rows)), WHITE)
    draw = ImageDraw.Draw(sheet)
    room = sheet.width - 2 * GAP
    title_font = next((f for f in map(font, range(16, 8, -1)) if draw.textlength(title, font=f) <= room), font(9))
    draw.text((GAP, GAP), title, fill=BLACK, font=title_font)
    x = GAP
    for c, header in enumerate(headers):
        draw.text((x + widths[c] // 2, top - 2), header, fill=BLACK, font=header_font, anchor="mb")
        x += widths[c] + GAP
    y = top
    for row, h in zip(rows, heights, strict=True):
        x = GAP
        for c, picture in enumerate(row):
            sheet.paste(picture, (x, y))
            x += widths[c] + GAP
        y += h + GAP
    return sheet


def evaluation_pairs(cfg, task: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (image uint8 ``[H, W, 3]``, ground truth) pairs of the config's evaluation set, evenly spaced through
    it, at their stored size: training ids ``[H, W]`` (segmentation) or metres ``[H, W]`` with 0 = none (depth).

    The data set's own loader reads them (paths, label mapping, depth scale and checks as in evaluation), with its
    transform replaced by the identity.
    """
    from datasets import build_datamodule

    datamodule = build_datamodule(cfg, task)
    datamodule.prepare_data()
    dataset = datamodule.make_val()
    dataset.transform = lambda image, target: (image, target)
    count = len(dataset)
    k = min(n, count)
    picks = [round(i * (count - 1) / max(k - 1, 1)) for i in range(k)]
    return [dataset[i] for i in picks]


def prediction_figure(config: str | Path, checkpoint: str | Path, overrides: Sequence[str] = (), n: int = 3,
                      height: int = 160) -> Image.Image:
    """The predictions figure of ``checkpoint`` on ``n`` evaluation images of ``config`` (see module), each
    picture ``height`` pixels high; runs on the CPU."""
    from configs.loading import load_config
    from engine.predict import SIZE_UNIT, class_map, infer, resize_map
    from engine.run import check_names, load_trained_module
    from models.summary import task_of_config

    task = task_of_config(Path(config))
    cfg = load_config(task, config, list(overrides))
    check_names(cfg, task, config)
    if task == "segmentation":
        from train_segmentation import SegmentationModule as module_cls
        from train_segmentation import palette

        colours = palette(cfg.DATASET.DATASET, cfg.MODEL.NUM_CLASSES)
    else:
        from train_depth import DepthModule as module_cls
        from train_depth import colour_depth
    module, epoch = load_trained_module(checkpoint, cfg, module_cls)
    module.eval()
    unit = SIZE_UNIT[cfg.MODEL.MODEL_TYPE]
    rows = []
    for image, target in evaluation_pairs(cfg, task, n):
        hw = image.shape[:2]
        output = infer(module, image, module_cls.inference_size(cfg, *hw), unit, torch.device("cpu"))
        if task == "segmentation":
            truth, guess = colours[target], colours[class_map(output, hw).numpy()]
        else:
            both = colour_depth(torch.cat([torch.from_numpy(target).float(), resize_map(output, hw)[0]], dim=1))
            truth, guess = both[:, : hw[1]], both[:, hw[1]:]
        rows.append([fit_height(image, height, False), fit_height(truth, height, task == "segmentation"),
                     fit_height(guess, height, task == "segmentation")])
    at = f", epoch {epoch}" if epoch is not None else ""
    title = (f"{cfg.MODEL.MODEL_TYPE} {cfg.MODEL.BINARY_TYPE}, {cfg.DATASET.DATASET} evaluation set "
             f"({Path(checkpoint).name}{at})")
    headers = ("image", "ground truth", "prediction" + (" (near = bright)" if task == "depth" else ""))
    return compose_grid(rows, headers, title)


def count_rows(configs: Sequence[str | Path], save: Path | None = None) -> list[dict]:
    """`models.summary.summarize` of each config at its evaluation input, with ``config`` added, as
    ``python -m models.summary CONFIG --json`` prints it; one progress line per config on stderr. With ``save``,
    each row is also written to that file as one JSON line as soon as it is counted (the file is replaced)."""
    from configs.loading import load_config
    from engine.run import evaluation_input
    from models.summary import summarize, task_of_config

    rows = []
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text("")
    for config in configs:
        task = task_of_config(Path(config))
        cfg = load_config(task, config)
        if task == "segmentation":
            kwargs = {"num_classes": cfg.MODEL.NUM_CLASSES}
        else:
            kwargs = {"max_depth": cfg.MODEL.MAX_DEPTH}
        start = time.perf_counter()
        row = summarize(task, cfg.MODEL.MODEL_TYPE, cfg.MODEL.BINARY_TYPE, evaluation_input(cfg, task), **kwargs)
        row["config"] = str(config)
        print(f"counted {config} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        rows.append(row)
        if save is not None:
            with save.open("a") as file:
                file.write(json.dumps(row) + "\n")
    return rows


def read_counts(path: str | Path) -> list[dict]:
    """The rows of a file of ``python -m models.summary CONFIG --json`` lines (blank lines skipped); ValueError
    naming the file and line for anything else."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {number}: not a JSON object ({err.msg})") from err
        missing = [k for k in ("model_type", "binary_type", "params_k", "ops_g", "input_shape") if k not in row]
        if not isinstance(row, dict) or missing:
            raise ValueError(f"{path} line {number}: not a models.summary --json object (missing {', '.join(missing)})")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no models.summary --json line")
    return rows


def method_key(row: dict) -> tuple[int, int, str]:
    """Sort key: model (UPerNet, then DPT, then others), then `METHOD_ORDER`."""
    models = list(MODEL_NAMES)
    model = models.index(row["model_type"]) if row["model_type"] in models else len(models)
    method = row["binary_type"]
    return model, METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method


def bar_colour(method: str) -> tuple[int, int, int]:
    """Grey for the float models, orange for BiDense, blue for the other binary methods."""
    if method in FLOAT_METHODS:
        return BAR_COLOURS["float"]
    return BAR_COLOURS["bidense" if method == "bidense" else "binary"]


def complexity_figure(rows: Sequence[dict], bar_width: int = 260) -> Image.Image:
    """Horizontal bar chart of ``rows`` (`count_rows` / `read_counts`): one line per method, grouped by model,
    Params (K, strict count) and OPs (G) on two linear axes of ``bar_width`` pixels, each bar labelled."""
    rows = sorted(rows, key=method_key)
    shapes = sorted({"x".join(str(s) for s in row["input_shape"]) for row in rows})
    label_font, value_font, title_font = font(13), font(12), font(15)
    line, label_w, value_w = 18, 80, 70
    panels = (("params_k", "Params (K, strict count)", "{:,.1f}"), ("ops_g", "OPs (G)", "{:,.2f}"))
    tops = {key: max(row[key] for row in rows) or 1.0 for key, _, _ in panels}
    lines: list[tuple[str, dict | None]] = []
    model = None
    for row in rows:
        if row["model_type"] != model:
            model = row["model_type"]
            lines.append((MODEL_NAMES.get(model, model), None))
        lines.append((row["binary_type"], row))
    top = 2 * GAP + 2 * 18 + line
    panel_w = bar_width + value_w
    width = GAP + label_w + len(panels) * (panel_w + 2 * GAP)
    sheet = Image.new("RGB", (width, top + len(lines) * line + 2 * GAP + 16), WHITE)
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, GAP), f"Params and OPs at input {', '.join(shapes)}", fill=BLACK, font=title_font)
    draw.text((GAP, GAP + 18), "1-bit weights count 1/32, binary MACs 1/64 (arXiv 2411.10346, Table 1)",
              fill=BLACK, font=value_font)
    for p, (_, name, _) in enumerate(panels):
        x0 = GAP + label_w + p * (panel_w + 2 * GAP)
        draw.text((x0, top - 4), name, fill=BLACK, font=label_font, anchor="lb")
    y = top
    for text, row in lines:
        if row is None:
            draw.text((GAP, y + line - 3), text, fill=BLACK, font=label_font, anchor="lb")
        else:
            draw.text((GAP + 10, y + line - 4), text, fill=BLACK, font=value_font, anchor="lb")
            for p, (key, _, fmt) in enumerate(panels):
                x0 = GAP + label_w + p * (panel_w + 2 * GAP)
                length = max(1, round(bar_width * row[key] / tops[key]))
                draw.rectangle((x0, y + 3, x0 + length, y + line - 3), fill=bar_colour(row["binary_type"]))
                draw.text((x0 + length + 3, y + line - 4), fmt.format(row[key]), fill=BLACK, font=value_font,
                          anchor="lb")
        y += line
    draw.text((GAP, y + GAP), "grey: float, orange: BiDense, blue: other 1-bit methods", fill=BLACK, font=value_font)
    return sheet


def save(image: Image.Image, out: str | Path) -> Path:
    """Write ``image`` to ``out`` (PNG, or JPEG for .jpg / .jpeg), creating the folder; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".jpg", ".jpeg"):
        image.save(out, quality=90)
    else:
        image.save(out, optimize=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.figures", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="figure", required=True)
    pred = sub.add_parser("predictions", help="image | ground truth | prediction on evaluation images")
    pred.add_argument("config", type=Path)
    pred.add_argument("checkpoint", type=Path)
    pred.add_argument("out", type=Path, help="the figure (.png, .jpg)")
    pred.add_argument("--n", type=int, default=3, help="number of images (default 3)")
    pred.add_argument("--height", type=int, default=160, help="height of each picture in pixels (default 160)")
    pred.add_argument("overrides", nargs="*", help="KEY VALUE pairs, as for the test scripts")
    comp = sub.add_parser("complexity", help="Params and OPs of every method")
    comp.add_argument("out", type=Path, help="the figure (.png, .jpg)")
    comp.add_argument("configs", nargs="*", type=Path, help=f"configs to count (default {DEFAULT_COMPLEXITY_CONFIGS})")
    comp.add_argument("--counts", type=Path, help="models.summary --json lines to draw instead of counting")
    comp.add_argument("--save-counts", type=Path, help="write the counted rows there (JSON lines, for --counts)")
    args, extra = parser.parse_known_args(argv)
    if extra and (args.figure != "predictions" or any(a.startswith("-") for a in extra)):
        parser.exit(1, f"error: unrecognized arguments: {' '.join(extra)}\n")
    overrides = [*getattr(args, "overrides", []), *extra]  # KEY VALUE pairs may also follow the options

    from configs.loading import ConfigError
    from datasets import DataError
    from engine.errors import RunFault

    start = time.perf_counter()
    try:
        if args.figure == "predictions":
            if args.n < 1 or args.height < 8:
                parser.exit(1, f"error: --n must be >= 1 and --height >= 8 (got {args.n}, {args.height})\n")
            figure = prediction_figure(args.config, args.checkpoint, overrides, args.n, args.height)
        else:
            if args.counts:
                rows = read_counts(args.counts)
            else:
                configs = args.configs or sorted(REPO.glob(DEFAULT_COMPLEXITY_CONFIGS))
                rows = count_rows(configs, args.save_counts)
            figure = complexity_figure(rows)
        out = save(figure, args.out)
    except (ConfigError, DataError, RunFault, ValueError, OSError) as err:
        parser.exit(1, f"error: {err}\n")
    print(f"{out}: {figure.width} x {figure.height}, {out.stat().st_size / 1e3:.0f} kB, "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
