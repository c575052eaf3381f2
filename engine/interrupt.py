"""SIGTERM and SIGINT: a stopped run says so, keeps its last checkpoint and exits with 143 / 130 (README, Reliability).

A scheduler stops a job with SIGTERM (SLURM on preemption or at its time limit), a user with Ctrl-C (SIGINT).
Inside a Lightning ``fit`` / ``test``, Lightning's own SIGTERM handler only records the signal and stops the loop
at the next batch boundary by raising ``SIGTERMException`` (a ``SystemExit`` without a code, which would exit with
status 0); SIGINT raises ``KeyboardInterrupt``, which Lightning turns into ``sys.exit(1)``. `lightning_signals`
turns both into `Interrupted` carrying the message and status 128 + signal number. A checkpoint write is never
cut short by SIGTERM (Lightning checks the flag between batches), and a write cut short by SIGINT leaves the
previous file whole (`engine.checkpoints.atomic_save`). Outside Lightning (configuration, data preparation) the
handler of `sigterm_raises` raises `Interrupted` at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from lightning.pytorch.utilities.exceptions import SIGTERMException


class Interrupted(BaseException):
    """The run was stopped by a signal; the message says what was kept and how to continue.

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception`` on its way swallows it.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 143 for SIGTERM, 130 for SIGINT (the shell's convention)."""
        return 128 + self.signum


_deferred = threading.Event()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if not _deferred.is_set():
        raise Interrupted(signum, "interrupted by SIGTERM before training or evaluation started; nothing to resume, "
                                  "run the command again")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside, SIGTERM raises `Interrupted` outside Lightning's loops (main thread only; an ignored SIGTERM stays
    ignored); the previous handler is restored on leaving. SIGINT keeps Python's ``KeyboardInterrupt``."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def signal_name(signum: int) -> str:
    """"SIGTERM", "SIGINT", ..."""
    return signal.Signals(signum).name


@contextmanager
def lightning_signals(describe: Callable[[int], str]) -> Iterator[None]:
    """Run a Lightning ``fit`` / ``test`` inside: SIGTERM and SIGINT leave it as `Interrupted(signum,
    describe(signum))`; any other exit passes unchanged."""
    _deferred.set()
    try:
        yield
    except SIGTERMException as err:
        raise Interrupted(signal.SIGTERM, describe(signal.SIGTERM)) from err
    except SystemExit as err:
        if isinstance(err.__context__, KeyboardInterrupt):
            raise Interrupted(signal.SIGINT, describe(signal.SIGINT)) from err
        raise
    except KeyboardInterrupt as err:
        raise Interrupted(signal.SIGINT, describe(signal.SIGINT)) from err
    finally:
        _deferred.clear()
