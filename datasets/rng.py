"""Random draws for the augmentations, taken from torch's generator.

Inside a DataLoader worker torch's default generator is seeded per worker from the loader's base seed, which
itself comes from the main process's generator; so `lightning.seed_everything(seed, workers=True)` (or a plain
`torch.manual_seed`) makes every augmentation reproducible, with no duplicated streams across workers. Tests
pass their own `torch.Generator`.
"""

from __future__ import annotations

import torch


def uniform(low: float, high: float, generator: torch.Generator | None = None) -> float:
    """One draw from U(low, high)."""
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def randint(low: int, high: int, generator: torch.Generator | None = None) -> int:
    """One integer uniform in [low, high], both ends included (as Python's `random.randint`)."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def coin(p: float = 0.5, generator: torch.Generator | None = None) -> bool:
    """True with probability ``p``."""
    return torch.rand((), generator=generator, dtype=torch.float64).item() < p
