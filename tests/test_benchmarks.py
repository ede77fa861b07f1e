"""The benchmark's own checks: interleaved variants start from equal weights and report equal losses."""

from __future__ import annotations

import pytest
import torch

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


def _step(variant: str, seconds: float, rss: float, matmul_pct: float | None = None, heap: float | None = None) -> dict:
    row = {"workload": "pretrain", "size": "small", "variant": variant, "median_step_s": seconds, "peak_rss_mb": rss}
    if heap is not None:
        row["peak_heap_mb"] = heap
    if matmul_pct is not None:  # split over two matrix ops, plus an op that is not one
        row["profile_top_ops"] = [{"op": "aten::mm", "self_cpu_pct": matmul_pct / 2},
                                  {"op": "aten::addmm", "self_cpu_pct": matmul_pct / 2},
                                  {"op": "aten::bernoulli_", "self_cpu_pct": 7.0}]
    return row


def test_each_variant_is_compared_with_the_plain_path_of_its_own_precision():
    from benchmarks.against_plain import compare_to_plain

    rows = [_step("plain", 3.0, 2000, heap=1000), _step("fast", 2.0, 1500, matmul_pct=60.0, heap=900),
            _step("plain_bf16", 2.0, 1800, heap=1000), _step("fast_bf16", 1.6, 1800, matmul_pct=50.0, heap=700),
            _step("fast_ckpt", 2.5, 1200)]
    found = {e["variant"]: e for e in compare_to_plain(rows)}
    assert found["fast"]["reference"] == "plain" and found["fast_bf16"]["reference"] == "plain_bf16"
    assert found["fast"]["speedup"] == pytest.approx(1.5) and found["fast"]["memory_ratio"] == pytest.approx(0.75)
    assert found["fast"]["meets_target"]  # 1.5x at 0.75x the memory
    assert found["fast"]["heap_ratio"] == pytest.approx(0.9) and not found["fast"]["meets_target_by_heap"]
    assert found["fast"]["matmul_s"] == pytest.approx(1.2)  # 60 % of 2.0 s
    assert found["fast"]["other_s_allowed_at_target"] == pytest.approx(3.0 / 1.5 - 1.2)
    bf16 = found["fast_bf16"]
    assert bf16["speedup"] == pytest.approx(1.25) and bf16["memory_ratio"] == pytest.approx(1.0)
    assert not bf16["meets_target"]
    assert bf16["heap_ratio"] == pytest.approx(0.7) and not bf16["meets_target_by_heap"]  # 1.25x
    assert "heap_ratio" not in found["fast_ckpt"]  # no heap reading: no ratio, rather than a made-up one
    assert bf16["other_s"] == pytest.approx(0.8) and bf16["other_s_allowed_at_target"] == pytest.approx(2.0 / 1.5 - 0.8)
    assert not found["fast_ckpt"]["meets_target"] and "matmul_share" not in found["fast_ckpt"]  # 1.2x, no profile
    assert found["plain"]["speedup"] == 1.0
    assert compare_to_plain([_step("fast_bf16", 1.0, 1000)]) == []  # no reference timed: no row


def test_peak_heap_sees_what_a_call_holds_and_nothing_once_it_is_freed():
    import time

    from benchmarks import measure

    assert measure._heap_reader() is not None  # glibc >= 2.33, as on every Linux machine this runs on

    def hold(mib: int) -> None:
        block = torch.ones(mib * 2**18)  # mib MiB of float32, written so every page is real
        time.sleep(0.05)  # long enough for the sampler to see it
        del block

    idle = measure.peak_heap_mb(lambda: time.sleep(0.05), calls=1)
    holding = measure.peak_heap_mb(lambda: hold(64), calls=2)
    assert 63 < holding - idle < 80
    assert measure.peak_heap_mb(lambda: time.sleep(0.05), calls=1) < idle + 16  # the freed block no longer counts


def test_a_step_row_reads_its_heap_peak_after_the_timing():
    from benchmarks.worker import run_step_row

    spec = {"workload": "pretrain", "size": "tiny", "variant": "fast", "batch": 4, "warmup": 0, "steps": 1, "flops": False}
    row = run_step_row({**spec, "heap_steps": 1})
    assert 0 < row["peak_heap_mb"] < row["peak_rss_mb"]  # without the libraries' pages and kept free memory
    assert "peak_heap_mb" not in run_step_row(spec)  # only where asked: the sampler slows the steps


def test_peak_heap_is_none_without_glibc(monkeypatch):
    from benchmarks import measure

    monkeypatch.setattr(measure, "_heap_reader", lambda: None)
    calls = []
    assert measure.peak_heap_mb(lambda: calls.append(1), calls=2) is None and calls == []


def test_the_against_plain_plan_times_each_variant_and_its_reference_profiled():
    from benchmarks.against_plain import reference_variant
    from benchmarks.plan import against_plain_plan
    from benchmarks.workloads import VARIANTS

    rows = against_plain_plan()
    names = [r["variant"] for r in rows]
    assert set(names) <= set(VARIANTS) and all(r["profile"] and r["workload"] == "pretrain" for r in rows)
    assert all(reference_variant(n) in names for n in names)
    assert all(r["heap_steps"] > 0 for r in rows)  # every row reads its heap peak too
    assert not VARIANTS["plain_bf16"].itc_fp32_logits and VARIANTS["fast_bf16"].itc_fp32_logits
    assert VARIANTS["fast_bf16_ckpt"].checkpointing and VARIANTS["fast_bf16_ckpt"].precision == "bf16"


def test_a_chosen_variant_brings_its_own_reference_and_unknown_names_are_refused(capsys):
    from benchmarks.plan import against_plain_plan
    from benchmarks.run import parse_args

    chosen = against_plain_plan(variants=["fast_fused_adamw", "fast_bf16_eager_fused"])
    assert [r["variant"] for r in chosen] == ["plain", "fast_fused_adamw", "plain_bf16", "fast_bf16_eager_fused"]
    assert parse_args(["--against-plain", "--variants", "fast"]).variants == ["fast"]
    for argv, said in ((["--against-plain", "--variants", "fastest"], "unknown variant(s) ['fastest']"),
                       (["--variants", "fast"], "add --against-plain")):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert said in capsys.readouterr().err


def test_bf16_rows_are_skipped_with_the_reason_on_a_cpu_without_bf16_instructions():
    from benchmarks.plan import against_plain_plan
    from benchmarks.run import EMULATED_BF16, skip_reason

    rows = {r["variant"]: r for r in against_plain_plan(variants=["fast", "fast_bf16"])}
    assert skip_reason(rows["plain_bf16"], native_bf16=False) == EMULATED_BF16
    assert skip_reason(rows["fast_bf16"], native_bf16=True) is None
    assert skip_reason(rows["fast"], native_bf16=False) is None
    interleaved = {"kind": "ab", "size": "small", "variants": ["fast", "fast_bf16"]}
    assert skip_reason(interleaved, native_bf16=False) == EMULATED_BF16


@pytest.mark.slow
def test_sharding_benchmark_halves_what_each_of_two_ranks_holds(tmp_path):
    """DDP then FSDP on 2 CPU processes at the tiny size: FSDP's rank holds half the parameters, gradients and
    Adam state (its shards), the queues whole; the table and JSON carry every rank."""
    import json

    from benchmarks import sharding

    assert sharding.main(["--size", "tiny", "--steps", "2", "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "sharding.json").read_text())
    ddp, fsdp = written["results"]["ddp"], written["results"]["fsdp"]
    assert [r["rank"] for r in ddp] == [r["rank"] for r in fsdp] == [0, 1]
    for key in ("parameters_mib", "gradients_mib", "optimizer_mib"):
        assert ddp[0][key] > 10 and ddp[0][key] == ddp[1][key]
        for rank in fsdp:  # every weight but the 0-d temperature is sharded; uneven splits round by a row
            assert rank[key] == pytest.approx(ddp[0][key] / 2, rel=0.01)
    assert all(r["buffers_mib"] == ddp[0]["buffers_mib"] > 1 for r in fsdp)  # queues are not sharded
    assert all(r["peak_rss_mib"] > 0 and r["step_s_median"] > 0 for r in ddp + fsdp)
