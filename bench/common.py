"""Helpers shared by the benchmark scripts: interleaved timing and machine description."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def interleaved_median(
    candidates: dict[str, Callable[[], None]], rounds: int = 15, reps: int = 10, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each candidate, timed round-robin so machine drift hits all alike."""
    samples = interleaved_samples(candidates, rounds, reps, warmup)
    return {name: statistics.median(values) for name, values in samples.items()}


def paired_ratio(samples: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of the two candidates' time ratio within the round: each pair ran back to back, so
    a slow spell of the machine cancels out of its ratio instead of landing on one candidate's median."""
    return statistics.median(a / b for a, b in zip(samples[numerator], samples[denominator]))


def interleaved_samples(
    candidates: dict[str, Callable[[], None]], rounds: int = 15, reps: int = 10, warmup: int = 3
) -> dict[str, list[float]]:
    """Seconds per call of each candidate in every round, timed round-robin."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    order = list(candidates.items())
    for round_index in range(rounds):
        # Alternate the order every round, so neither candidate always runs first (caches, clocks).
        for name, fn in order if round_index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[name].append((time.perf_counter() - start) / reps)
    return samples
