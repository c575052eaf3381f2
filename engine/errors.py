"""Errors of a run that the command line reports as one line, without a traceback."""

from __future__ import annotations


class RunFault(RuntimeError):
    """A fault during a run, reported to the user as one line (no traceback)."""


class NonFiniteLoss(RunFault):
    """The training loss became NaN or infinite."""


class EmptyLoss(RunFault):
    """No pixel entered the training loss during a whole epoch (every label ignored, every depth below the
    minimum): the run would train on nothing."""


class CheckpointWriteError(RunFault):
    """A checkpoint could not be written; the previous file at that path is intact."""
