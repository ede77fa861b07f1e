"""make demo's precision choice: bf16 autocast and eager attention only where the CPU has bf16 instructions."""

from __future__ import annotations

import torch

from albef_struct.lit import cpu_precision
from albef_struct.models import ALBEFConfig


def test_the_options_follow_the_cpu_and_parse_as_cli_overrides(monkeypatch):
    assert cpu_precision.quick_demo_options(native_bf16=False) == []
    options = cpu_precision.quick_demo_options(native_bf16=True)
    assert options == ["--trainer.precision", "bf16-mixed", "--model.init_args.arch.attention", "eager"]
    assert ALBEFConfig(attention=options[3]).attention == "eager"  # a value the architecture accepts
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_precision.has_native_bf16() and cpu_precision.quick_demo_options() == options
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not cpu_precision.has_native_bf16() and cpu_precision.quick_demo_options() == []
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the probe: fp32
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert not cpu_precision.has_native_bf16()
