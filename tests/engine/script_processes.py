"""The command-line scripts run as separate processes, each forked from one warm server process.

Starting ``python train_segmentation.py`` costs about 8 s of interpreter start-up and imports (torch, Lightning and
what Lightning pulls in) before the script does anything; the end-to-end tests start it about twenty times. Here a
`multiprocessing` fork server imports torch, Lightning and the scripts' modules once, and every run is a fresh
process forked from it that executes the script file as ``__main__`` with its own argv, environment, working
directory, stdout and stderr files: its own exit status, its own signal handling (SIGTERM, SIGINT and SIGKILL reach
it alone), its own memory. What a forked run does not redo is the interpreter's start: warnings are ignored in
every run (as ``PYTHONWARNINGS=ignore``), ``OMP_NUM_THREADS`` in its environment sets torch's thread count, and
``atexit`` handlers do not run. Tests that check what a fresh interpreter prints use `subprocess` instead.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRELOAD = ["torch", "lightning", "train_segmentation", "train_depth", "test_segmentation", "test_depth"]

WARM_START_METHOD = "forkserver"  # multiprocessing's start method whose server preloads PRELOAD
_CONTEXT = multiprocessing.get_context(WARM_START_METHOD)
_CONTEXT.set_forkserver_preload(PRELOAD)


def _child(script: str, args: Sequence[str], environ: dict[str, str], stdout: str, stderr: str,
           prepare: Callable[[], None] | None) -> None:
    """Inside the forked process: become ``python script *args`` started from the repository root."""
    os.chdir(REPO)
    os.environ.clear()
    os.environ.update(environ)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    warnings.simplefilter("ignore")
    if "OMP_NUM_THREADS" in environ:
        import torch

        torch.set_num_threads(int(environ["OMP_NUM_THREADS"]))
    if prepare is not None:
        prepare()
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


@dataclass
class Finished:
    """A run that ended: its exit status (``-N`` when signal N killed it), its stdout and its stderr."""

    returncode: int
    stdout: str
    stderr: str


class ScriptProcess:
    """``python script *args`` forked from the warm server; stdout and stderr go to files in ``folder``."""

    def __init__(self, script: str, args: Sequence[str], environ: dict[str, str], folder: Path,
                 prepare: Callable[[], None] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{Path(script).stem}-{time.monotonic_ns()}"
        self.stdout_path, self.stderr_path = folder / f"{name}.out", folder / f"{name}.err"
        self.process = _CONTEXT.Process(target=_child, args=(script, list(args), environ, str(self.stdout_path),
                                                              str(self.stderr_path), prepare))
        self.process.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def wait_for_output(self, text: str, count: int, timeout: float = 300.0) -> int:
        """Poll stdout until ``text`` occurs ``count`` times or the run ends; returns the occurrences seen."""
        deadline = time.monotonic() + timeout
        seen = self.stdout().count(text)
        while seen < count and self.process.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
            seen = self.stdout().count(text)
        return seen

    def wait(self, timeout: float = 600.0) -> Finished:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
            raise TimeoutError(f"{self.stdout_path.stem} did not end within {timeout} s")
        return Finished(self.process.exitcode, self.stdout(), self.stderr())

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def script_env(**overrides: str) -> dict[str, str]:
    """This process's environment without an inherited run folder, with ``overrides``."""
    environ = {**os.environ, **overrides}
    environ.pop("BIDENSE_RUN_DIR", None)
    return environ


def run_script(script: str, *args: str, folder: Path, prepare: Callable[[], None] | None = None,
               timeout: float = 600.0, **env_overrides: str) -> Finished:
    """Run ``python script *args`` to its end (forked from the warm server)."""
    process = ScriptProcess(script, args, script_env(**env_overrides), folder, prepare)
    try:
        return process.wait(timeout)
    finally:
        process.kill()
