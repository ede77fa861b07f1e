"""The benchmark's own checks: interleaved variants start from equal weights and report equal losses."""

from __future__ import annotations

import pytest

from benchmarks.worker import run_ab_row


@pytest.mark.slow
def test_interleaved_variants_report_the_loss_they_must_agree_on():
    row = run_ab_row({"size": "tiny", "variants": ["plain", "fast", "fast_bf16"], "rounds": 1, "warmup": 0})
    results = row["results"]
    plain, fast, bf16 = (results[name]["reference_loss"] for name in ("plain", "fast", "fast_bf16"))
    assert plain > 1.0  # ITC + ITM + MLM of an untrained model: several nats, not a placeholder
    # fp32 fast paths are the same math (eager vs SDPA, one vs three ITM calls, masked-only MLM)
    assert results["fast"]["loss_rel_diff_vs_reference"] < 1e-5
    assert fast == pytest.approx(plain, rel=1e-5)
    # bf16 autocast: within the tolerance tests/test_fast_paths.py states, but not bit-equal
    assert 0 < results["fast_bf16"]["loss_rel_diff_vs_reference"] < 0.03
    assert bf16 != plain
    assert results["plain"]["loss_rel_diff_vs_reference"] == 0.0


@pytest.mark.slow
def test_gpu_benchmark_runs_on_a_cpu_at_the_tiny_size(tmp_path):
    import json

    from benchmarks import gpu

    payload = gpu.run(tmp_path, "cpu", size="tiny", batch=4, steps=1, warmup=1, rerank_images=6, k_test=3)
    written = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert written["batch"] == 4 and written["precision"] == "bf16" and written["size"] == "tiny"
    assert written["pretrain_samples_per_s"] == pytest.approx(4 / written["median_step_s"])
    assert written["flops_per_step"] > 1e8  # forward + backward of student, teacher and ITM/MLM passes
    assert written["mfu"] == pytest.approx(written["achieved_tflops"] / written["matmul_peak_tflops_bf16"])
    assert written["rerank_texts"] == 30 and written["rerank_row"]["pairs"] == (6 + 30) * 3
    assert payload["peak_memory_mb"] > 0 and written["memory_kind"] == "peak RSS"
