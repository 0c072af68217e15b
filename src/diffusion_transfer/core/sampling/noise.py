"""A fixed bank of initial noises, so that models are compared on the same x_T.

Source and target models sampled from the same bank give pairs that share
their initial noise (the DDIB alignment the SDFT paper measures with LPIPS
src-trg and attribute retention).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

# torch's CPU generator (mt19937) only uses the low 32 bits of its seed.
_MAX_SEED = 2**32 - 1


def make_noise_bank(n: int, shape: Sequence[int] = (3, 32, 32), seed: int = 0) -> torch.Tensor:
    """``n`` standard normal noises of ``shape``, float32 on the CPU, shape (n, *shape).

    The noises are drawn one at a time, in order, from a CPU
    ``torch.Generator`` seeded with ``seed`` (never the global RNG), so the
    bank is the same on every call and platform, and it is prefix-stable:
    ``make_noise_bank(10)[:5]`` equals ``make_noise_bank(5)``, so sample ``i``
    always starts from the same noise whatever the sample count.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {_MAX_SEED}], got {seed!r}")
    bank = torch.empty((n, *shape), dtype=torch.float32)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for i in range(n):
        bank[i] = torch.randn(shape, generator=gen, dtype=torch.float32)
    return bank


def iter_batches(bank: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive slices ``bank[i : i + batch_size]`` (the last may be shorter)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    for start in range(0, bank.shape[0], batch_size):
        yield bank[start : start + batch_size]
