"""Command line shared by the four scripts: arguments, device selection, one-line errors.

``python train_segmentation.py CONFIG [--gpus 0,1] [--resume CKPT] [--weights CKPT] [KEY VALUE ...]``
``python test_segmentation.py CONFIG CKPT [--gpus 0] [--predict IMAGE_OR_FOLDER [--out DIR]] [KEY VALUE ...]``
(likewise for depth).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from configs.loading import ConfigError, first_line
from datasets.io import DataError
from engine.errors import RunFault
from engine.host_allocator import keep_freed_host_memory
from engine.interrupt import Interrupted, sigterm_raises

DEBUG_ENV = "BIDENSE_DEBUG"


@dataclass(frozen=True)
class Devices:
    """Where the processes of one node run: Lightning's ``accelerator`` and ``devices``."""

    accelerator: str
    devices: list[int] | int
    notice: str = ""

    @property
    def count(self) -> int:
        """Processes per node."""
        return len(self.devices) if isinstance(self.devices, list) else self.devices


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit with status 1, like every other error (README)."""

    def error(self, message: str) -> None:
        self.exit(1, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(description: str, test: bool) -> argparse.ArgumentParser:
    """The argument parser of a train (``test=False``) or test (``test=True``) script."""
    parser = _Parser(description=description)
    parser.add_argument("config", help="YAML config, e.g. configs/segmentation/upernet_bidense_demo.yaml")
    if test:
        parser.add_argument("checkpoint", help="Lightning checkpoint (.ckpt) written by the matching train script")
        parser.add_argument("--predict", default=None, metavar="IMAGE_OR_FOLDER",
                            help="instead of evaluating, predict on an image or on every image of a folder")
        parser.add_argument("--out", default=None, metavar="DIR",
                            help="where --predict writes (default: <checkpoint stem>_predictions/ beside the "
                                 "checkpoint)")
    parser.add_argument(
        "--gpus", default=None, help="comma-separated GPU indices, e.g. 0 or 0,1 (default: every visible GPU, or CPU)"
    )
    parser.add_argument(
        "--cpu-processes", type=int, default=None, metavar="N",
        help="run N processes on the CPU (DDP over gloo when N > 1); for tests and machines without a GPU",
    )
    if not test:
        parser.add_argument("--resume", default=None, metavar="CKPT", help="continue the full training state")
        parser.add_argument("--weights", default=None, metavar="CKPT", help="initialise the model weights only")
        parser.add_argument("--allow-config-change", action="store_true",
                            help="--resume even where the config differs from the checkpoint's (keys are listed)")
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {DEBUG_ENV}=1)")
    parser.add_argument("overrides", nargs="*", metavar="KEY VALUE", help="pairs overriding the YAML")
    return parser


def parse_gpus(text: str | None, cpu_processes: int | None = None) -> Devices:
    """Devices from ``--gpus`` / ``--cpu-processes``.

    ``None`` selects every visible GPU, or one CPU process (with a notice) when CUDA sees none.
    Raises ConfigError for a malformed list ("0,,1", "a"), a repeated or missing index, or CUDA asked for where
    there is none.
    """
    if cpu_processes is not None:
        if text is not None:
            raise ConfigError("--gpus and --cpu-processes exclude each other")
        if cpu_processes < 1:
            raise ConfigError(f"--cpu-processes {cpu_processes}: expected a positive integer")
        return Devices("cpu", cpu_processes)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if text is None:
        if visible == 0:
            return Devices("cpu", 1, notice="no CUDA GPU visible: running on the CPU (one process)")
        return Devices("gpu", list(range(visible)))
    parts = text.split(",")
    if not all(re.fullmatch(r"\s*[0-9]+\s*", part) for part in parts):
        raise ConfigError(f"--gpus {text!r}: expected comma-separated GPU indices such as 0 or 0,1")
    indices = [int(part) for part in parts]
    if len(set(indices)) != len(indices):
        raise ConfigError(f"--gpus {text!r}: a GPU index is repeated")
    if visible == 0:
        raise ConfigError(f"--gpus {text}: no CUDA GPU is visible on this machine; omit --gpus to run on the CPU")
    missing = [i for i in indices if i >= visible]
    if missing:
        raise ConfigError(f"--gpus {text}: GPU {missing[0]} does not exist ({visible} visible: 0..{visible - 1})")
    return Devices("gpu", indices)


def run_cli(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and run ``main``; any error becomes one line on stderr and exit status 1.

    Configuration and data errors print their message; anything else also names its exception type. A run
    stopped by SIGTERM or SIGINT prints what was kept and how to continue, and exits with 143 / 130
    (`engine.interrupt`).

    ``--debug`` or ``BIDENSE_DEBUG=1`` re-raises instead, showing the traceback. Freed host memory is kept for
    reuse (`engine.host_allocator`).
    """
    args = parser.parse_intermixed_args(argv)
    keep_freed_host_memory()
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        with sigterm_raises():
            main(args)
    except Interrupted as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted by SIGINT", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if debug:
            raise
        user_error = isinstance(err, ConfigError | DataError | RunFault)
        hint = "" if user_error else f" ({type(err).__name__}; --debug shows the traceback)"
        print(f"{parser.prog}: error: {first_line(err)}{hint}", file=sys.stderr)
        sys.exit(1)
