"""engine.host_allocator: freed host memory stays in the process (measured as resident memory in a fresh process),
the user's own allocator choice is left alone, and the scripts apply the policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cli
from engine.host_allocator import HOST_ALLOCATOR_ENV, user_chose_allocator

REPO = Path(__file__).resolve().parents[2]
GLIBC = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None

# In a fresh process: apply the policy, then the resident MiB gained by allocating (and touching) 256 MiB and
# what is still resident after freeing it.
PROBE = """
import json, os
from engine.host_allocator import keep_freed_host_memory
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
applied = keep_freed_host_memory()
before = resident()
block = bytearray(256 << 20)
held = resident() - before
del block
print(json.dumps({"applied": applied, "held": held, "kept": resident() - before}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != HOST_ALLOCATOR_ENV}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**clean, **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not (GLIBC and GLIBC.startswith("glibc") and Path("/proc/self/statm").exists()),
                    reason="needs glibc and /proc")
def test_freed_memory_is_kept_only_under_the_policy():
    tuned = _probe()
    assert tuned["applied"] is True
    assert tuned["held"] > 200 and tuned["kept"] > 200  # freed, still resident: reused by the next allocation
    opted_out = _probe(**{HOST_ALLOCATOR_ENV: "default"})
    assert opted_out["applied"] is False
    assert opted_out["held"] > 200 and opted_out["kept"] < 50  # glibc's default: unmapped when freed
    user_set = _probe(MALLOC_TRIM_THRESHOLD_="131072")
    assert user_set["applied"] is False and user_set["kept"] < 50


@pytest.mark.parametrize("env, chosen", [
    ({}, None),
    ({HOST_ALLOCATOR_ENV: "default"}, HOST_ALLOCATOR_ENV),
    ({HOST_ALLOCATOR_ENV: "reuse"}, None),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "MALLOC_MMAP_THRESHOLD_"),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
    ({"MALLOC_TOP_PAD_": "0"}, "MALLOC_TOP_PAD_"),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, "GLIBC_TUNABLES"),
    ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, None),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD"),
    ({"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"}, "LD_PRELOAD"),
    ({"LD_PRELOAD": "/opt/libfoo.so"}, None),
])
def test_the_users_allocator_choice_is_respected(env, chosen):
    assert user_chose_allocator(env) == chosen


def test_the_scripts_apply_the_policy_before_running(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_host_memory", lambda: calls.append("allocator"))
    parser = cli.build_parser("probe", test=False)
    cli.run_cli(lambda args: calls.append("main"), parser, ["config.yaml"])
    assert calls == ["allocator", "main"]
