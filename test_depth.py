"""Evaluate a depth checkpoint: delta1..3, AbsRel, SqRel, RMSE, RMSE log, log10, SILog over the evaluation set.

    python test_depth.py CONFIG CKPT [--gpus 0] [KEY VALUE ...]

Prints the metric table and writes it as JSON beside the checkpoint (``<ckpt stem>.test.json``). A checkpoint
trained for another model, method or maximum depth than CONFIG is refused, naming both.
"""

from __future__ import annotations

from engine.cli import build_parser, run_cli
from engine.run import evaluate
from train_depth import DepthModule


def main() -> None:
    """Command-line entry point."""
    parser = build_parser(__doc__.splitlines()[0], test=True)
    run_cli(lambda args: evaluate(args, "depth", DepthModule), parser)


if __name__ == "__main__":
    main()
