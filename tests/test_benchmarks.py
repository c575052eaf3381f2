"""The benchmark scripts run as a user starts them (small sizes, in this process): their tables, their bound
lines, the CPU dry run of the GPU equivalence check, and the GPU check's one-line refusal without a GPU."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _within_rounding(ratio: float, numerator: float, denominator: float, step: float) -> bool:
    """Whether a printed ``ratio`` (2 decimals) fits the printed times (rounded to ``step``)."""
    low = (numerator - step / 2) / (denominator + step / 2)
    high = (numerator + step / 2) / (denominator - step / 2)
    return low - 0.005 <= ratio <= high + 0.005


@pytest.fixture
def run_benchmark(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                  ) -> Iterator[Callable[..., tuple[int, str]]]:
    """``run_benchmark(module, *args)``: ``python -m benchmarks.<module> *args`` in this process, with this
    process's thread count and glibc's default allocator; returns (exit status, stdout)."""
    threads = torch.get_num_threads()

    def call(module: str, *args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", [module, *args])
        capsys.readouterr()
        try:
            importlib.import_module(f"benchmarks.{module}").main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        return code, capsys.readouterr().out

    yield call
    torch.set_num_threads(threads)


def test_layer_benchmark_row_ratio_and_bound_line(run_benchmark):
    from benchmarks.bench_layers import TARGET

    code, out = run_benchmark("bench_layers", "--only", "psp stage", "--reps", "1", "--default-allocator",
                              "--threads", str(torch.get_num_threads()))
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith("psp stage 1x1 (bin 6)"))
    bidense_ms, float_ms, ratio = (float(v) for v in row.split("|")[1].split()[:3])
    assert _within_rounding(ratio, bidense_ms, float_ms, 0.1)
    assert f"median {ratio:.2f}, worst {ratio:.2f}" in out
    bound = [line for line in out.splitlines() if line.startswith("  psp stage 1x1 (bin 6): the DAB passes alone")]
    assert len(bound) == (ratio > TARGET)
    if bound:
        dab, weights, least = (float(v) for v in re.search(
            r"take [\d.]+ ms = ([\d.]+) and the weights' sign, scale and clipping [\d.]+ ms = ([\d.]+) of the float "
            r"unit's [\d.]+ ms, so the ratio is at least ([\d.]+)", bound[0]).groups())
        assert least == pytest.approx(1 + dab + weights, abs=0.011)
        assert "144 positions per weight" in bound[0]  # batch 4 x 6 x 6


def test_train_step_benchmark_in_eval_mode_reports_the_cache(run_benchmark):
    code, out = run_benchmark("bench_train_step", "--mode", "eval", "--models", "upernet", "--size", "64",
                              "--batch", "1", "--steps", "1", "--warmup", "1", "--default-allocator",
                              "--threads", str(torch.get_num_threads()))
    assert code == 0, out
    assert "memory column: eval-cache MB" in out
    row = next(line for line in out.splitlines() if line.startswith("upernet"))
    numbers = [float(v.rstrip("x")) for v in row.replace("|", " ").split()[1:]]
    binary_s, float_s, ratio, _, _, binary_mb, float_mb = numbers
    assert _within_rounding(ratio, binary_s, float_s, 0.001)
    assert binary_mb > 100 and float_mb == 0.0  # UPerNet-BiDense's binary weights (about 152 MB); none in fp32_0


def test_gpu_equivalence_dry_run_on_the_cpu(run_benchmark):
    code, out = run_benchmark("gpu_equivalence", "--device", "cpu")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[-1] == "gpu_equivalence: all checks passed"
    checks = [re.match(r"(ok  |FAIL) (.{28}) (float32|bf16) +worst ", line) for line in lines[:-1]]
    assert all(checks) and all(check[1] == "ok  " for check in checks)
    modes: dict[str, set[str]] = {}
    for check in checks:
        modes.setdefault(check[2].strip(), set()).add(check[3])
    assert len(modes) >= 10 and all(found == {"float32", "bf16"} for found in modes.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs the whole check")
def test_gpu_check_without_a_gpu_says_so_in_one_line():
    log_folder = REPO / "runs" / "gpu_check"
    existed = log_folder.exists()
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert done.stdout.strip().splitlines() == [
        "gpu_check: no CUDA GPU is visible on this machine (torch.cuda.is_available() is False); nothing was run"]
    assert log_folder.exists() == existed  # it stops before writing anything
