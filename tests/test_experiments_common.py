"""Shared pieces of the demo-data experiments: presets and the recurring training subset."""

from __future__ import annotations

import json

import pytest

from experiments.common import experiment_arch, write_subset


def test_subset_keeps_the_first_records_in_order(tmp_path):
    source = tmp_path / "pretrain.json"
    records = [{"image": f"images/train/{i}.jpg", "caption": [f"caption {i}"]} for i in range(10)]
    source.write_text(json.dumps(records))
    target = write_subset(source, tmp_path / "run" / "first4.json", 4)
    assert json.loads(target.read_text()) == records[:4]
    with pytest.raises(ValueError, match="train_subset=11 is larger than .*pretrain.json \\(10 records\\)"):
        write_subset(source, tmp_path / "x.json", 11)


def test_presets(tmp_path, monkeypatch):
    arch, text_init = experiment_arch("tiny", 64, private_heads=True)
    assert text_init is None and arch.private_heads and arch.vision.img_size == 64
    with pytest.raises(ValueError, match="multiple"):
        experiment_arch("small", 64)
    monkeypatch.chdir(tmp_path)  # no converted DINOv2 weights here
    with pytest.raises(FileNotFoundError, match="convert_dinov2_onnx"):
        experiment_arch("small", 56)
    with pytest.raises(ValueError, match="unknown preset"):
        experiment_arch("base", 56)


def test_small_preset_is_read_from_its_config(tmp_path, monkeypatch):
    import yaml

    from albef_struct.models import ALBEFConfig
    from experiments.common import SMALL_PRESET

    preset = yaml.safe_load(SMALL_PRESET.read_text())["init_args"]
    preset_arch = yaml.safe_load((SMALL_PRESET.parent / preset["arch"]).read_text())  # the file it names
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / preset_arch["vision"]["pretrained_file"]
    weights.parent.mkdir(parents=True)
    weights.touch()  # only its presence is checked here
    arch, text_init = experiment_arch("small", 56, private_heads=True)
    assert text_init == preset["text_init"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert (arch.vision.img_size, arch.text.max_position, arch.private_heads) == (56, 64, True)
    expected = ALBEFConfig.from_dict(preset_arch)
    assert (arch.vision.width, arch.vision.depth, arch.text.layers, arch.text.fusion_layer, arch.text_pooling) == (
        expected.vision.width, expected.vision.depth, expected.text.layers, expected.text.fusion_layer, "mean")
