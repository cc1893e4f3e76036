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


def time_call(
    fn: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 5
) -> dict[str, float]:
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


def time_steps(
    step: Callable[[], object],
    device: torch.device,
    warmup: int,
    steps: int,
    budget_s: float | None = None,
    min_steps: int = 2,
) -> list[float]:
    """Wall time in seconds of each timed call of ``step()``, after ``warmup`` untimed calls.

    Up to ``steps`` timed calls; with ``budget_s``, stops early once the timed calls add up to
    ``budget_s`` seconds and at least ``min_steps`` were made (bounds the cost of slow rows).
    """

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    times: list[float] = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        if budget_s is not None and len(times) >= min_steps and sum(times) >= budget_s:
            break
    return times


def cpu_model() -> str | None:
    """The CPU's ``model name`` from /proc/cpuinfo (Linux), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or None


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bf16 instruction sets (``avx512_bf16``, ``amx_bf16``) from /proc/cpuinfo; [] if none
    or unknown. Without them bf16 autocast on a CPU is emulated and usually slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return []


def load_average() -> float | None:
    """The 1-minute load average (``os.getloadavg()[0]``), None where the platform has none."""
    import os

    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def environment(device: torch.device) -> dict[str, object]:
    """What a reader needs to judge the numbers: versions, threads, CPU model, cores, GPU."""
    import os

    env: dict[str, object] = {
        "torch_version": str(torch.__version__),
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16_flags": cpu_bf16_flags(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def write_section(
    path: str, name: str, section: dict[str, object], device: torch.device, load_start: float | None
) -> None:
    """Write one benchmark's ``section`` to ``path`` (atomically) with the environment, the load
    average at start and now, and the run metadata; used by the scripts run on their own."""
    from pssr.utils import atomic_write_json, run_metadata

    atomic_write_json(
        path,
        {
            "benchmark": name,
            name: section,
            "environment": {
                **environment(device),
                "load_average_1min_start": load_start,
                "load_average_1min_end": load_average(),
            },
            "metadata": run_metadata(),
        },
    )
    print(f"wrote {path}")
