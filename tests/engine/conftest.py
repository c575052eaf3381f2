"""Fixtures of the engine tests: a script's ``main()`` run in this process (no interpreter start-up)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Ran:
    """What a script's main() did: its exit status, its stdout, the non-empty lines of its stderr."""

    code: int
    out: str
    err: list[str]


@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """``run_main(script, *args)``: ``script``'s main() from the repository root with ``sys.argv = [script.py,
    *args]``, as the shell would start it."""

    def call(script: str, *args: str) -> Ran:
        monkeypatch.chdir(REPO)
        monkeypatch.delenv("BIDENSE_RUN_DIR", raising=False)
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *args])
        capsys.readouterr()
        try:
            importlib.import_module(script).main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
        out, err = capsys.readouterr()
        return Ran(code, out, [line for line in err.splitlines() if line.strip()])

    return call
