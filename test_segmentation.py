"""Evaluate a segmentation checkpoint: pixAcc, mIoU (and the metric's other scalars) over the evaluation set.

    python test_segmentation.py CONFIG CKPT [--gpus 0] [KEY VALUE ...]
    python test_segmentation.py CONFIG CKPT --predict IMAGE_OR_FOLDER [--out DIR] [--gpus 0]

Prints the metric table and writes it as JSON beside the checkpoint (``<ckpt stem>.test.json``). With
``--predict`` it runs the model on an image, or on every image of a folder, instead and writes per image the
class-id PNG, its colour PNG and an image | colours | overlay PNG (`engine.predict`; default folder
``<ckpt stem>_predictions/`` beside the checkpoint). A checkpoint trained for another model, method or class
count than CONFIG is refused, naming both.
"""

from __future__ import annotations

from engine.cli import build_parser, run_cli
from engine.predict import predict
from engine.run import evaluate
from train_segmentation import SegmentationModule


def main() -> None:
    """Command-line entry point."""
    parser = build_parser(__doc__.splitlines()[0], test=True)
    run_cli(lambda args: (predict if args.predict else evaluate)(args, "segmentation", SegmentationModule), parser)


if __name__ == "__main__":
    main()
