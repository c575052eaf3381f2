"""Evaluate a depth checkpoint: delta1..3, AbsRel, SqRel, RMSE, RMSE log, log10, SILog over the evaluation set.

    python test_depth.py CONFIG CKPT [--gpus 0] [KEY VALUE ...]
    python test_depth.py CONFIG CKPT --predict IMAGE_OR_FOLDER [--out DIR] [--gpus 0]

Prints the metric table and writes it as JSON beside the checkpoint (``<ckpt stem>.test.json``). With
``--predict`` it runs the model on an image, or on every image of a folder, instead and writes per image a 16-bit
depth PNG in the data set's scale (metres x 1000 NYUv2 and demo, x 256 KITTI) and a colour PNG (`engine.predict`;
default folder ``<ckpt stem>_predictions/`` beside the checkpoint). A checkpoint trained for another model,
method or maximum depth than CONFIG is refused, naming both.
"""

from __future__ import annotations

from engine.cli import build_parser, run_cli
from engine.predict import predict
from engine.run import evaluate
from train_depth import DepthModule


def main() -> None:
    """Command-line entry point."""
    parser = build_parser(__doc__.splitlines()[0], test=True)
    run_cli(lambda args: (predict if args.predict else evaluate)(args, "depth", DepthModule), parser)


if __name__ == "__main__":
    main()
