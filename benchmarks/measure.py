"""Measurements: step timing, peak memory, FLOPs per step, peak GEMM rate, op profile."""

from __future__ import annotations

import ctypes
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode knows the CUDA SDPA kernels; CPU's fused kernel needs the same formula.
CPU_SDPA_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """Matmul/conv/attention FLOPs of one call of ``fn`` (forward and backward, 2 per MAC)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        fn()
    return int(counter.get_total_flops())


def time_steps(fn: Callable[[], Any], steps: int, sync: Callable[[], None] = lambda: None) -> list[float]:
    """Wall-clock seconds of ``steps`` calls of ``fn``."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (MiB); never decreases."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024


def current_rss_mb() -> float:
    """This process's resident set now (MiB), from /proc (the high-water mark where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return peak_rss_mb()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_reader() -> Callable[[], int] | None:
    """Bytes of the C heap in use now (glibc's ``mallinfo2``: allocated chunks plus mmapped
    blocks), or None where the C library has no ``mallinfo2`` (macOS, musl, glibc < 2.33)."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def in_use() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


def peak_heap_mb(fn: Callable[[], Any], calls: int = 2, interval_s: float = 2e-4) -> float | None:
    """Highest C-heap use (MiB) seen while ``fn`` runs ``calls`` times, sampled every ``interval_s``.

    What the process's allocations hold, without the shared libraries' pages and the freed memory
    the allocator keeps that the resident set also counts: on a CPU, the counterpart of a GPU's
    ``max_memory_allocated``. A sample can miss a peak shorter than the interval, so the value
    is a lower bound; the sampling thread slows ``fn``, so time it separately. None without glibc.
    """
    in_use = _heap_reader()
    if in_use is None:
        return None
    peak = in_use()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, in_use())
            time.sleep(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for _ in range(calls):
            fn()
    finally:
        done.set()
        sampler.join()
    return max(peak, in_use()) / 2**20


def gemm_peak(n: int = 2048, dtype: torch.dtype = torch.float32, reps: int = 5, device: str = "cpu") -> dict[str, float]:
    """Best and median FLOP/s of ``n``³ matmuls (the roofline the MFU column divides by)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b  # warm-up
    sync()
    times = time_steps(lambda: a @ b, reps, sync)
    flops = 2.0 * n**3
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "best_flops": flops / min(times), "median_flops": flops / median(times)}


def top_ops(fn: Callable[[], Any], limit: int = 15) -> list[dict[str, Any]]:
    """The ops of one call of ``fn`` with the most self CPU time (``torch.profiler``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "self_cpu_ms": e.self_cpu_time_total / 1000.0,
            "self_cpu_pct": 100.0 * e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:limit]
    ]
