"""Timing and memory helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float | None:
    """Peak resident memory of this process since the last reset, in MiB (Linux VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """Yields a dict filled with ``peak_mib`` after the block (CUDA allocator peak, or CPU peak RSS)."""
    out: dict[str, float | None] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()
    yield out
    if device.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["kind"] = "cuda_allocated"  # type: ignore[assignment]
    else:
        out["peak_mib"] = peak_rss_mib()
        out["kind"] = "process_peak_rss"  # type: ignore[assignment]


def time_call(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 5) -> dict[str, float]:
    """Median and min wall time of ``fn()`` in seconds after ``warmup`` calls."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}
