"""The precision ``make demo`` trains in on this CPU.

Where the CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles), bf16 autocast with eager
attention: on the 2-core AVX512-BF16 machine the quick pretraining ran 1.6x faster than in fp32
(93 steps in 1:55 instead of 3:03) with the same zero-shot retrieval (ITC R@1 48.7 / 39.8 vs
48.0 / 39.3), and under bf16 eager attention beat PyTorch's fused CPU kernel (1.42 vs 1.73 s
per small pretraining step, ``python -m benchmarks.run --against-plain``). Elsewhere bf16 would
be emulated, so the demo stays in fp32 with the configs' attention.

    python -m albef_struct.lit.cpu_precision   # prints the CLI options, or nothing
"""

from __future__ import annotations

import torch

__all__ = ["has_native_bf16", "quick_demo_options"]

BF16_OPTIONS = ("--trainer.precision", "bf16-mixed", "--model.init_args.arch.attention", "eager")


def has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX); False where torch cannot tell."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe is not None and bool(probe()) for probe in probes)


def quick_demo_options(native_bf16: bool | None = None) -> list[str]:
    """CLI options for every training and test call of ``make demo`` (empty: the configs' fp32)."""
    if native_bf16 is None:
        native_bf16 = has_native_bf16()
    return list(BF16_OPTIONS) if native_bf16 else []


def main() -> int:
    print(" ".join(quick_demo_options()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
